"""The chart's admission policies (helm/evoarena/templates/admission.yaml), evaluated as the API
server evaluates them, without a cluster.

The Role <release>-evoarena-submitter reads no Secret, but a Job it creates runs with the
release's Secrets in its environment. The policies let a subject that may not read Secrets run
only the master program `evoarena submit` renders, and write only the ConfigMaps submit makes.

The CEL is evaluated with cel-python against what the API server hands a ValidatingAdmissionPolicy:
`object` (the Job after defaulting), `oldObject`, `request` (the AdmissionRequest: operation,
namespace, userInfo), `variables` (the policy's, in order) and `authorizer` (Kubernetes' own
library, which cel-python lacks: `Authorizer` below answers from a set of grants and records what
it was asked). The policies use no other Kubernetes-only CEL: no optional types (`map[?key]`), no
`lists`/`sets`/`quantity`/`url` libraries; `matches`, `startsWith`, `all`, `exists`, `has` and
`in` are standard CEL.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import celpy
import pytest
from celpy import celtypes

from helpers import NAMESPACE, RELEASE, TINY_PATH, dry_run, one, template

FULL = f"{RELEASE}-evoarena"
SUBMITTER = f"system:serviceaccount:{NAMESPACE}:{FULL}-submitter"
ADMIN = "kubernetes-admin"
# what an operator who may read Secrets holds (and the submitter does not)
READS_SECRETS = {("", "secrets", NAMESPACE, "get")}


# --- the API server's side, in Python ----------------------------------------------------------


class Authorizer:
    """Kubernetes' CEL authorizer (`authorizer.group(g).resource(r).namespace(n).check(v).allowed()`)
    for one requester, answering from `grants`; `asked` records each check as (group, resource,
    namespace, verb)."""

    def __init__(self, grants: set[tuple[str, str, str, str]]):
        self.grants, self.asked = grants, []

    def functions(self) -> dict:
        def step(field: str):
            def call(receiver, argument):
                return celtypes.MapType({**receiver, celtypes.StringType(field): argument})
            return call

        def allowed(receiver) -> celtypes.BoolType:
            check = tuple(str(receiver.get(celtypes.StringType(k), "")) for k in ("group", "resource", "namespace", "verb"))
            self.asked.append(check)
            return celtypes.BoolType(check in self.grants)

        return {"group": step("group"), "resource": step("resource"), "namespace": step("namespace"),
                "check": step("verb"), "allowed": allowed}


def evaluate(expression: str, activation: dict, functions: dict):
    env = celpy.Environment()
    result = env.program(env.compile(expression), functions=functions).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def admit(policy: dict, obj: dict, *, user: str = SUBMITTER, grants: frozenset = frozenset(),
          operation: str = "CREATE", old: dict | None = None, authorizer: Authorizer | None = None) -> list[str]:
    """The messages of the policy's validations that deny this request; [] when it is admitted
    (also when its match conditions leave the request alone). An expression that cannot be
    evaluated denies, as failurePolicy Fail does."""
    assert policy["spec"]["failurePolicy"] == "Fail"
    authorizer = authorizer or Authorizer(set(grants))
    functions = authorizer.functions()
    request = {
        "uid": "0", "operation": operation, "namespace": NAMESPACE, "name": obj["metadata"]["name"],
        "kind": {"group": "", "version": "v1", "kind": obj["kind"]},
        "userInfo": {"username": user, "groups": ["system:authenticated"]},
        "dryRun": False,
    }
    activation = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                  "request": celpy.json_to_cel(request), "authorizer": celtypes.MapType({})}
    for condition in policy["spec"].get("matchConditions", []):
        if not evaluate(condition["expression"], activation, functions):
            return []
    variables = {}
    for variable in policy["spec"].get("variables", []):
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(variable["name"])] = evaluate(variable["expression"], activation, functions)
    activation["variables"] = celtypes.MapType(variables)
    denied = []
    for validation in policy["spec"]["validations"]:
        try:
            passed = evaluate(validation["expression"], activation, functions)
        except celpy.CELEvalError as error:
            denied.append(f"{validation['message']} (evaluation error: {error})")
            continue
        if not passed:
            denied.append(validation["message"])
    return denied


def rules(messages: list[str]) -> set[str]:
    """The rule names the denial messages start with ("image: ..." -> "image")."""
    return {m.split(":", 1)[0] for m in messages}


def as_admitted(job: dict) -> dict:
    """The Job as a validating admission policy receives it: after the API server's defaulting
    (k8s.io/kubernetes pkg/apis/batch/v1 and core/v1 defaults), the registry's PrepareForCreate
    and selector generation, and the ServiceAccount admission plugin (nothing to add here, since
    automountServiceAccountToken is false)."""
    job = copy.deepcopy(job)
    job["metadata"] |= {"uid": "5f6c1d1e-0000-4000-8000-000000000000", "generation": 1,
                        "creationTimestamp": "2026-12-03T20:00:00Z"}
    spec = job["spec"]
    spec |= {"completions": 1, "parallelism": 1, "completionMode": "NonIndexed", "suspend": False,
             "manualSelector": False, "podReplacementPolicy": "Failed",
             "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}}}
    spec["template"]["metadata"]["labels"] |= {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                                               "batch.kubernetes.io/job-name": job["metadata"]["name"],
                                               "controller-uid": job["metadata"]["uid"],
                                               "job-name": job["metadata"]["name"]}
    pod = spec["template"]["spec"]
    pod |= {"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
            "serviceAccount": pod["serviceAccountName"], "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0}
    for container in pod["containers"]:
        container |= {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                      "imagePullPolicy": "IfNotPresent"}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["defaultMode"] = 420
    return job


# --- the objects ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart(helm) -> list[dict]:
    return template(helm)


@pytest.fixture(scope="module")
def job_policy(chart) -> dict:
    return one(chart, "ValidatingAdmissionPolicy", f"{NAMESPACE}.{FULL}.jobs")


@pytest.fixture(scope="module")
def configmap_policy(chart) -> dict:
    return one(chart, "ValidatingAdmissionPolicy", f"{NAMESPACE}.{FULL}.configmaps")


@pytest.fixture
def submitted(capsys, chart) -> tuple[dict, dict]:
    """The ConfigMap and Job `evoarena submit --dry-run` prints for this release, with the image
    submit reads from the release's ConfigMap on a cluster."""
    image = one(chart, "ConfigMap", f"{FULL}-config")["data"]["EVOARENA_IMAGE"]
    return dry_run(capsys, str(TINY_PATH), "--release", RELEASE, "--namespace", NAMESPACE, "--image", image)


