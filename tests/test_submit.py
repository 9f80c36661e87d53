"""`evoarena submit`: what it refuses, the objects it builds, and what it does to a cluster.

The cluster is a fake CoreV1Api/BatchV1Api pair that answers like the real one (404, 409), so
these tests need no cluster; `--dry-run` output is validated against the Kubernetes schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from evoarena.cli import submit
from helpers import TINY_PATH, dry_run, run_submit

ROOT = Path(__file__).resolve().parent.parent
CHART_APP_VERSION = yaml.safe_load((ROOT / "helm" / "evoarena" / "Chart.yaml").read_text())["appVersion"]


@pytest.fixture(autouse=True)
def no_image_from_the_environment(monkeypatch):
    monkeypatch.delenv("EVOARENA_IMAGE", raising=False)


# --- refusals: nothing printed, nothing built ---------------------------------------------------

BAD_FILES = {
    "negative sigma": ("name: bad\nga:\n  generations: 5\n  mutation: {sigma: -1}\n",
                       "ga.mutation.sigma = -1: must be greater than 0"),
    "name not a DNS label": ("name: Bad_Name\nga: {generations: 5}\n",
                             "name = 'Bad_Name': must be a DNS-1123 label"),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "cluster"])
def test_a_bad_experiment_file_exits_2_with_the_same_line_as_run(tmp_path, capsys, monkeypatch, text, message, mode):
    monkeypatch.setattr(submit, "_submit", lambda *a: pytest.fail("contacted the cluster"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)

    assert run_submit(str(bad), *mode) == 2

    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: {bad}: {message}")


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert run_submit(str(tmp_path / "nope.yaml"), "--dry-run") == 2
    assert capsys.readouterr() == ("", f"error: {tmp_path / 'nope.yaml'}: file not found\n")


BAD_NAMES = {
    "release with capitals": (["--release", "Arena"], "release 'Arena' must be a DNS-1123 label"),
    "release with underscore": (["--release", "my_arena"], "release 'my_arena' must be a DNS-1123 label"),
    "release too long": (["--release", "a" * 35], f"release '{'a' * 35}' is 35 characters; at most 34 are accepted"),
    "namespace ending in a dash": (["--namespace", "evo-"], "namespace 'evo-' must be a DNS-1123 label"),
    "namespace too long": (["--namespace", "n" * 64], "is 64 characters; at most 63 are accepted"),
}


@pytest.mark.parametrize(("args", "message"), BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_bad_name_is_refused_before_anything_is_created(capsys, monkeypatch, args, message):
    monkeypatch.setattr(submit, "_submit", lambda *a: pytest.fail("contacted the cluster"))

    assert run_submit(str(TINY_PATH), *args) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_a_long_experiment_name_still_makes_a_valid_job_name(tmp_path, capsys):
    longest = tmp_path / "long.yaml"
    longest.write_text(TINY_PATH.read_text().replace("name: tiny", f"name: {'x' * 53}"))

    config_map, job = dry_run(capsys, str(longest))

    assert job["metadata"]["name"] == f"evoarena-{'x' * 53}" and len(job["metadata"]["name"]) <= 63


# --- what --dry-run prints --------------------------------------------------------------------


def test_dry_run_prints_the_experiment_in_a_configmap_and_a_job_that_runs_it_on_the_fleet(capsys):
    config_map, job = dry_run(capsys, str(TINY_PATH), "--namespace", "evoarena", "--release", "lab")

    assert (config_map["kind"], job["kind"]) == ("ConfigMap", "Job")
    assert config_map["metadata"]["name"] == job["metadata"]["name"] == "evoarena-tiny"
    assert config_map["metadata"]["namespace"] == job["metadata"]["namespace"] == "evoarena"
    assert config_map["data"] == {"tiny.yaml": TINY_PATH.read_text()}  # the file as written, comments and all

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # the image's entrypoint: evoarena
    assert container["args"] == ["run", "/experiment/tiny.yaml", "--fleet"]
    assert {"name": "experiment", "mountPath": "/experiment", "readOnly": True} in container["volumeMounts"]
    assert {"name": "experiment", "configMap": {"name": "evoarena-tiny"}} in pod["volumes"]
    assert pod["restartPolicy"] == "Never"


def test_an_arena_experiment_is_submitted_unchanged_like_a_ga(capsys):
    ring = TINY_PATH.parent / "arena-ring.yaml"
    config_map, job = dry_run(capsys, str(ring))

    assert config_map["data"] == {"arena-ring.yaml": ring.read_text()}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run", "/experiment/arena-ring.yaml", "--fleet"]


def test_the_master_gets_the_releases_environment_and_identity(capsys):
    _, job = dry_run(capsys, str(TINY_PATH), "--release", "lab")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["envFrom"] == [
        {"configMapRef": {"name": "lab-evoarena-config"}},
        {"secretRef": {"name": "lab-evoarena-env", "optional": True}},
        {"secretRef": {"name": "lab-evoarena-external", "optional": True}},
    ]
    # nothing secret or per-cluster is written into the Job itself: only that it computes on the CPU
    assert {e["name"] for e in container["env"]} == {"NVIDIA_VISIBLE_DEVICES", "EVOARENA_DEVICE"}
    assert pod["serviceAccountName"] == "lab-evoarena"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_master_asks_for_no_gpu_and_sees_none_on_a_gpu_node(capsys):
    _, job = dry_run(capsys, str(TINY_PATH))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert not [k for k in container["resources"].get("limits", {}) if "gpu" in k]
    assert not [k for k in container["resources"].get("requests", {}) if "gpu" in k]
    assert "tolerations" not in pod  # so it does not land on the GPU nodes' taint
    # the NVIDIA runtime then mounts no GPU, and torch stays on the CPU
    assert container["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
                                {"name": "EVOARENA_DEVICE", "value": "cpu"}]


def test_bad_input_fails_the_job_at_once_and_a_crash_is_retried(capsys):
    _, job = dry_run(capsys, str(TINY_PATH))
    rules = job["spec"]["podFailurePolicy"]["rules"]

    assert job["spec"]["backoffLimit"] >= 1  # a new master continues from the store
    assert {"action": "FailJob", "onExitCodes": {"containerName": "master", "operator": "In", "values": [2]}} in rules


def test_dry_run_objects_match_the_kubernetes_schema(capsys):
    for obj in dry_run(capsys, str(TINY_PATH), "--namespace", "evoarena"):
        for version in ("1.30", "1.33"):  # the chart's oldest (Chart.yaml kubeVersion) and a current one
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(("env", "args", "image"), [
    ({}, [], f"evoarena:{CHART_APP_VERSION}-cpu"),  # read from Chart.yaml, not from submit
    ({"EVOARENA_IMAGE": "registry.example/evoarena:abc"}, [], "registry.example/evoarena:abc"),
    ({"EVOARENA_IMAGE": "registry.example/evoarena:abc"}, ["--image", "mine:1"], "mine:1"),
], ids=["chart default", "environment", "option"])
def test_the_image_is_the_option_else_the_environment_else_the_charts_default(capsys, monkeypatch, env, args, image):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _, job = dry_run(capsys, str(TINY_PATH), *args)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_dry_run_never_loads_the_kubernetes_client():
    code = ("import sys; from evoarena.cli import submit; from evoarena.settings import Settings; import argparse;"
            "p = argparse.ArgumentParser(); submit.add_parser(p.add_subparsers());"
            f"rc = submit.cmd_submit(p.parse_args(['submit', {str(TINY_PATH)!r}, '--dry-run']), Settings());"
            "assert rc == 0 and 'kubernetes' not in sys.modules, sorted(m for m in sys.modules if 'kube' in m)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- against a cluster --------------------------------------------------------------------------


class FakeCluster:
    """The few CoreV1Api and BatchV1Api calls submit makes, over dicts of stored objects."""

    def __init__(self, release_image: str | None = "repo/evoarena:9"):
        self.config_maps: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.calls: list[str] = []
        if release_image:
            self.config_maps["arena-evoarena-config"] = {"metadata": {"labels": {}},
                                                         "data": {"EVOARENA_IMAGE": release_image}}

    def _read(self, store, name):
        if name not in store:
            raise ApiException(status=404, reason="Not Found")
        obj = store[name]
        return SimpleNamespace(data=obj.get("data"), metadata=SimpleNamespace(labels=obj["metadata"].get("labels")),
                               status=SimpleNamespace(conditions=obj.get("conditions")))

    # CoreV1Api
    def read_namespaced_config_map(self, name, namespace):
        return self._read(self.config_maps, name)

    def create_namespaced_config_map(self, namespace, body):
        self.calls.append(f"create configmap/{body['metadata']['name']}")
        self.config_maps[body["metadata"]["name"]] = body

    def replace_namespaced_config_map(self, name, namespace, body):
        self.calls.append(f"replace configmap/{name}")
        self.config_maps[name] = body

    # BatchV1Api
    def read_namespaced_job(self, name, namespace):
        return self._read(self.jobs, name)

    def create_namespaced_job(self, namespace, body):
        self.calls.append(f"create job/{body['metadata']['name']}")
        self.jobs[body["metadata"]["name"]] = body

    def delete_namespaced_job(self, name, namespace, propagation_policy):
        self.calls.append(f"delete job/{name}")
        del self.jobs[name]

    def finish(self, name: str, how: str = "Complete") -> None:
        self.jobs[name]["conditions"] = [SimpleNamespace(type=how, status="True")]


def apply(cluster: FakeCluster, resume: bool = False, release: str = "arena") -> int:
    names = submit.Names("tiny", release, "evoarena")
    return submit.apply(cluster, cluster, names, TINY_PATH.read_text(), "tiny.yaml", None, resume)


def test_submit_creates_the_configmap_then_the_job_and_prints_how_to_follow_it(capsys):
    cluster = FakeCluster()

    assert apply(cluster) == 0

    assert cluster.calls == ["create configmap/evoarena-tiny", "create job/evoarena-tiny"]
    job = cluster.jobs["evoarena-tiny"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "repo/evoarena:9"  # the workers' image
    assert capsys.readouterr().out.splitlines()[-1] == \
        "until kubectl logs -f job/evoarena-tiny -n evoarena; do sleep 10; done"


def test_the_printed_line_follows_the_logs_once_the_image_is_pulled(tmp_path):
    """The line submit prints, run by a real shell against a kubectl that answers as the real one
    does while the pod's image is pulled (exit 1, "is waiting to start"), then streams the logs."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "kubectl").write_text(f"""#!/bin/sh
