"""Faults that once lost or forged data, injected again against the real RabbitMQ and real workers.

Each row of issue 20 is done again as it was found: real `evoarena worker` processes (as in a
pod) on a RabbitMQ vhost of this bench's own (made with rabbitmqctl, deleted at the end), a real
SQLite file, real `evoarena` commands. Each row then reads the store and prints

  fault      what was done
  expected   what must happen
  observed   what happened
  lost       results of an undisturbed run (same spec, one process) that are missing or differ
             once the run is complete (the same command run again where the row says so)
  wrong      stored documents that should not be there: an error that is not the genome's
             recorded as its result, a row the run never planned, a result overwritten
  peak MB    the peak resident memory of the process the fault hit (the command, or a worker)

and exits 1 when any row fails. The faults:

  store moved     the SQLite store's directory moved away while the workers' pools restart, then back
  write outage    one worker cannot write results for 25 s (longer than its own retries, 7 s)
  read-only       no worker can write for a whole run; fixed; the same command again
  no key          a master without EVOARENA_TASK_KEY against keyed workers; then with it
  forged best     a founder task naming the best result's id, sent to a worker of the finished run
  replayed role   a real task replayed with its role changed
  generation 7    real tasks sent for generation 7 of a 5-generation run
  unsigned sleep  evoarena.sleep / whoami sent unsigned to keyed workers
  limit 3, 1      a task that kills its process on every delivery, EVOARENA_DELIVERY_LIMIT 3 and 1
  alias bomb      a 390-byte YAML alias bomb given to `evoarena run`
  50 MB file      a valid 50 MB experiment file
  huge sizes      parents 10000, children_per_parent 100000 (a billion individuals a generation)
  raw 20 MB       a 20 MB message without headers published to the workers' queue
  two masters     a second `evoarena run` of a running experiment on the same store

    python bench/faults.py            # about 6 minutes on 2 cores
    python bench/faults.py --only store-moved no-key

Needs RabbitMQ on 127.0.0.1:5672 and `rabbitmqctl` (as root, as here). bench/chaos.py is the
other fault bench: workers, the master and the broker killed at random during a run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "tests"  # tests/faulty (write outages) and tests/crashing (processes that die)
GENERATIONS = 5
PEAK_BOUND_MB = 600  # what a refused input may cost a command or a worker at most


@dataclass
class Row:
    fault: str
    expected: str
    observed: str = ""
    lost: int = 0
    wrong: int = 0
    peak_mb: float | None = None
    ok: bool = False


def spec_dict(name: str, generations: int = GENERATIONS, slow: bool = False) -> dict:
    """experiments/tiny.yaml (the project's tiny GA) named `name`, with `generations` and a 1 Mi noise
    table, run where the bench sends it (no executor); `slow`: larger images and network, so that a
    run lasts long enough to meet a second master."""
    spec = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    spec.pop("executor", None)
    spec.pop("description", None)
    spec.update(name=name, noise={"size": 1 << 20}, ga={**spec["ga"], "generations": generations})
    if slow:
        spec["problem"].update(image=[3, 64, 64], batch_size=64, train_batches=8)
        spec["network"] = {"convs": [{"channels": 32, "kernel": 8, "stride": 4}], "hidden": [64]}
    return spec


# --- the place: a vhost, a store, workers ----------------------------------------------------------


class Vhost:
    """A RabbitMQ vhost of this bench's own, so nothing it does reaches another fleet."""

    def __init__(self):
        self.name = f"evoarena-faults-{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.name], check=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"], check=True)
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def close(self):
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], check=False)


class Place:
    """A store, a directory for artifacts and noise, and worker processes on the bench's vhost."""

    def __init__(self, root: Path, name: str, env: dict[str, str] | None = None, store_dir: str = "store"):
        self.root = root / name
        self.root.mkdir(parents=True)
        self.url = f"sqlite:///{self.root / store_dir / 'runs.db'}"
        self.store = open_store(self.url)
        self.workers = LocalWorkers(self.root, {"EVOARENA_STORE": self.url, "EVOARENA_ARTIFACTS": str(self.root / "art"),
                                                "EVOARENA_NOISE_DIR": str(root / "noise"), "EVOARENA_THREADS": "1",
                                                **(env or {})}, label="faults")

    def start(self, *names: str, **env: str) -> None:
        self.workers.env.update(env)
        for name in names:
            self.workers.start(name)
        self.workers.wait_ready()

    def executor(self):
        from evoarena.fleet.celery_executor import CeleryExecutor

        return CeleryExecutor(self.workers.app, self.store, ping_every=1.0, store_every=1.0, heartbeat_window=10.0)

    def close(self):
        self.workers.close()
        self.store.close()