@pytest.fixture
def job(submitted) -> dict:
    return as_admitted(submitted[1])


def master(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


# --- Jobs -------------------------------------------------------------------------------------


def test_the_job_submit_renders_is_admitted_as_printed_and_as_the_api_server_defaults_it(job_policy, submitted):
    printed = submitted[1]
    assert admit(job_policy, printed) == []
    assert admit(job_policy, as_admitted(printed)) == []


def _secret_volume(job):
    pod(job)["volumes"].append({"name": "stolen", "secret": {"secretName": f"{FULL}-mongodb"}})
    master(job)["volumeMounts"].append({"name": "stolen", "mountPath": "/stolen"})


def _config_as_code(job):
    # the experiment ConfigMap holds what the submitter wrote: as sitecustomize.py it would run
    master(job)["volumeMounts"][0]["mountPath"] = "/usr/local/lib/python3.11/site-packages"


VARIANTS = {
    "another image": ("image", lambda j: master(j).update(image="busybox:1.36")),
    "a shell printing the environment": ("program", lambda j: master(j).update(command=["sh", "-c", "env"])),
    "the worker instead of run": ("program", lambda j: master(j).update(args=["worker"])),
    "run with an extra option": ("program", lambda j: master(j)["args"].append("--inline")),
    "an experiment file outside the ConfigMap": (
        "program", lambda j: master(j)["args"].__setitem__(1, "/experiment/../proc/self/environ")),
    "an exec liveness probe": (
        "hooks", lambda j: master(j).update(livenessProbe={"exec": {"command": ["sh", "-c", "env >&2"]}})),
    "a postStart hook": ("hooks", lambda j: master(j).update(lifecycle={"postStart": {"exec": {"command": ["env"]}}})),
    "an extra Secret volume": ("volumes", _secret_volume),
    "a hostPath volume": ("volumes", lambda j: pod(j)["volumes"].append(
        {"name": "host", "hostPath": {"path": "/var/lib/kubelet/pods", "type": ""}})),
    "envFrom another Secret": ("envfrom", lambda j: master(j)["envFrom"].append({"secretRef": {"name": "aws-keys"}})),
    "envFrom another ConfigMap": ("envfrom", lambda j: master(j)["envFrom"].append({"configMapRef": {"name": "mine"}})),
    "PYTHONPATH in the environment": ("env", lambda j: master(j)["env"].append({"name": "PYTHONPATH", "value": "/x"})),
    "a Secret key in the environment": ("env", lambda j: master(j)["env"].append(
        {"name": "EVOARENA_DEVICE", "valueFrom": {"secretKeyRef": {"name": f"{FULL}-mongodb", "key": "password"}}})),
    "another serviceAccount": ("serviceaccount", lambda j: pod(j).update(serviceAccountName="default",
                                                                          serviceAccount="default")),
    "an API token": ("serviceaccount", lambda j: pod(j).update(automountServiceAccountToken=True)),
    "an initContainer": ("containers", lambda j: pod(j).update(
        initContainers=[{"name": "peek", "image": master(j)["image"], "command": ["env"]}])),
    "a second container": ("containers", lambda j: pod(j)["containers"].append(
        {"name": "peek", "image": master(j)["image"], "args": ["run", "/experiment/tiny.yaml", "--fleet"]})),
    "the experiment ConfigMap on Python's path": ("mounts", _config_as_code),
    "a privileged container": ("host", lambda j: master(j)["securityContext"].update(privileged=True)),
    "the node's network": ("host", lambda j: pod(j).update(hostNetwork=True)),
    "a sidecar injector's annotation": ("annotations", lambda j: j["spec"]["template"]["metadata"].update(
        annotations={"vault.hashicorp.com/agent-inject": "true"})),
    "the broker's name pointed elsewhere": ("names", lambda j: pod(j).update(
        hostAliases=[{"ip": "203.0.113.7", "hostnames": [f"{FULL}-rabbitmq"]}])),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_job_other_than_submits_is_denied_by_the_rule_it_breaks(job_policy, job, variant):
    rule, change = VARIANTS[variant]
    change(job)

    assert rules(admit(job_policy, job)) == {rule}


def test_every_job_rule_has_a_variant_it_denies(job_policy):
    assert rules(v["message"] for v in job_policy["spec"]["validations"]) == {rule for rule, _ in VARIANTS.values()}


def test_a_requester_who_may_read_the_secrets_is_not_checked(job_policy, job):
    master(job).update(image="busybox:1.36", command=["sh", "-c", "env"])
    asked = Authorizer(READS_SECRETS)

    assert admit(job_policy, job, user=ADMIN, authorizer=asked) == []
    assert asked.asked == [("", "secrets", NAMESPACE, "get")]  # the API server's answer, not a name


def test_the_submitter_is_checked_whatever_name_or_group_it_comes_with(job_policy, job):
    master(job)["image"] = "busybox:1.36"

    for user in (SUBMITTER, "alice@example.com", "system:serviceaccount:kube-system:cronjob-controller"):
        assert rules(admit(job_policy, job, user=user)) == {"image"}


def test_an_update_is_checked_like_a_create(job_policy, job):
    changed = copy.deepcopy(job)
    master(changed)["image"] = "busybox:1.36"

    assert rules(admit(job_policy, changed, operation="UPDATE", old=job)) == {"image"}


# --- ConfigMaps -------------------------------------------------------------------------------


def test_the_submitter_may_create_and_replace_the_configmap_submit_makes(configmap_policy, submitted):
    config_map = submitted[0]

    assert admit(configmap_policy, config_map) == []
    assert admit(configmap_policy, config_map, operation="UPDATE", old=config_map) == []


def test_the_submitter_may_not_rewrite_the_releases_configmap(configmap_policy, chart):
    release = one(chart, "ConfigMap", f"{FULL}-config")  # labelled by Helm
    rewritten = copy.deepcopy(release)
    rewritten["data"]["PYTHONPATH"] = "/experiment"
    # even when it claims the label submit sets: the stored object decides
    rewritten["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "evoarena-submit"

    assert admit(configmap_policy, rewritten, operation="UPDATE", old=release) == [
        "configmap: only ConfigMaps that evoarena submit made may be replaced, not the release's own"]


def test_the_submitter_may_not_create_a_configmap_submit_would_not(configmap_policy, submitted):
    config_map = copy.deepcopy(submitted[0])
    del config_map["metadata"]["labels"]["app.kubernetes.io/managed-by"]

    assert rules(admit(configmap_policy, config_map)) == {"configmap"}


def test_kubernetes_controllers_and_secret_readers_keep_writing_configmaps(configmap_policy):
    root_ca = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"ca.crt": "..."},
               "metadata": {"name": "kube-root-ca.crt", "namespace": NAMESPACE}}

    assert admit(configmap_policy, root_ca, operation="UPDATE", old=root_ca,
                 user="system:serviceaccount:kube-system:root-ca-cert-publisher") == []
    assert admit(configmap_policy, root_ca, user=ADMIN, grants=frozenset(READS_SECRETS)) == []


# --- installing them --------------------------------------------------------------------------


def test_each_policy_is_bound_in_the_releases_namespace_only(chart):
    policies = {p["metadata"]["name"] for p in chart if p["kind"] == "ValidatingAdmissionPolicy"}
    bindings = [b for b in chart if b["kind"] == "ValidatingAdmissionPolicyBinding"]

    assert policies == {f"{NAMESPACE}.{FULL}.jobs", f"{NAMESPACE}.{FULL}.configmaps"}
    assert {b["spec"]["policyName"] for b in bindings} == policies
    for binding in bindings:
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["matchResources"] == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}


