"""`evoarena submit EXP.yaml`: run an experiment's master on Kubernetes, as a Job of a Helm release.

The experiment file goes into a ConfigMap; the Job runs `evoarena run /experiment/<file> --fleet`
with the release's environment. It finds that environment by the chart's naming convention
(helm/evoarena/templates/_helpers.tpl), not by reading the release's values:

    ConfigMap <release>-evoarena-config     non-secret settings (and EVOARENA_IMAGE, the master's: the
                                            workers' code in the CPU build)
    Secret    <release>-evoarena-env        broker and store URLs of the in-chart services
    Secret    <release>-evoarena-external   yours, optional: external URLs, static AWS keys
    ServiceAccount <release>-evoarena       S3 through IRSA; no Kubernetes API rights

Both the Job and its ConfigMap are named `evoarena-<experiment name>`. The scheduler keeps no
state of its own, so `--resume` replaces a finished Job with a new one that continues from the
store. `--dry-run` prints the objects and contacts no cluster.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from evoarena.settings import Settings
from evoarena.spec.experiment import SpecError, dns_label_problem, load_spec

MANAGED_BY = "evoarena-submit"
# The chart's rule (helm/evoarena/templates/_helpers.tpl, evoarena.fullname): its longest name,
# the StatefulSet <release>-evoarena-rabbitmq, must stay within 52 characters.
RELEASE_MAX_LENGTH = 34
MOUNT = "/experiment"
# The master computes nothing on a GPU: on a GPU node whose runtime hands every GPU to a container
# that asks for none, it sees none, and torch stays on the CPU. The chart gives CPU workers the
# same (helm/evoarena/templates/_helpers.tpl, evoarena.cpuOnlyEnv).
CPU_ONLY_ENV = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, {"name": "EVOARENA_DEVICE", "value": "cpu"}]
UID = 10001  # the image's user (Dockerfile)
# A finished Job (and its pod's logs) is deleted a week later; the run stays in the store, and the
# same experiment can be submitted again (--resume is needed only while the Job is there).
TTL_AFTER_FINISHED_S = 7 * 24 * 3600
# Node autoscalers must not move a running master to save a node: it would start over from the
# last complete step. Karpenter's annotation, and Cluster Autoscaler's.
MASTER_POD_ANNOTATIONS = {"karpenter.sh/do-not-disrupt": "true",
                          "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `submit` and its arguments to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "submit", help="run an experiment's master as a Kubernetes Job of a Helm release",
        description="Validate EXPERIMENT, store it in a ConfigMap and start a Job running "
                    "`evoarena run --fleet` with the release's configuration.")
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--namespace", "-n", help="namespace of the release (default: the kube context's, "
                                                  "or 'default'; 'default' with --dry-run)")
    parser.add_argument("--release", default="arena", help="Helm release name (default: arena)")
    parser.add_argument("--image", help="image of the master (default: the release's CPU image, "
                                        "from $EVOARENA_IMAGE or the release's ConfigMap)")
    parser.add_argument("--resume", action="store_true",
                        help="replace a finished Job of this experiment; the run continues from the store")
    parser.add_argument("--dry-run", action="store_true", help="print the objects as YAML; contact no cluster")
    return parser


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Validate, build and (unless --dry-run) create the experiment's ConfigMap and Job."""
    try:
        spec = load_spec(args.experiment)
        names = Names(spec.name, args.release, args.namespace or ("default" if args.dry_run else None))
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = Path(args.experiment).read_text(encoding="utf-8")
    filename = Path(args.experiment).name
    if not _CONFIGMAP_KEY.match(filename):
        filename = f"{spec.name}.yaml"
    image = args.image or _env_image()

    if args.dry_run:
        objects = build_objects(names, text, filename, image or default_image())
        sys.stdout.write(dump_yaml(objects))
        return 0
    return _submit(names, text, filename, image, args.resume)


