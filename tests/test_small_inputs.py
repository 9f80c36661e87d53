"""Small inputs stay small (issue 20): a few hundred bytes of YAML, a big file, a spec that asks
for a billion individuals, a 20 MB message on the broker; each is refused in one line, before it
is expanded, read, allocated or decoded, and each test measures the peak memory it took.

Peak memory is measured as `/usr/bin/time -v` does: a command's maximum resident set from
os.wait4 (getrusage of that one child), a worker's VmHWM from /proc, or tracemalloc's peak for
what runs in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from evoarena.settings import SpecLimits
from evoarena.spec.experiment import SpecError, _show, load_spec, parse_spec
from evoarena.spec.limits import gan_parameters
from helpers import tiny_yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"
MiB = 1 << 20
CLI_PEAK_MB = 100  # a refused command: Python, pydantic and PyYAML, nothing of the input (35 MB here)


# The command reports its own peak: a child's getrusage maxrss would include this (torch-sized) process,
# whose memory a forked child starts with before its exec; VmHWM is the exec'd program's alone.
REPORT_PEAK = """
import atexit, sys
atexit.register(lambda: print("peak_kb", next(line.split()[1] for line in open("/proc/self/status")
                                               if line.startswith("VmHWM:")), file=sys.stderr))
from evoarena.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run `evoarena ARGS` to its end: (exit code, stderr, peak resident memory in MB)."""
    proc = subprocess.run([sys.executable, "-c", REPORT_PEAK, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "EVOARENA_STORE": f"sqlite:///{tmp_path}/s.db",
                               "EVOARENA_NOISE_DIR": str(tmp_path / "noise"), **(env or {})}, timeout=300)
    (tmp_path / "stdout").write_text(proc.stdout)
    *stderr, peak = proc.stderr.splitlines()
    assert peak.startswith("peak_kb "), proc.stderr[-2000:]
    peak_mb = int(peak.split()[1]) / 1024
    print(f"evoarena {' '.join(args)}: exit {proc.returncode}, peak {peak_mb:.0f} MB")
    return proc.returncode, "\n".join(stderr), peak_mb


def write(tmp_path: Path, data: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """tracemalloc's peak of what runs inside, in bytes: `with peak_memory() as peak: ...`, then peak[0]."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


LETTERS = "abcdefghij"
ALIAS_BOMB = "\n".join(["name: bomb", "ga: {generations: 1}", "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
                       + [f"{x}: &{x} [" + ",".join([f"*{w}"] * 9) + "]" for w, x in zip(LETTERS, LETTERS[1:])]
                       + ["description: *j"]) + "\n"  # 10 levels: 9^10 = 3.5 billion strings


# --- the YAML file -------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_in_one_line_before_it_is_expanded(tmp_path):
    path = write(tmp_path, ALIAS_BOMB, "bomb.yaml")
    assert path.stat().st_size < 420

    code, stderr, peak_mb = run_cli(tmp_path, "run", str(path))

    assert code == 2
    assert stderr.splitlines() == [f"error: {path}: with its aliases expanded the file holds more than 10,000 values; "
                                   "at most that many are accepted (EVOARENA_SPEC_MAX_VALUES)"]
    assert peak_mb < CLI_PEAK_MB  # it was 3.08 GB, and 5.8 GB at 150 s for 10 levels


def test_a_spec_that_aliases_a_long_string_past_the_file_size_limit_is_refused(tmp_path):
    text = "name: x\nga: {generations: 1}\nd: &d " + "y" * 100_000 + "\n" + "l: [" + ", ".join(["*d"] * 20) + "]\n"

    path = write(tmp_path, text)

    with peak_memory() as peak, pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value) == (f"{path}: with its aliases expanded the file holds 2,100,021 characters of text; at "
                                "most 1,048,576 are accepted (EVOARENA_SPEC_MAX_BYTES)")
    assert peak[0] < 2 * MiB  # the file's 100 KB, read, parsed and composed; never the 2.1 MB


def test_an_alias_inside_what_it_names_is_refused_in_one_line(tmp_path):
    path = write(tmp_path, "name: x\nga: {generations: 1}\nloop: &l [1, *l]\n")

    with peak_memory() as peak, pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value) == f"{path}: invalid YAML: the list or mapping at line 3, column 7 holds an alias to itself"
    assert peak[0] < 256 << 10


