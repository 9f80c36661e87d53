"""Chaos: a fleet run on three workers while workers, the master and the broker are killed.

A GA run (the memorize problem on 64x64 images, population 25) goes through the real RabbitMQ to
three Celery workers (`python -m evoarena worker`, as in a pod), with the master itself a
separate `evoarena run --fleet` process. At random moments (every 3 to 8 s) a loop injects, in
turn and in a shuffled order, one of:

  worker   kill -9 a worker and its pool processes, start a new one
  master   kill -9 the `evoarena run` process, start it again (it resumes from the store)
  broker   restart RabbitMQ (`rabbitmqctl stop_app`, 3 s, `start_app`)

until the run completes. Then, from the store:

  expected     evaluations a complete run stores (generation 0's and every later generation's)
  stored       result documents
  lost         expected evaluations with no document, or whose document is an error (a task
               the fleet gave up on: dead-lettered, past its deadline, refused)
  duplicated   extra documents for an individual that already has one
  rerun        tasks a worker started more than once (an interrupted task is run again: work
               repeated, not a duplicate result)

Bar: the run completes, every kind of fault was injected at least once, 0 lost, 0 duplicated,
and the master never exits by itself (it is restarted when it does, and that is counted);
with --reference, the evolution (each generation's best and parents, fitness bit for bit) is the
same as an uninterrupted run in one process. Prints BAR MET, or BAR MISSED and exits 1.

    python bench/chaos.py                                  # about 7 minutes on 2 cores
    python bench/chaos.py --generations 40 --reference     # the slow test's shorter budget

Needs RabbitMQ on 127.0.0.1:5672 and `rabbitmqctl` (restarting the broker needs root, as here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

FAULTS = ("worker", "master", "broker")


def spec_dict(name: str, generations: int) -> dict:
    return {"name": name, "seed": 7,
            "problem": {"kind": "memorize", "image": [3, 64, 64], "classes": 10, "batch_size": 64,
                        "train_batches": 8, "val_batches": 1},
            "network": {"convs": [{"channels": 32, "kernel": 8, "stride": 4}], "hidden": [64]},
            "noise": {"size": 1 << 22},
            "ga": {"generations": generations, "parents": 4, "children_per_parent": 6, "elites": 1,
                   "checkpoint_every": 5}}


class Chaos:
    """Three workers, a master process, and the faults done to them."""

    def __init__(self, tmp: Path, spec_file: Path):
        self.env = {"EVOARENA_STORE": f"sqlite:///{tmp}/chaos.db", "EVOARENA_ARTIFACTS": str(tmp / "artifacts"),
                    "EVOARENA_NOISE_DIR": str(tmp / "noise"), "EVOARENA_THREADS": "1",
                    # a killed worker's direct tasks go to the shared queue after 10 s of silence
                    "EVOARENA_HEARTBEAT_WINDOW_S": "10"}
        self.workers = LocalWorkers(tmp, self.env, label="chaos")
        self.spec_file, self.tmp = spec_file, tmp
        self.master: subprocess.Popen | None = None
        self.masters = 0
        self.crashes = 0  # times the master exited with an error nobody injected
        self.injected: Counter[str] = Counter()
        self.names: list[str] = []  # of the workers started, for their logs

    def start_worker(self) -> None:
        self.names.append(f"w{len(self.names)}")
        self.workers.start(self.names[-1])

    def start_master(self) -> None:
        self.masters += 1
        log = open(self.tmp / f"master-{self.masters}.log", "w")
        self.master = subprocess.Popen([sys.executable, "-m", "evoarena", "run", str(self.spec_file), "--fleet"],
                                       env=self.workers.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def inject(self, fault: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')}  {fault}", flush=True)
        if fault == "worker":
            victim = random.choice([n for n, p in self.workers.procs.items() if p.poll() is None])
            self.workers.kill(victim)
            self.start_worker()
        elif fault == "master":
            os.killpg(self.master.pid, signal.SIGKILL)
            self.master.wait()
            time.sleep(1)
            self.start_master()
        else:
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
            time.sleep(3)
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
            subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)
        self.injected[fault] += 1

    def run(self, budget_s: float) -> bool:
        """Inject faults until the master completes the run (True) or the budget is spent."""
        for _ in range(3):
            self.start_worker()
        self.workers.wait_ready()
        self.start_master()
        deadline = time.monotonic() + budget_s
        order: list[str] = []
        while time.monotonic() < deadline:
            wake = time.monotonic() + random.uniform(3, 8)
            while time.monotonic() < wake:
                if self.master.poll() is not None:
                    if self.master.returncode == 0:
                        return True
                    print(f"  the master exited with {self.master.returncode} by itself; starting it again "
                          f"(see master-{self.masters}.log)", flush=True)
                    self.crashes += 1
                    self.start_master()
                time.sleep(0.2)
            order = order or random.sample(FAULTS, len(FAULTS))
            self.inject(order.pop())
        return False

    def close(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True)  # never leave the broker stopped
        if self.master is not None and self.master.poll() is None:
            os.killpg(self.master.pid, signal.SIGKILL)
        self.workers.close()

    def reruns(self) -> int:
        started = Counter(json.loads(line)["task"] for name in self.names
                          for line in self.workers.log(name).splitlines() if '"event": "task started"' in line)
        return sum(n - 1 for n in started.values() if n > 1)


def evolution(store, name: str) -> list[tuple]:
    return [(g["generation"], g["best"], [p["id"] for p in g["parents"]]) for g in store.list_generations(name)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--budget", type=float, default=900, help="seconds before the bench gives up")
    parser.add_argument("--reference", action="store_true", help="also compare with an uninterrupted inline run")
    parser.add_argument("--seed", type=int, default=0, help="of the fault schedule")
    args = parser.parse_args()
    random.seed(args.seed)
    data = spec_dict("chaos", args.generations)
    spec = parse_spec(data)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec_file = tmp / "chaos.yaml"
        spec_file.write_text(yaml.safe_dump(data))
        chaos = Chaos(tmp, spec_file)
        print(f"chaos: {args.generations} generations of population {spec.ga.population} on 3 workers")
        started = time.perf_counter()
        try:
            completed = chaos.run(args.budget)
            reruns = chaos.reruns()
        finally:
            chaos.close()
        wall = time.perf_counter() - started

        store = open_store(chaos.env["EVOARENA_STORE"])
        docs = store.find_results(spec.name, op="evaluate")
        per_individual = Counter((d["generation"], d["genome_id"]) for d in docs)
        expected = spec.ga.generation_zero_size + (spec.ga.generations - 1) * spec.ga.population
        lost = expected - len({(d["generation"], d["genome_id"]) for d in docs if d["error"] is None})
        duplicated = sum(n - 1 for n in per_individual.values())
        status = (store.get_experiment(spec.name) or {}).get("status")
        same = None
        if args.reference:
            config = WorkerConfig(f"sqlite:///{tmp}/reference.db", str(tmp / "ref-artifacts"), str(tmp / "noise"), threads=1)
            reference = open_store(config.store_url)
            scheduler.run(spec, reference, InlineExecutor(config))
            same = evolution(store, spec.name) == evolution(reference, spec.name)

    print(f"\nfaults injected  {sum(chaos.injected.values())} ({', '.join(f'{k} {v}' for k, v in sorted(chaos.injected.items()))}), "
          f"master starts {chaos.masters}, master crashes {chaos.crashes}, wall {wall:.0f} s")
    print(f"results expected {expected}, stored {len(docs)}, lost {lost}, duplicated {duplicated}, rerun {reruns}; "
          f"run {status}" + ("" if same is None else f"; same evolution as the uninterrupted run: {same}"))
    failures = []
    if not completed or status != "complete":
        failures.append(f"the run did not complete within {args.budget:.0f} s (status {status})")
    if set(chaos.injected) != set(FAULTS):
        failures.append(f"only {dict(chaos.injected)} were injected before the run ended: give it more generations")
    if lost or duplicated:
        failures.append(f"{lost} lost, {duplicated} duplicated")
    if chaos.crashes:
        failures.append(f"the master crashed {chaos.crashes} times on a fault it should have ridden out")
    if same is False:
        failures.append("the evolution differs from the uninterrupted run")
    for failure in failures:
        print("BAR MISSED:", failure)
    if not failures:
        print("BAR MET: the run completed through every kind of fault with 0 lost and 0 duplicated")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