def with_hook(hook: str, **env: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{HOOKS / hook}:{os.environ.get('PYTHONPATH', '')}", **env}


_references: dict[str, dict] = {}


def reference(root: Path, spec) -> dict[tuple[int, str], float]:
    """Every individual's fitness in an undisturbed run of `spec` in one process."""
    if spec.name not in _references:
        url = f"sqlite:///{root / 'reference' / spec.name / 'runs.db'}"
        store = open_store(url)
        config = WorkerConfig(url, str(root / "reference" / spec.name / "art"), str(root / "noise"), threads=1)
        scheduler.run(spec, store, InlineExecutor(config))
        _references[spec.name] = fitnesses(store, spec.name)
        store.close()
    return _references[spec.name]


def fitnesses(store, name: str) -> dict[tuple[int, str], float]:
    return {(d["generation"], d["genome_id"]): d["fitness"] for d in store.find_results(name)}


def compare(store, spec, root: Path) -> tuple[int, int]:
    """(lost, wrong) of a run against its undisturbed reference: results missing or different, and
    documents that hold an error or that the reference does not have."""
    want, have = reference(root, spec), fitnesses(store, spec.name)
    lost = sum(1 for k, f in want.items() if have.get(k) != f)
    wrong = sum(1 for d in store.find_results(spec.name) if d.get("error") or (d["generation"], d["genome_id"]) not in want)
    return lost, wrong


def pool_pids(workers: LocalWorkers) -> list[int]:
    """The pids of the pool processes of every worker in `workers`."""
    return [int(p) for proc in workers.procs.values()
            for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]


def worker_peak_mb(workers: LocalWorkers) -> float:
    """The highest VmHWM among the workers' processes and their pool processes."""
    peak = 0
    for pid in [proc.pid for proc in workers.procs.values()] + pool_pids(workers):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        peak = max(peak, next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")))
    return peak / 1024


def command(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, float, float]:
    """Run `evoarena ARGS`: (exit code, stderr, seconds, peak resident MB of that process)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "evoarena", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read()
    return proc.returncode, err, time.perf_counter() - started, usage.ru_maxrss / 1024


# --- part 1: an infrastructure failure is never a genome's result -----------------------------------


def store_moved(root: Path) -> Row:
    row = Row("store moved", "completes as undisturbed; no fresh store at the old path; 0 lost, 0 wrong")
    place = Place(root, "moved")
    spec = parse_spec(spec_dict("moved"))
    place.start("alpha", "beta")
    home, away, seen = Path(place.url.removeprefix("sqlite:///")).parent, place.root / "away", []

    def back_later():
        time.sleep(12)
        seen.append(home.exists())
        away.rename(home)

    def after(progress):
        if progress.generation == 1:
            pools = pool_pids(place.workers)
            home.rename(away)
            for pid in pools:
                os.kill(pid, 9)
            threading.Thread(target=back_later, daemon=True).start()

    try:
        scheduler.run(spec, place.store, place.executor(), on_progress=after)
        row.lost, row.wrong = compare(place.store, spec, root)
        row.observed = f"complete; old path recreated while away: {seen[0]}"
        row.ok = seen == [False] and row.lost == row.wrong == 0
    except Exception as exc:  # noqa: BLE001 - a row reports what happened
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return row


def write_outage(root: Path) -> Row:
    row = Row("write outage 25 s", "completes as undisturbed, the elite kept; 0 lost, 0 wrong")
    flag = root / "outage.flag"
    place = Place(root, "outage", with_hook("faulty", EVOARENA_TEST_WRITE_OUTAGE=str(flag)))
    spec = parse_spec(spec_dict("outage"))
    place.start("alpha")

    def after(progress):
        if progress.generation == 1:
            flag.touch()
            threading.Timer(25, flag.unlink).start()

    try:
        scheduler.run(spec, place.store, place.executor(), on_progress=after)
        row.lost, row.wrong = compare(place.store, spec, root)
        met = place.workers.log("alpha").count("injected")
        row.observed = f"complete; the worker met the outage {met} times"
        row.ok = met > 0 and row.lost == row.wrong == 0
    except Exception as exc:  # noqa: BLE001
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return row


def stops_then_continues(root: Path, name: str, fault: str, env: dict, before: Callable, fix: Callable) -> Row:
    """A fault that lasts a whole run: the run must stop unrecorded, and continue once fixed."""
    row = Row(fault, "stops, nothing recorded as a genome's; the same command, once fixed, completes; 0 lost")
    place = Place(root, name, env)
    spec = parse_spec(spec_dict(name, generations=3))
    retries, wait = scheduler.STEP_RETRIES, scheduler.STEP_RETRY_WAIT_S
    scheduler.STEP_RETRIES, scheduler.STEP_RETRY_WAIT_S = 1, 0.5
    try:
        before(place)
        try:
            scheduler.run(spec, place.store, place.executor())
            first = "completed (it should have stopped)"
        except scheduler.InfrastructureFailure:
            first = "stopped: InfrastructureFailure"
        recorded = [d for d in place.store.find_results(spec.name) if d.get("error") and not d.get("transient")]
        fix(place)
        scheduler.run(spec, place.store, place.executor())
        row.lost, row.wrong = compare(place.store, spec, root)
        row.wrong += len(recorded)
        row.observed = f"{first}; {len(recorded)} genome errors recorded; rerun complete"
        row.ok = first.startswith("stopped") and row.lost == row.wrong == 0
    except Exception as exc:  # noqa: BLE001
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        scheduler.STEP_RETRIES, scheduler.STEP_RETRY_WAIT_S = retries, wait
    row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return row


def read_only(root: Path) -> Row:
    flag = root / "read-only.flag"
    flag.touch()
    return stops_then_continues(root, "read-only", "read-only store", with_hook("faulty", EVOARENA_TEST_WRITE_OUTAGE=str(flag)),
                                lambda place: place.start("alpha"), lambda place: flag.unlink())


def no_key(root: Path) -> Row:
    def before(place):
        place.start("alpha", EVOARENA_TASK_KEY="the-fleet-key")
        os.environ.pop("EVOARENA_TASK_KEY", None)

    return stops_then_continues(root, "no-key", "master without key", {}, before,
                                lambda place: os.environ.update(EVOARENA_TASK_KEY="the-fleet-key"))


# --- part 2: no result can be overwritten by a forged or replayed task -------------------------------


def forged(root: Path) -> list[Row]:
    os.environ.pop("EVOARENA_TASK_KEY", None)
    place = Place(root, "forged")
    spec = parse_spec(spec_dict("forged"))
    place.start("alpha")
    scheduler.run(spec, place.store, place.executor())
    algo, last = scheduler.algorithm(spec), GENERATIONS - 1

    def planned(generation):
        return algo.plan(generation, None if generation == 0 else place.store.get_generation(spec.name, generation - 1)).tasks

    def attempt(fault, tasks):
        row = Row(fault, "refused; the store unchanged")
        before = place.store.find_results(spec.name)
        answers = [place.workers.app.send_task("evoarena.evaluate", args=(t,)).get(timeout=60) for t in tasks]
        after = place.store.find_results(spec.name)
        refused = sum(str(a.get("error")).startswith("TaskRefused") for a in answers)
        row.wrong = sum(1 for d in after if d not in before)
        row.lost = sum(1 for d in before if d not in after)
        row.observed = f"{refused} of {len(tasks)} refused; {row.wrong} rows new or changed"
        row.ok = refused == len(tasks) and row.lost == row.wrong == 0
        return row

    best = place.store.get_generation(spec.name, last)["best"]["genome_id"]
    task = planned(2)[-1]
    rows = [attempt("forged best", [{**planned(0)[0], "generation": last, "key": [best]}]),
            attempt("replayed role", [{**task, "role": "elite" if task.get("role") != "elite" else "child"}]),
            attempt("generation 7", [{**t, "generation": 7} for t in planned(1)[:3]])]
    for row in rows:
        row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return rows


def unsigned_sleep(root: Path) -> Row:
    row = Row("unsigned sleep", "not run: a keyed worker does not have benchmark tasks; signed work goes on")
    os.environ["EVOARENA_TASK_KEY"] = "the-fleet-key"
    place = Place(root, "unsigned", {"EVOARENA_TASK_KEY": "the-fleet-key"})
    place.start("alpha")
    try:
        ran = 0
        for name, args in (("evoarena.sleep", ({"seconds": 60, "experiment": "x", "generation": 0, "genome": {"id": "g"}},)),
                           ("evoarena.whoami", ())):
            try:
                place.workers.app.send_task(name, args=args).get(timeout=10)
                ran += 1
            except Exception:  # noqa: BLE001 - NotRegistered, or no answer: not run either way
                pass
        started = time.perf_counter()
        spec = parse_spec(spec_dict("unsigned", generations=1))
        scheduler.run(spec, place.store, place.executor())
        row.observed = f"{ran} of 2 ran; a signed run then took {time.perf_counter() - started:.0f} s"
        row.ok = ran == 0 and time.perf_counter() - started < 55  # a sleep held would have cost 60 s
    except Exception as exc:  # noqa: BLE001
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        os.environ.pop("EVOARENA_TASK_KEY", None)
    row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return row


# --- part 3: the delivery limit is the limit ------------------------------------------------------------


def delivery_limit(root: Path, limit: int) -> Row:
    row = Row(f"limit {limit}", f"delivered exactly {limit} times, then dead-lettered and recorded once")
    os.environ["EVOARENA_DELIVERY_LIMIT"] = str(limit)  # the master declares the queues too
    marks = root / f"marks-{limit}"
    marks.mkdir()
    place = Place(root, f"limit-{limit}", with_hook("crashing", EVOARENA_DELIVERY_LIMIT=str(limit),
                                                  CRASHING_GENOMES=str(marks)))
    place.start("alpha")
    spec = parse_spec(spec_dict(f"limit-{limit}", generations=2))
    victim = [t for t in scheduler.algorithm(spec).plan(0, None).tasks][1]["genome"]["id"]
    (marks / victim).write_text("100")  # dies on every delivery
    try:
        scheduler.run(spec, place.store, place.executor())
        evaluations = len((marks / f"{victim}.evaluations").read_text().splitlines())
        doc = place.store.get_result(f"{spec.name}:000000:evaluate:{victim}")
        row.observed = f"delivered {evaluations} times; stored: {str(doc and doc['error'])[:50]}"
        row.wrong = int(doc is None or doc.get("fitness") is not None)
        row.ok = evaluations == limit and row.wrong == 0 and "delivery limit" in doc["error"]
    except Exception as exc:  # noqa: BLE001
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        os.environ.pop("EVOARENA_DELIVERY_LIMIT", None)
    row.peak_mb = worker_peak_mb(place.workers)
    place.close()
    return row


# --- part 4: small inputs stay small -------------------------------------------------------------------


def refused_input(root: Path, fault: str, text: str) -> Row:
    row = Row(fault, f"exit 2 with one line, peak under {PEAK_BOUND_MB} MB")
    path = root / f"{fault.replace(' ', '-')}.yaml"
    path.write_text(text)
    code, err, seconds, peak = command("run", str(path), "--inline", "--store", f"sqlite:///{root / 'inputs.db'}")
    lines = [line for line in err.splitlines() if line.strip()]
    row.peak_mb = peak
    row.observed = f"exit {code} in {seconds:.1f} s: {lines[-1][:70] if lines else ''}"
    row.ok = code == 2 and len(lines) == 1 and "Traceback" not in err and peak < PEAK_BOUND_MB
    return row


def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\nname: bomb\nproblem: *i\n"


def fifty_mb() -> str:
    spec = spec_dict("fifty-mb", generations=1)
    padding = "# " + "x" * 98 + "\n"
    return yaml.safe_dump(spec) + padding * (50 * 1024 * 1024 // len(padding))


def huge_sizes() -> str:
    return yaml.safe_dump({**spec_dict("huge"), "ga": {"generations": 5, "parents": 10000, "children_per_parent": 100000,
                                                       "elites": 1}})


def raw_message(root: Path) -> Row:
    row = Row("raw 20 MB", f"dead-lettered; worker log under 1 MB, worker peak under {PEAK_BOUND_MB} MB")
    place = Place(root, "raw")
    place.start("alpha")
    before = worker_peak_mb(place.workers)
    try:
        from kombu import Connection, Producer

        with Connection(place.workers.app.conf.broker_url) as conn:
            Producer(conn.default_channel).publish(b"x" * (20 << 20), routing_key=place.workers.queue,
                                                   content_type="application/octet-stream", content_encoding="binary",
                                                   headers={})
        dead = 0
        deadline = time.monotonic() + 60
        with place.workers.app.connection_for_write() as conn:
            while time.monotonic() < deadline and not dead:
                dead = conn.default_channel.queue_declare(f"{place.workers.queue}.dead", passive=True).message_count
                time.sleep(0.5)
        log_mb = len(place.workers.log("alpha").encode()) / 2**20
        row.peak_mb = worker_peak_mb(place.workers)
        row.observed = f"dead letters {dead}; log {log_mb:.2f} MB; peak {before:.0f} -> {row.peak_mb:.0f} MB"
        row.ok = dead == 1 and log_mb < 1 and row.peak_mb < PEAK_BOUND_MB
    except Exception as exc:  # noqa: BLE001
        row.observed = f"{type(exc).__name__}: {exc}"[:120]
    place.close()
    return row


# --- part 5: two masters on one experiment ---------------------------------------------------------------


def two_masters(root: Path) -> Row:
    row = Row("two masters", "the second exits 2 naming the first (host, pid); the first completes as undisturbed")
    path = root / "two.yaml"
    spec_doc = {**spec_dict("two", generations=40, slow=True), "executor": {"kind": "local", "workers": 1}}
    spec = parse_spec(spec_doc)
    path.write_text(yaml.safe_dump(spec_doc))
    url = f"sqlite:///{root / 'two' / 'runs.db'}"
    env = {**os.environ, "EVOARENA_NOISE_DIR": str(root / "noise"), "EVOARENA_ARTIFACTS": str(root / "two" / "art")}
    first = subprocess.Popen([sys.executable, "-m", "evoarena", "run", str(path), "--store", url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    store = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (root / "two" / "runs.db").exists():
            store = store or open_store(url)
            if store.count_results("two") > 0:
                break
        time.sleep(0.2)
    if store is None or first.poll() is not None:
        first.wait()
        row.observed = f"the first master did not get going: exit {first.returncode}, {first.stderr.read()[-100:]!r}"
        return row
    code, err, seconds, peak = command("run", str(path), "--store", url, env=env)
    first.wait(timeout=600)
    row.peak_mb = peak
    row.lost, row.wrong = compare(store, spec, root)
    line = err.strip().splitlines()[-1] if err.strip() else ""
    row.observed = f"second: exit {code} in {seconds:.1f} s ({line[:60]}); first: exit {first.returncode}"
    row.ok = code == 2 and f"pid {first.pid}" in line and first.returncode == 0 and row.lost == row.wrong == 0
    store.close()
    return row


ROWS: dict[str, Callable[[Path], list[Row] | Row]] = {
    "store-moved": store_moved,
    "write-outage": write_outage,
    "read-only": read_only,
    "no-key": no_key,
    "forged": forged,
    "unsigned": unsigned_sleep,
    "limit-3": lambda root: delivery_limit(root, 3),
    "limit-1": lambda root: delivery_limit(root, 1),
    "alias-bomb": lambda root: refused_input(root, "alias bomb", alias_bomb()),
    "50mb-file": lambda root: refused_input(root, "50 MB file", fifty_mb()),
    "huge-sizes": lambda root: refused_input(root, "huge sizes", huge_sizes()),
    "raw-message": raw_message,
    "two-masters": two_masters,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run these rows only")
    args = parser.parse_args()
    vhost = Vhost()
    os.environ["EVOARENA_BROKER_URL"] = vhost.url
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="evoarena-faults-") as tmp:
            for name in args.only or ROWS:
                out = ROWS[name](Path(tmp))
                for row in out if isinstance(out, list) else [out]:
                    rows.append(row)
                    print(f"  {row.fault}: {'ok' if row.ok else 'FAILED'} ({row.observed}) "
                          f"[{time.perf_counter() - started:.0f}s]", flush=True)
    finally:
        vhost.close()
    print("\n| fault | expected | observed | lost | wrong | peak MB | |\n|---|---|---|---:|---:|---:|---|")
    for r in rows:
        peak = "" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        print(f"| {r.fault} | {r.expected} | {r.observed} | {r.lost} | {r.wrong} | {peak} | {'ok' if r.ok else 'FAILED'} |")
    failed = [r.fault for r in rows if not r.ok]
    print(f"\n{'BAR MISSED: ' + ', '.join(failed) if failed else 'BAR MET'} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