@pytest.mark.parametrize("depth", [65, 5000])
def test_a_file_nested_deeper_than_64_levels_is_refused_in_one_line(tmp_path, depth):
    path = write(tmp_path, "name: x\nga: " + "[" * depth + "]" * depth + "\n")

    with peak_memory() as peak, pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value) == f"{path}: invalid YAML: nested more than 64 levels deep"
    assert peak[0] < 4 * MiB  # PyYAML's recursion (5000 levels) included


def test_a_number_longer_than_python_converts_is_refused_in_one_line(tmp_path):
    path = write(tmp_path, "name: x\nga: {generations: " + "9" * 5000 + "}\n")

    with peak_memory() as peak, pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value) == (f"{path}: invalid YAML: Exceeds the limit (4300 digits) for integer string "
                                "conversion: value has 5000 digits")
    assert peak[0] < 256 << 10


def test_a_value_of_a_billion_items_is_shown_in_60_characters_without_being_rendered():
    value = ["lol"] * 9
    for _ in range(9):
        value = [value] * 9  # 9^10 strings, as the alias bomb loads: shared lists
    with peak_memory() as peak:
        shown = _show(value)

    assert shown == repr([[[[[[[[[["lol"] * 9]]]]]]]]])[:57] + "..."  # what repr(value) begins with
    assert len(shown) == 60
    assert peak[0] < 64 << 10


def test_a_spec_error_names_a_huge_wrong_value_in_60_characters():
    huge = [list(range(1000))] * 1_000_000  # a billion numbers
    with peak_memory() as peak, pytest.raises(SpecError) as error:
        parse_spec({"name": "x", "ga": {"generations": 1}, "description": huge})

    assert str(error.value) == f"<spec>: description = {repr([list(range(1000))])[:57]}...: must be a valid string"
    assert peak[0] < 1 * MiB


# --- the file's size -------------------------------------------------------------------------------


def test_a_50_mb_experiment_file_is_refused_by_its_size_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as file:  # a valid spec: tiny.yaml and 50 MB of comments
        file.write(TINY.read_text())
        line = "# " + "x" * 1021 + "\n"
        file.writelines([line] * (50 * 1024))
    size = path.stat().st_size

    code, stderr, peak_mb = run_cli(tmp_path, "run", str(path))

    assert code == 2
    assert stderr.splitlines() == [f"error: {path}: the file is {size:,} bytes; at most 1,048,576 are accepted "
                                   "(EVOARENA_SPEC_MAX_BYTES; an experiment file is a few KB)"]
    assert peak_mb < CLI_PEAK_MB  # it ran past 150 s and 5.8 GB


def test_a_stream_without_a_size_is_read_only_to_one_byte_past_the_limit():
    with peak_memory() as peak, pytest.raises(SpecError) as error:
        load_spec("/dev/zero", limits=SpecLimits(spec_max_bytes=1000))  # endless, and its size says 0

    assert str(error.value) == ("/dev/zero: the file is more than 1,000 bytes; at most 1,000 are accepted "
                                "(EVOARENA_SPEC_MAX_BYTES; an experiment file is a few KB)")
    assert peak[0] < 64 << 10


def test_the_file_size_limit_is_set_by_evoarena_spec_max_bytes(tmp_path):
    code, stderr, peak_mb = run_cli(tmp_path, "run", str(TINY), env={"EVOARENA_SPEC_MAX_BYTES": "100"})

    assert code == 2
    assert stderr.splitlines() == [f"error: {TINY}: the file is {TINY.stat().st_size:,} bytes; at most 100 are "
                                   "accepted (EVOARENA_SPEC_MAX_BYTES; an experiment file is a few KB)"]
    assert peak_mb < CLI_PEAK_MB


# --- what the run would allocate ---------------------------------------------------------------------


def test_a_billion_individuals_are_refused_naming_the_field_the_estimate_and_the_limit(tmp_path):
    path = write(tmp_path, tiny_yaml(ga={"parents": 10_000, "children_per_parent": 100_000, "elites": 1}))

    code, stderr, peak_mb = run_cli(tmp_path, "run", str(path))

    assert code == 2
    assert stderr.splitlines() == [
        f"error: {path}: ga.children_per_parent = 100000: the master's 1,000,000,001 individuals (a generation: "
        "ga.parents x ga.children_per_parent = 10,000 x 100,000) would take about 44.7 TiB on this machine (the "
        "master and 1 local worker); at most 8 GiB a machine are accepted (EVOARENA_RUN_MAX_MEMORY_MB=8192; "
        "`evoarena run --force` skips this check)"]
    assert peak_mb < CLI_PEAK_MB  # it passed validation, then died allocating 16 GiB