echo "$*" >> {calls}
if [ "$(wc -l < {calls})" -lt 3 ]; then
  echo 'Error from server (BadRequest): container "master" in pod "evoarena-tiny-x2x9k" is waiting to start: ContainerCreating' >&2
  exit 1
fi
echo "tiny: 5 generations of 16 on the fleet"
""")
    (fake / "sleep").write_text("#!/bin/sh\nexit 0\n")  # the loop's pause, made instant
    for tool in fake.iterdir():
        tool.chmod(0o755)

    done = subprocess.run(["sh", "-c", submit.follow_command("evoarena-tiny", "evoarena")], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, timeout=60)

    assert done.returncode == 0
    assert done.stdout == "tiny: 5 generations of 16 on the fleet\n"
    assert calls.read_text().splitlines() == ["logs -f job/evoarena-tiny -n evoarena"] * 3
    assert done.stderr.count("is waiting to start: ContainerCreating") == 2


def test_the_master_is_not_moved_by_node_autoscalers_and_its_job_is_cleaned_up(capsys):
    _, job = dry_run(capsys, str(TINY_PATH))
    annotations = job["spec"]["template"]["metadata"]["annotations"]

    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert job["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600


def test_a_release_that_is_not_there_is_refused(capsys):
    cluster = FakeCluster(release_image=None)

    assert apply(cluster) == 2

    assert cluster.calls == []
    assert "no release 'arena' in namespace 'evoarena'" in capsys.readouterr().err


def test_a_job_name_in_use_is_refused_without_resume(capsys):
    cluster = FakeCluster()
    apply(cluster)
    cluster.calls.clear()

    assert apply(cluster) == 2

    assert cluster.calls == []
    assert "job/evoarena-tiny already exists in evoarena" in capsys.readouterr().err


def test_resume_refuses_to_replace_a_job_still_running(capsys):
    cluster = FakeCluster()
    apply(cluster)
    cluster.calls.clear()

    assert apply(cluster, resume=True) == 2

    assert cluster.calls == []
    assert "still running" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["Complete", "Failed"])
def test_resume_replaces_a_finished_job_and_its_experiment_file(how):
    cluster = FakeCluster()
    apply(cluster)
    cluster.finish("evoarena-tiny", how)
    cluster.calls.clear()

    assert apply(cluster, resume=True) == 0

    assert cluster.calls == ["delete job/evoarena-tiny", "replace configmap/evoarena-tiny", "create job/evoarena-tiny"]
    assert "conditions" not in cluster.jobs["evoarena-tiny"]


def test_a_configmap_of_that_name_not_made_by_submit_is_left_alone(capsys):
    cluster = FakeCluster()
    cluster.config_maps["evoarena-tiny"] = {"metadata": {"labels": {"team": "other"}}}

    assert apply(cluster) == 2

    assert cluster.calls == []
    assert "was not made by evoarena submit" in capsys.readouterr().err


# --- the real command line --------------------------------------------------------------------


def test_evoarena_submit_dry_run_from_the_command_line():
    env = {k: v for k, v in os.environ.items() if k != "EVOARENA_IMAGE"}
    done = subprocess.run([sys.executable, "-m", "evoarena", "submit", str(TINY_PATH), "--dry-run"],
                          capture_output=True, text=True, env=env)

    assert done.returncode == 0, done.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(done.stdout)]
    assert kinds == ["ConfigMap", "Job"]


@pytest.mark.parametrize("kubeconfig", [None, "missing/config"])
def test_submit_without_a_kube_config_says_where_it_looked_and_how_to_point_elsewhere(tmp_path, kubeconfig):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config here
    if kubeconfig:
        env["KUBECONFIG"] = str(tmp_path / kubeconfig)
    done = subprocess.run([sys.executable, "-m", "evoarena", "submit", str(TINY_PATH)], capture_output=True,
                          text=True, env=env, timeout=120)

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    looked = str(tmp_path / kubeconfig) if kubeconfig else f"{tmp_path}/.kube/config (KUBECONFIG is not set)"
    assert line.startswith("error: no usable Kubernetes credentials: looked in ") and looked in line
    assert "KUBECONFIG=/path/to/config" in line and "aws eks update-kubeconfig" in line


# --- the light install: submitting needs no torch (make submit, .venv-submit) -------------------

# Refuses the imports that only running, not submitting, needs: an import of one fails.
REFUSE_HEAVY = """
import importlib.abc, sys
HEAVY = {"torch", "numpy", "scipy", "sklearn", "matplotlib", "safetensors", "celery", "kombu", "boto3", "pymongo"}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in HEAVY:
            raise ImportError(f"{name} is not part of the submit install")