def test_the_policies_are_left_out_when_asked(helm):
    kinds = {o["kind"] for o in template(helm, "--set", "submitter.admissionPolicy=false")}

    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


# --- the premise: the master prints no secret -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "url", "said"), [
    # RabbitMQ refuses the password: the master's broker check (fleet/broker.py) says so in one line
    ("EVOARENA_BROKER_URL", "amqp://guest:Sekr1t-pw@127.0.0.1:5672//",
     "the broker at amqp://guest:***@127.0.0.1:5672// refuses the login"),
    # nothing answers: the store's retries, then its StoreUnavailable
    ("EVOARENA_STORE", "mongodb://evo:Sekr1t-pw@127.0.0.1:9/evo?serverSelectionTimeoutMS=100",
     "mongodb://evo:***@127.0.0.1:9/evo"),
], ids=["broker", "store"])
def test_the_master_fails_on_its_broker_and_store_without_printing_their_passwords(tmp_path, setting, url, said):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOARENA_", "KUBERNETES_"))}
    env |= {"EVOARENA_STORE": f"sqlite:///{tmp_path / 'runs.db'}", setting: url,
            "EVOARENA_LOG_LEVEL": "DEBUG"}  # the most the release's ConfigMap can ask for
    done = subprocess.run([sys.executable, "-c", "import sys; from evoarena.cli.main import main; sys.exit(main(sys.argv[1:]))",
                           "run", str(TINY_PATH), "--fleet"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr

    assert done.returncode != 0
    assert said in output
    assert "Sekr1t-pw" not in output
