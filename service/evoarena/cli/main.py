"""`evoarena run | status | list | export | sample | report | baseline | worker | submit`: the command line.

Exit codes: 0 done, 1 the run failed or the fleet's broker does not answer, 2 bad input or another
master runs the experiment (nothing ran), 130 interrupted (run again to continue), 141 the reader
of the output went away (`evoarena status NAME | head -3`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from evoarena import __version__
from evoarena.cli import export, samples, submit
from evoarena.cli.status import add_list_parser, cmd_list
from evoarena.logs import setup as setup_logs
from evoarena.report import build as report
from evoarena.settings import Settings, check_fleet_config, check_task_key
from evoarena.spec.experiment import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evoarena",
        description="evoarena evolves populations of neural networks (GAN generators and discriminators "
                    "in an arena, or networks under a genetic algorithm or a particle swarm) on this "
                    "machine or on a Celery/RabbitMQ fleet.")
    parser.add_argument("--version", action="version", version=f"evoarena {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run an experiment, or continue it where it stopped")
    run.add_argument("experiment", help="experiment YAML file")
    run.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")
    run.add_argument("--inline", action="store_true", help="evaluate in this process instead of a worker pool")
    run.add_argument("--fleet", action="store_true",
                     help="send tasks to Celery workers through $EVOARENA_BROKER_URL (same as executor.kind: celery)")
    run.add_argument("--wait-for-broker", action="store_true",
                     help="--fleet: wait for a broker that does not answer yet (default: stop at once; "
                          "$EVOARENA_BROKER_WAIT=true waits too)")
    run.add_argument("--force", action="store_true",
                     help="run even if the spec's estimated memory passes $EVOARENA_RUN_MAX_MEMORY_MB (spec/limits.py)")

    worker = commands.add_parser("worker", help="a Celery worker of the fleet (shared and direct queues)")
    worker.add_argument("--name", default="evoarena@%h", help="Celery node name (default evoarena@%%h); unique per worker")
    worker.add_argument("--concurrency", type=int, default=1, help="task processes (one per GPU)")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"],
                        help="prefork (default) keeps answering pings while a task runs; solo cannot")
    worker.add_argument("--cache-mb", type=int, help="parent-cache budget per process (default $EVOARENA_CACHE_MB or 512)")
    worker.add_argument("--alive-file", help="touch this file while consuming, for a liveness probe that reads its age "
                                             "(python3 -m evoarena.liveness FILE --max-age S)")
    worker.add_argument("--alive-every", type=float, default=10.0, help="seconds between touches (default 10)")
    worker.add_argument("--wait-for-broker", action="store_true",
                        help="wait for a broker that does not answer yet (default: stop at once; "
                             "$EVOARENA_BROKER_WAIT=true waits too)")

    status = commands.add_parser("status", help="where an experiment stands, from the store")
    status.add_argument("name", help="experiment name (the `name:` in its file)")
    status.add_argument("--store", help="result store URL")
    status.add_argument("--watch", action="store_true", help="refresh until the run is complete or failed (Ctrl-C stops)")
    status.add_argument("--every", type=float, default=2.0, help="--watch: seconds between refreshes (default 2)")

    baseline = commands.add_parser("baseline", help="train the experiment's network with Adam, for comparison")
    baseline.add_argument("experiment", help="experiment YAML file")
    baseline.add_argument("--epochs", type=int, help="override baseline.epochs")
    baseline.add_argument("--store", help="result store URL to record the history in, under the experiment "
                                           "(default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")

    report.add_parser(commands)
    submit.add_parser(commands)
    export.add_parser(commands)
    samples.add_parser(commands)
    add_list_parser(commands)

    args = parser.parse_args(argv)
    settings = Settings.from_env()
    setup_logs()
    try:
        commands = {"run": cmd_run, "status": cmd_status, "baseline": cmd_baseline, "worker": cmd_worker,
                    "submit": submit.cmd_submit, "report": report.cmd_report}
        commands |= {"export": export.cmd_export, "sample": samples.cmd_sample, "list": cmd_list}
        code = commands[args.command](args, settings)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # `evoarena status NAME | head -3`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue from the last complete generation",
              file=sys.stderr)
        return 130


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """`evoarena run`: api.run, then the run's last line. The file is read and checked first, so a bad
    one is refused in one line before torch is loaded (a few MB, not hundreds: test_small_inputs)."""
    spec = load_spec(args.experiment, force=args.force)
    from evoarena import api  # torch and friends load only once the spec is known to be good

    executor = "fleet" if args.fleet else "inline" if args.inline else "local"
    try:
        done = api.run(spec, executor=executor, store=args.store, wait_for_broker=args.wait_for_broker,
                       progress="line")
    except api.RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    final, spec = done.final, done.spec
    if final is None:  # already complete: nothing ran
        return 0
    if spec.algorithm == "arena":
        from evoarena.evolve.population import quality_text

        s = final["stats"]
        print(f"{spec.name}: done; best generator {s['best_member']} (fitness {s['best']:.4g}) "
              f"{quality_text(s['best_quality'])}")
        return 0
    if spec.algorithm == "tune":
        best = final["best"]
        values = ", ".join(f"{k} = {v}" for k, v in best["values"].items())
        print(f"{spec.name}: done; best {spec.tune.objective} {best['objective']:.4g} at step {best['step'] + 1} "
              f"trial {best['trial'] + 1}: {values}")  # counted from 1, as the report and status count
        return 0
    best = final["best"]
    episodes = len(best["metrics"].get("returns", []))
    if spec.problem.kind == "atari":
        meaning = f"mean return over {episodes} episode{'s' * (episodes != 1)}, after {final['stats']['frames_total']:,} frames"
    elif spec.problem.kind == "user":
        meaning = f"as {spec.problem.path} scores it"
    else:
        meaning = f"training cross-entropy {-best['fitness']:.6g}"
    print(f"{spec.name}: done; best fitness {best['fitness']:.6g} ({meaning}), genome {best['genome_id']}")
    return 0


def _broker_problem(args: argparse.Namespace) -> str | None:
    """Why the fleet's broker cannot be used, in one line, or None once it answers (fleet/broker.py);
    told to wait (--wait-for-broker, EVOARENA_BROKER_WAIT), it waits for it instead. Asked before
    torch is loaded: the line comes within seconds."""
    from evoarena.fleet.broker import wait_for_broker
    from evoarena.settings import FleetSettings

    fleet = FleetSettings.from_env()
    return wait_for_broker(fleet.broker_url, args.wait_for_broker or fleet.broker_wait)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if problem := check_fleet_config("worker") or check_task_key():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if problem := _broker_problem(args):  # Celery itself would retry for ever, without a word
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.cache_mb:
        os.environ["EVOARENA_CACHE_MB"] = str(args.cache_mb)
    if settings.metrics_port:
        import tempfile

        # each pool process keeps its counts here, before prometheus_client is first imported
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="evoarena-metrics-")
        from evoarena.metrics import serve_worker

        serve_worker(settings.metrics_port)
    from evoarena.encoding.arithmetic import ArithmeticMismatch, apply
    from evoarena.settings import FleetSettings, WorkerSettings

    try:  # before anything computes; the pool's processes, forked, inherit it (arithmetic.py)
        apply(WorkerSettings.from_env().arithmetic or "fast")
    except (ValueError, ArithmeticMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from evoarena.fleet.app import app, shared_queue

    if args.alive_file:
        from evoarena.liveness import consumer_step

        app.steps["consumer"].add(consumer_step(args.alive_file, args.alive_every))

    # Consumes the shared queue, plus its own direct queue (worker_direct in the app's config).
    # --quiet: no ASCII banner among the JSON lines (fleet/app.py logs one "worker ready" line instead);
    # and every record and warning as a JSON line from here on (Celery's own warnings come before its setup)
    setup_logs(everything=True)
    app.worker_main(["--quiet", "worker", "-n", args.name, "-Q", shared_queue(), "-c", str(args.concurrency),
                     "-P", args.pool, "-l", FleetSettings.from_env().log_level, "--without-gossip", "--without-mingle"])
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from evoarena.cli.status import BadInput, open_experiment, status_lines
    from evoarena.cli.watch import watch

    try:
        store, experiment, spec = open_experiment(args.store or settings.store, args.name)
        with store:
            if args.watch:
                return watch(store, args.name, args.every)
            print("\n".join(status_lines(store, experiment, spec)))
            return 0
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_baseline(args: argparse.Namespace, settings: Settings) -> int:
    """Train with Adam, print each epoch, and record the history in the store as the experiment's
    "adam" baseline (what `evoarena report` draws beside the GA)."""
    from evoarena.problems import PROBLEMS
    from evoarena.store import open_store, redact

    spec = load_spec(args.experiment)
    if spec.algorithm == "arena":
        return _gan_baseline(spec, args.store or settings.store, settings)
    trainable = [kind for kind, problem in PROBLEMS.items() if hasattr(problem, "baseline")]
    if spec.problem.kind not in trainable:
        print(f"error: problem.kind = {spec.problem.kind!r}: `baseline` trains the network of a "
              f"{' or '.join(trainable)} problem with Adam; this one has no gradient baseline", file=sys.stderr)
        return 2
    epochs = args.epochs or spec.baseline.epochs
    problem, network = spec.problem.model_dump(mode="json"), spec.network.model_dump(mode="json")
    print(f"{spec.name}: Adam (lr {spec.baseline.lr}) on the same network, {epochs} epochs")
    started = time.perf_counter()

    def show(r: dict) -> None:
        print(f"epoch {r['epoch']:>4}  train loss {r['train_loss']:.3e}  train acc {r['train_accuracy']:6.1%}  "
              f"val loss {r['val_loss']:.3f}  ({time.perf_counter() - started:.1f}s)", flush=True)

    history = PROBLEMS[spec.problem.kind].baseline(problem, network, epochs, spec.baseline.lr, spec.seed, on_epoch=show)
    store_url = args.store or settings.store
    with open_store(store_url) as store:
        store.put_baseline(spec.name, "adam", {
            "problem": problem, "network": network, "lr": spec.baseline.lr, "epochs": epochs, "seed": spec.seed,
            "steps_per_epoch": problem["train_batches"], "history": history,
            "seconds": time.perf_counter() - started, "created": time.time()})
    print(f"{spec.name}: history recorded as the experiment's Adam baseline in {redact(store_url)}")
    return 0


def _gan_baseline(spec, store_url: str, settings: Settings) -> int:
    """An arena's baseline: ONE generator and ONE discriminator of the founders' architectures and
    meta-parameters, trained as one lineage of the arena is (each round's train_pair chunks, then its
    cross-train steps), measured after each round on metric_samples samples as the match measures the
    arena's generators; recorded as the experiment's "single_gan" baseline."""
    from evoarena.worker.arena_ops import models_dir
    from evoarena.evolve.arena import Arena
    from evoarena.evolve.population import quality_text
    from evoarena.problems.gan_baselines import ARENA_FIELDS, quality_by_round
    from evoarena.store import open_store, redact

    arena, problem = Arena(spec), spec.problem.model_dump(mode="json")
    cross = [spec.arena.cross_train_steps] if spec.arena.cross_train_steps else []
    rounds = [arena.chunks] + [cross + arena.chunks] * (spec.arena.rounds - 1)
    print(f"{spec.name}: a single GAN of the founders' architectures, {spec.arena.rounds} rounds of "
          f"{spec.arena.train_steps} train_pair steps (+ {spec.arena.cross_train_steps} between rounds)")
    started, measured = time.perf_counter(), []
    for row in quality_by_round(problem, arena.founding_arch("gen"), arena.founding_arch("disc"), arena.founding_meta("gen"),
                                rounds, spec.arena.batch_size, spec.seed, models_dir(str(settings.noise_dir))):
        measured.append(row)
        print(f"round {row['round']:>4}  steps {row['steps']:>8}  {quality_text(row['quality'])}  "
              f"({time.perf_counter() - started:.1f}s)", flush=True)
    arena_fields = spec.arena.model_dump(mode="json")
    with open_store(store_url) as store:
        store.put_baseline(spec.name, "single_gan", {
            "problem": problem, "arena": {k: arena_fields[k] for k in ARENA_FIELDS}, "seed": spec.seed,
            "rounds": measured, "seconds": time.perf_counter() - started, "created": time.time()})
    print(f"{spec.name}: quality per round recorded as the experiment's single-GAN baseline in {redact(store_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