def test_a_noise_table_over_the_limit_is_refused_naming_noise_size(tmp_path):
    path = write(tmp_path, tiny_yaml(noise={"size": 1 << 20}))  # 4 MiB

    with pytest.raises(SpecError) as error:
        load_spec(path, limits=SpecLimits(run_max_memory_mb=2))

    assert str(error.value) == (f"{path}: noise.size = 1048576: the noise table (1,048,576 float32s) would take "
                                "about 4 MiB, 4.46 MiB in all on this machine (the master and 1 local worker); at "
                                "most 2 MiB a machine are accepted (EVOARENA_RUN_MAX_MEMORY_MB=2; `evoarena run "
                                "--force` skips this check)")


def test_memorize_data_over_the_limit_is_refused_naming_the_batches(tmp_path):
    path = write(tmp_path, tiny_yaml(problem={"image": [3, 1024, 1024], "batch_size": 4096, "train_batches": 100},
                                     noise={"size": 1 << 26}))

    with pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value).startswith(f"{path}: problem.train_batches = 100: the data (413,696 images of 3x1024x1024: "
                                       "problem.batch_size x (train_batches + val_batches)) would take about 4.73 TiB")


def test_a_fleet_spec_is_refused_for_what_each_worker_would_hold(tmp_path):
    path = write(tmp_path, tiny_yaml(problem={"image": [3, 64, 64]}, noise={"size": 1 << 30}, ga={"eval_group": 4},
                                     network={"convs": [{"channels": 1, "kernel": 1}], "hidden": [16384, 16384]},
                                     executor={"kind": "celery"}))

    with pytest.raises(SpecError) as error:
        load_spec(path)

    assert str(error.value) == (f"{path}: network: the networks of a task (6 of 335,642,632 weights each: parent, "
                                "child and ga.eval_group children; the activations of 24 inputs) would take about 7.52 GiB, "
                                "11.5 GiB in all on each worker's machine; at most 8 GiB a machine are accepted "
                                "(EVOARENA_RUN_MAX_MEMORY_MB=8192; `evoarena run --force` skips this check)")


def test_force_accepts_a_spec_over_the_memory_limit(tmp_path):
    path = write(tmp_path, tiny_yaml(noise={"size": 1 << 20}))

    spec = load_spec(path, force=True, limits=SpecLimits(run_max_memory_mb=2))

    assert spec.noise.size == 1 << 20


def test_a_memory_limit_of_0_checks_nothing(tmp_path):
    path = write(tmp_path, tiny_yaml(ga={"parents": 10_000, "children_per_parent": 100_000}))

    assert load_spec(path, limits=SpecLimits(run_max_memory_mb=0)).ga.population == 1_000_000_001


def test_evoarena_run_force_runs_what_the_memory_limit_refuses(tmp_path):
    path = write(tmp_path, tiny_yaml(ga={"generations": 1}, noise={"size": 1 << 20}))
    env = {"EVOARENA_RUN_MAX_MEMORY_MB": "2"}

    refused, refusal, _ = run_cli(tmp_path, "run", str(path), "--inline", env=env)
    forced, _, _ = run_cli(tmp_path, "run", str(path), "--inline", "--force", env=env)

    assert refused == 2
    assert refusal.startswith(f"error: {path}: noise.size = 1048576: the noise table")
    assert forced == 0
    assert "tiny: done; best fitness" in (tmp_path / "stdout").read_text()


@pytest.mark.parametrize("name", ["arena-ring.yaml", "arena-digits.yaml", "arena-mnist.yaml"])
def test_the_estimate_counts_the_weights_of_the_networks_the_arena_builds(name):
    from evoarena.encoding import nets
    from evoarena.evolve.arena import Arena

    spec = load_spec(ROOT / "experiments" / name)
    arena = Arena(spec)
    shape = arena.shape

    for side, net in (("gen", spec.arena.generator), ("disc", spec.arena.discriminator)):
        weights, _ = gan_parameters(net, side, spec.problem.latent, tuple(shape))
        assert weights == nets.layout(arena.founding_arch(side)).size


# --- messages on the broker ------------------------------------------------------------------------


