"""scripts/k8s-dev-secrets.sh, which makes the release's Secrets where the chart does not (the
plain manifests, and the chart rendered without a cluster: generateSecrets=false, Argo CD). Run
for real against a kubectl that keeps Secrets in a JSON file and answers the few commands the
script uses as the real one does."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import template, tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "k8s-dev-secrets.sh"

FAKE_KUBECTL = r'''
import base64, json, os, sys, yaml
store_path = sys.argv[1]
args = sys.argv[2:]
store = json.load(open(store_path))
ns = args[args.index("-n") + 1]
del args[args.index("-n"):args.index("-n") + 2]
secrets = store.setdefault(ns, {})


def save():
    json.dump(store, open(store_path + ".new", "w"))
    os.replace(store_path + ".new", store_path)  # a reader in the same pipeline sees the old or the new


if args[:2] == ["get", "secret"]:
    name = args[2]
    if name not in secrets:
        print(f'Error from server (NotFound): secrets "{name}" not found', file=sys.stderr)
        sys.exit(1)
    if "-o" in args:
        key = args[args.index("-o") + 1].removeprefix("jsonpath={.data.").removesuffix("}")
        print(secrets[name].get(key, ""), end="")
elif args[:3] == ["create", "secret", "generic"]:
    name = args[3]
    pairs = [a.removeprefix("--from-literal=").split("=", 1) for a in args if a.startswith("--from-literal=")]
    data = {key: base64.b64encode(value.encode()).decode() for key, value in pairs}
    if "--dry-run=client" in args:
        print(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}))
    elif name in secrets:
        print(f'error: failed to create secret secrets "{name}" already exists', file=sys.stderr)
        sys.exit(1)
    else:
        secrets[name] = data
        save()
elif args[:2] == ["apply", "-f"]:
    obj = yaml.safe_load(sys.stdin)
    secrets[obj["metadata"]["name"]] = obj["data"]
    save()
else:
    sys.exit(f"fake kubectl: {args} not understood")
'''


def run_script(tmp_path: Path, release: str = "arena") -> dict[str, dict[str, str]]:
    """Run the script for `release` in namespace evoarena; the Secrets it left, decoded."""
    store = tmp_path / "secrets.json"
    if not store.exists():
        store.write_text("{}")
    fake = tmp_path / "fake_kubectl.py"
    fake.write_text(FAKE_KUBECTL)
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} {store} \"$@\"\n")
    kubectl.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), "evoarena", release], capture_output=True, text=True,
                          env={**os.environ, "KUBECTL": str(kubectl)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return {name: {k: base64.b64decode(v).decode() for k, v in data.items()}
            for name, data in json.loads(store.read_text())["evoarena"].items()}


def test_the_script_makes_the_three_secrets_the_chart_would(tmp_path):
    secrets = run_script(tmp_path)
    rabbit, mongo, env = (secrets[f"arena-evoarena-{part}"] for part in ("rabbitmq", "mongodb", "env"))

    assert re.fullmatch(r"[A-Za-z0-9]{32}", rabbit["password"]) and rabbit["username"] == "evoarena"
    assert rabbit["management-url"] == f"http://evoarena:{rabbit['password']}@arena-evoarena-rabbitmq.evoarena.svc:15672"
    assert env["EVOARENA_BROKER_URL"] == \
        f"amqp://evoarena:{rabbit['password']}@arena-evoarena-rabbitmq.evoarena.svc:5672//"
    assert env["EVOARENA_STORE"] == \
        f"mongodb://evoarena:{mongo['password']}@arena-evoarena-mongodb.evoarena.svc:27017/evoarena?authSource=admin"
    assert re.fullmatch(r"[A-Za-z0-9]{48}", env["EVOARENA_TASK_KEY"])  # the key the master signs tasks with


def test_a_second_run_keeps_every_password_and_the_task_key(tmp_path):
    first = run_script(tmp_path)
    second = run_script(tmp_path)

    assert second == first


def test_the_script_and_the_chart_name_the_same_secrets(tmp_path):
    helm = tool("helm")
    chart = {o["metadata"]["name"]: set(o["data"]) for o in template(helm) if o["kind"] == "Secret"}
    script = {name: set(data) for name, data in run_script(tmp_path).items()}

    assert script == chart