sys.meta_path.insert(0, Refuse())
"""


def test_the_import_refuser_refuses_torch():
    done = subprocess.run([sys.executable, "-c", REFUSE_HEAVY + "import torch"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ImportError: torch is not part of the submit install" in done.stderr


def test_submit_dry_run_imports_neither_torch_nor_the_fleets_libraries():
    run_cli = "from evoarena.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", REFUSE_HEAVY + run_cli, "submit", str(TINY_PATH), "--dry-run"],
                          capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert [doc["kind"] for doc in yaml.safe_load_all(done.stdout)] == ["ConfigMap", "Job"]


def test_the_submit_extra_pins_what_the_project_pins():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for requirement in project["optional-dependencies"]["submit"]:
        name = requirement.split(">")[0].split("<")[0].split("=")[0]
        assert [p for p in pins if p.startswith(f"{name}>") or p.startswith(f"{name}<")] == [requirement], name


@pytest.mark.slow
def test_make_submit_runs_from_a_light_virtualenv_without_torch(tmp_path):
    venv = tmp_path / "venv-submit"
    done = subprocess.run(["make", "-s", "submit", f"SUBMIT_VENV={venv}", f"EXP={TINY_PATH}", "ARGS=--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stdout + done.stderr
    assert [doc["kind"] for doc in yaml.safe_load_all(done.stdout)] == ["ConfigMap", "Job"]
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"evoarena", "kubernetes", "pydantic", "pyyaml"} <= installed
    assert not installed & {"torch", "numpy", "celery", "boto3", "pymongo", "matplotlib", "scipy"}