def vm_hwm_kb(pid: int) -> int:
    """The peak resident memory of process `pid` (VmHWM, what /usr/bin/time -v reports as maximum)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


def publish(fleet, body: bytes, headers: dict | None = None) -> None:
    from kombu import Connection, Producer

    with Connection(fleet.env["EVOARENA_BROKER_URL"]) as conn:
        Producer(conn).publish(body, routing_key=fleet.queue, exchange="", headers=headers,
                               content_type="application/json", content_encoding="utf-8", serializer=None)


def dead_letters(fleet, count: int, timeout: float = 60) -> int:
    """How many messages are in the fleet's dead-letter queue, waiting up to `timeout` s for `count`."""
    deadline = time.monotonic() + timeout
    with fleet.app.connection_for_write() as conn:
        while True:
            found = conn.default_channel.queue_declare(f"{fleet.queue}.dead", passive=True).message_count
            if found >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


def rejected_lines(fleet, name: str) -> list[dict]:
    return [json.loads(line) for line in fleet.log(name).splitlines() if line.startswith("{") and '"rejected"' in line]


def test_a_20_mb_message_without_headers_is_dead_lettered_unread_with_one_short_log_line(fleet):
    node = fleet.start("alpha")
    fleet.wait_ready()
    before_kb, log_before = vm_hwm_kb(fleet.procs[node].pid), len(fleet.log("alpha"))
    body = os.urandom(20 * MiB)  # not even UTF-8, under a JSON content type: the worst case for Celery's handlers

    publish(fleet, body)

    assert dead_letters(fleet, 1) == 1
    grew_mb = (vm_hwm_kb(fleet.procs[node].pid) - before_kb) / 1024
    logged = len(fleet.log("alpha")) - log_before
    print(f"20 MiB headerless message: worker peak +{grew_mb:.1f} MB, log +{logged} bytes")
    assert [{k: v for k, v in line.items() if k not in ("time", "level")} for line in rejected_lines(fleet, "alpha")] == [{
        "rejected": None, "id": None,
        "why": "a body of 20,971,520 bytes; at most 16,777,216 are accepted (EVOARENA_MESSAGE_MAX_BYTES)",
        "bytes": 20 * MiB, "head": repr(body[:64]) + "..."}]
    assert logged < 4096  # it was 134 MB of log, and the message was dropped
    assert grew_mb < 100  # receiving 20 MB takes twice that in py-amqp; it was +277 MB (336 -> 613 MB)
    assert fleet.procs[node].poll() is None
    assert fleet.app.send_task("evoarena.noop").get(timeout=30) == {"node": node}


@pytest.mark.parametrize(("headers", "why"), [
    (None, "no task name in its headers"),
    ({"task": "evoarena.nonesuch", "id": "t-1"}, "a task this worker does not have"),
    ({"task": "evoarena.evaluate", "id": "t-1"}, "an undecodable body (DecodeError)"),
])
def test_a_message_the_worker_cannot_run_is_dead_lettered_with_one_short_log_line(fleet, headers, why):
    node = fleet.start("alpha")
    fleet.wait_ready()
    before_kb, log_before = vm_hwm_kb(fleet.procs[node].pid), len(fleet.log("alpha"))

    publish(fleet, os.urandom(4 * MiB), headers)

    assert dead_letters(fleet, 1) == 1
    grew_mb = (vm_hwm_kb(fleet.procs[node].pid) - before_kb) / 1024
    logged = len(fleet.log("alpha")) - log_before
    print(f"4 MiB message, headers {headers}: worker peak +{grew_mb:.1f} MB, log +{logged} bytes")
    assert [line["why"] for line in rejected_lines(fleet, "alpha")] == [why]
    assert logged < 4096
    assert grew_mb < 40
    assert fleet.app.send_task("evoarena.noop").get(timeout=30) == {"node": node}


def test_the_message_size_limit_is_set_by_evoarena_message_max_bytes(fleet):
    fleet.env["EVOARENA_MESSAGE_MAX_BYTES"] = "1000"
    fleet.start("alpha")
    fleet.wait_ready()

    publish(fleet, b"[" * 2000, {"task": "evoarena.evaluate", "id": "t-1"})

    assert dead_letters(fleet, 1) == 1
    assert [line["why"] for line in rejected_lines(fleet, "alpha")] == [
        "a body of 2,000 bytes; at most 1,000 are accepted (EVOARENA_MESSAGE_MAX_BYTES)"]