class Names:
    """The names a submission uses, each checked as a DNS-1123 label before anything is created."""

    def __init__(self, experiment: str, release: str, namespace: str | None):
        self.experiment = experiment  # already a checked label: the spec validates it
        self.release = _label("release", release, RELEASE_MAX_LENGTH)
        self.namespace = None if namespace is None else _label("namespace", namespace, 63)
        self.job = _label("job name", f"evoarena-{experiment}", 63)
        prefix = f"{release}-evoarena"
        self.config = f"{prefix}-config"
        self.secrets = [f"{prefix}-env", f"{prefix}-external"]
        self.service_account = prefix


def _label(what: str, value: str, limit: int) -> str:
    problem = dns_label_problem(value, limit)
    if problem is not None:
        raise ValueError(f"{what} {value!r} {problem}")
    return value


def default_image() -> str:
    """The chart's default master image: the CPU build `evoarena:<appVersion>-cpu`, where the
    appVersion is this package's version (helm/evoarena/templates/_helpers.tpl, evoarena.cpuImage)."""
    try:
        return f"evoarena:{version('evoarena')}-cpu"
    except PackageNotFoundError:
        return "evoarena:latest-cpu"


def _env_image() -> str | None:
    return Settings.from_env().image or None


def build_objects(names: Names, text: str, filename: str, image: str) -> list[dict]:
    """The ConfigMap holding the experiment file and the Job that runs its master.

    The chart's admission policy (helm/evoarena/templates/admission.yaml) admits from whoever may
    not read the release's Secrets this Job and nothing else: a field added here needs its rule
    there (tests/test_admission.py checks the two agree)."""
    labels = {
        "app.kubernetes.io/name": "evoarena",
        "app.kubernetes.io/instance": names.release,
        "app.kubernetes.io/component": "master",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "evoarena/experiment": names.experiment,
    }
    metadata = {"name": names.job, "namespace": names.namespace, "labels": labels}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {filename: text}}
    container = {
        "name": "master",
        "image": image,
        "args": ["run", f"{MOUNT}/{filename}", "--fleet"],
        "envFrom": [{"configMapRef": {"name": names.config}}]
                   + [{"secretRef": {"name": name, "optional": True}} for name in names.secrets],
        "env": CPU_ONLY_ENV,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "experiment", "mountPath": MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "home", "mountPath": "/home/evoarena"},
            {"name": "noise", "mountPath": "/var/cache/evoarena/noise"},
        ],
    }
    pod = {
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "experiment", "configMap": {"name": names.job}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "home", "emptyDir": {}},
            {"name": "noise", "emptyDir": {}},
        ],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # A crashed master is retried and continues from the store; bad input (exit 2) is not
            # retried, and neither is counted a node going away.
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "master", "operator": "In", "values": [2]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": labels, "annotations": MASTER_POD_ANNOTATIONS}, "spec": pod},
        },
    }
    return [config_map, job]


def dump_yaml(objects: list[dict]) -> str:
    """Multi-document YAML; the experiment file stays readable as a literal block."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # the Job repeats its labels; no &id001 for a reader
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


# --- talking to the cluster ------------------------------------------------------------------


def _submit(names: Names, text: str, filename: str, image: str | None, resume: bool) -> int:
    from kubernetes import client, config

    try:
        names.namespace = names.namespace or _load_config(config)
    except (config.ConfigException, ValueError) as exc:
        print(f"error: {_config_problem(exc)}", file=sys.stderr)
        return 2
    return apply(client.CoreV1Api(), client.BatchV1Api(), names, text, filename, image, resume)


def apply(core, batch, names: Names, text: str, filename: str, image: str | None, resume: bool) -> int:
    """Create the ConfigMap and the Job through the CoreV1Api and BatchV1Api given."""
    from kubernetes.client.exceptions import ApiException

    ns = names.namespace
    try:
        release = _get(lambda: core.read_namespaced_config_map(names.config, ns))
        if release is None:
            print(f"error: no release {names.release!r} in namespace {ns!r} (ConfigMap {names.config} not found); "
                  f"install it with `helm install {names.release} helm/evoarena -n {ns} --set "
                  "image.repository=REGISTRY/evoarena,s3.bucket=BUCKET` (docs/DEPLOY.md)", file=sys.stderr)
            return 2
        image = image or (release.data or {}).get("EVOARENA_IMAGE") or default_image()
        config_map, job = build_objects(names, text, filename, image)

        existing = _get(lambda: batch.read_namespaced_job(names.job, ns))
        if existing is not None:
            if not resume:
                print(f"error: job/{names.job} already exists in {ns}; follow it with "
                      f"`{follow_command(names.job, ns)}`, or pass --resume once it has finished",
                      file=sys.stderr)
                return 2
            if not _finished(existing):
                print(f"error: job/{names.job} is still running in {ns}; --resume replaces a finished Job only",
                      file=sys.stderr)
                return 2
            batch.delete_namespaced_job(names.job, ns, propagation_policy="Background")
            _wait_gone(lambda: batch.read_namespaced_job(names.job, ns))

        stored = _get(lambda: core.read_namespaced_config_map(names.job, ns))
        if stored is None:
            core.create_namespaced_config_map(ns, config_map)
        elif (stored.metadata.labels or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY:
            core.replace_namespaced_config_map(names.job, ns, config_map)
        else:
            print(f"error: configmap/{names.job} exists in {ns} and was not made by evoarena submit", file=sys.stderr)
            return 2
        batch.create_namespaced_job(ns, job)
    except ApiException as exc:
        print(f"error: Kubernetes API: {exc.status} {exc.reason}: {_api_message(exc)}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"{names.experiment}: job/{names.job} created in {ns} (image {image}); follow it with:")
    print(follow_command(names.job, ns))
    return 0


def follow_command(job: str, namespace: str) -> str:
    """The shell line that follows a Job's logs from its first line, also while its pod is still
    being scheduled or its image pulled (`kubectl logs` fails then, and is tried again), and also
    once the Job has finished. (`kubectl wait -l job-name=...` fails at once while the pod does
    not exist yet, and waits in vain for Ready once the pod has finished.)"""
    return f"until kubectl logs -f job/{job} -n {namespace}; do sleep 10; done"


def _load_config(config) -> str:
    """Load the in-cluster or kubeconfig credentials; return the namespace they default to."""
    in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        config.load_incluster_config()
        return _label("namespace", in_cluster.read_text().strip(), 63)
    except config.ConfigException:
        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
        return _label("namespace", context["context"].get("namespace", "default"), 63)


def _config_problem(exc: Exception, environ=os.environ) -> str:
    """The kube config error in words a person can act on: where the client looked, and how to
    point it elsewhere (the client itself says only "Invalid kube-config file. No configuration found.")."""
    if isinstance(exc, ValueError):  # a namespace that is not a valid name: _label's message says it all
        return str(exc)
    given = environ.get("KUBECONFIG")
    looked = (f"the kube config files KUBECONFIG names ({given})" if given
              else f"{Path('~/.kube/config').expanduser()} (KUBECONFIG is not set)")
    return (f"no usable Kubernetes credentials: looked in {looked}, and for a pod's service account "
            f"(/var/run/secrets/kubernetes.io/serviceaccount: not in a pod). Point to a kube config with "
            f"KUBECONFIG=/path/to/config (for EKS, `aws eks update-kubeconfig --name CLUSTER` writes one; "
            f"docs/DEPLOY.md) and check it with `kubectl config current-context`. The client said: {exc}")


def _get(read):
    """The object `read` returns, or None when the API answers 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _finished(job) -> bool:
    conditions = (job.status and job.status.conditions) or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


def _wait_gone(read, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _get(read) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the old Job is still being deleted; try again in a minute")
        time.sleep(1)


def _api_message(exc) -> str:
    try:
        import json

        return json.loads(exc.body).get("message", exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)
