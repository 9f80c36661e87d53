"""evoarena from Python: run an experiment, open a stored one, read its steps and its networks.

    import evoarena

    run = evoarena.run("experiments/tiny.yaml", executor="inline")   # what `evoarena run` does
    for step in run.steps():                                          # one plain record per step
        print(step["step"], step["best"])
    net = run.network()                                               # the best network, a torch.nn.Module

    again = evoarena.open("tiny")                                     # a stored run, finished or not

`run` is the one implementation of running an experiment: `evoarena run` calls it (cli/main.py),
so a run started here resumes, refuses and records exactly as one started from the command line.
Its messages (what runs where, where it resumes, the progress) go to `out` (default stdout;
None: silent); a run that cannot start raises RunError with the one line the command line prints.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from evoarena import scheduler
from evoarena.cli import export
from evoarena.cli.samples import mixture_samples
from evoarena.cli.status import BadInput, open_experiment, resume_text, state_text
from evoarena.encoding import nets
from evoarena.encoding.arithmetic import ArithmeticMismatch, apply
from evoarena.fleet.executor import LocalExecutor
from evoarena.lease import ExperimentBusy, MasterLease
from evoarena.logs import ProgressLine
from evoarena.report.build import build_page
from evoarena.settings import FleetSettings, Settings, WorkerSettings, check_fleet_config
from evoarena.spec.experiment import ExperimentSpec, SpecError, load_spec, parse_spec
from evoarena.spec.user_problem import module_of
from evoarena.store import open_store, redact
from evoarena.tasks import Executor
from evoarena.tracking import MlflowTracker, flat, mlflow_uri
from evoarena.worker.inline import InlineExecutor
from evoarena.worker.worker import WorkerConfig

EXECUTORS = ("local", "inline", "fleet")
STDOUT = "stdout"  # `out`'s default: the sys.stdout of the moment of the call (a notebook's, pytest's)


class RunError(Exception):
    """A run that could not start (`code` 2: a bad spec, another master at it, a different spec
    stored under its name; nothing was written) or that failed (`code` 1: its broker does not
    answer, or its infrastructure kept failing; the same call continues it). `str()` is one line."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def run(spec: str | os.PathLike | dict | ExperimentSpec, *, executor: str | Executor = "local",
        store: str | None = None, force: bool = False, wait_for_broker: bool = False,
        progress: str | None = "auto", out: TextIO | str | None = STDOUT) -> Run:
    """Run experiment `spec` (a YAML file's path, its dict, or a parsed ExperimentSpec) to its end,
    or continue it where it stopped, and return it as a Run.

    executor  "local" (spec.executor.workers processes on this machine), "inline" (this process),
              "fleet" (Celery workers through $EVOARENA_BROKER_URL; as executor.kind: celery), or an
              Executor of your own (tasks.Executor), which the caller closes
    store     the result store's URL (default $EVOARENA_STORE or sqlite:///runs/evoarena.db)
    force     run a spec whose estimated memory passes $EVOARENA_RUN_MAX_MEMORY_MB
    progress  "auto": tqdm's bar on a terminal or in Jupyter where tqdm is installed, else
              evoarena's line (one line a step into a file or a pipe); "line": evoarena's line; None: none
    out       where the run's messages and progress go (default: stdout; None: nowhere)
    """
    out = sys.stdout if out == STDOUT else out
    if progress not in ("auto", "line", None):
        raise RunError(f"progress = {progress!r}: 'auto', 'line' or None")
    settings = Settings.from_env()
    spec = _spec(spec, force)
    kind = executor if isinstance(executor, str) else None
    if kind is not None and kind not in EXECUTORS:
        raise RunError(f"executor = {kind!r}: one of {', '.join(EXECUTORS)}, or an Executor")
    fleet = kind == "fleet" or (kind == "local" and spec.executor.kind == "celery")
    store_url = store or settings.store
    if fleet:
        _check_fleet(store, wait_for_broker)
    try:  # EVOARENA_ARITHMETIC overrides the spec's; set before anything computes (encoding/arithmetic.py)
        spec = spec.model_copy(update={"arithmetic": WorkerSettings.from_env().arithmetic or spec.arithmetic})
        apply(spec.arithmetic)
    except (ValueError, ArithmeticMismatch) as exc:
        raise RunError(str(exc)) from None
    say = (lambda line: print(line, file=out, flush=True)) if out is not None else (lambda line: None)
    trusted = WorkerSettings.from_env().trusted_problems
    if spec.problem.kind == "user":  # the workers this run starts itself may import the problem it names
        trusted = (*trusted, module_of(spec.problem.path))
    config = WorkerConfig(store_url, settings.artifacts, str(settings.noise_dir), spec.executor.cache_mb << 20,
                          problem_modules=trusted)
    with ExitStack() as held:  # left in reverse, however the run ends: the executor, the lease, the store
        results = held.enter_context(open_store(store_url))
        done = f"{spec.name}: already complete ({spec.section.describe()}); `evoarena status {spec.name}` shows it"
        try:
            if scheduler.already_complete(spec, results):  # asked before the lease: a rerun writes nothing at all
                say(done)
                return Run(spec, store_url, settings)
            # the lease before anything is written: a master refused for another's run changes nothing
            lease = held.enter_context(MasterLease(results, spec.name, settings.master_heartbeat_s))
            scheduler.register(spec, results)
        except (ExperimentBusy, scheduler.ExperimentMismatch) as exc:
            raise RunError(str(exc)) from None
        if scheduler.finished(spec, results):  # every step stored, the end not recorded: register recorded it
            say(done)
            return Run(spec, store_url, settings)
        if not isinstance(executor, str):
            where = type(executor).__name__
        elif fleet:
            from evoarena.fleet.app import broker_url, make_app  # Celery and the broker, only for a fleet run
            from evoarena.fleet.celery_executor import CeleryExecutor

            executor, where = CeleryExecutor(make_app(), results), f"the fleet at {redact(broker_url())}"
            held.callback(executor.close)
        elif kind == "inline":
            executor, where = InlineExecutor(config), "this process"
            held.callback(executor.close)
        else:
            executor, where = LocalExecutor(config, spec.executor.workers), f"{spec.executor.workers} local workers"
            held.callback(executor.close)
        say(f"{spec.name}: {spec.section.describe()} on {where}; store {redact(store_url)}")
        if (resuming := resume_text(results, spec)) is not None:
            say(f"{spec.name}: {resuming}")
        if settings.metrics_port:
            from evoarena.metrics import serve  # a Prometheus endpoint, only when a port is asked for

            serve(settings.metrics_port)
        on_progress = held.enter_context(_progress(progress, out, settings.progress_every))
        uri = mlflow_uri(spec)
        tracker = MlflowTracker(uri, spec, results) if uri else None
        try:
            final = scheduler.run(spec, results, executor, on_progress=on_progress, lease=lease,
                                  on_state=tracker.step if tracker else None)
        except RuntimeError as exc:
            if tracker:
                tracker.finish(None, failed=True)
            raise RunError(str(exc), code=1) from None
        done = Run(spec, store_url, settings, final)
        if tracker:
            tracker.finish(done.write_results)
    return done


def open(name: str, store: str | None = None) -> Run:  # noqa: A001 (evoarena.open, as the issue names it)
    """Experiment `name` of the store (default $EVOARENA_STORE), finished or still running, as a Run;
    RunError if the store has no such experiment."""
    settings = Settings.from_env()
    store_url = store or settings.store
    try:
        results, _, spec = open_experiment(store_url, name)
    except BadInput as exc:
        raise RunError(str(exc)) from None
    results.close()
    return Run(spec, store_url, settings)


@dataclass
class Run:
    """An experiment in a store: what `evoarena.run` returns and `evoarena.open` opens. Each method
    reads the store when called, so a Run of a running experiment sees its progress."""

    spec: ExperimentSpec
    store_url: str
    settings: Settings = field(repr=False)
    final: dict | None = field(default=None, repr=False)  # the last state, when this Run ran it

    @property
    def name(self) -> str:
        return self.spec.name

    def status(self) -> str:
        """running, complete, "failed: <reason>", or stale (as `evoarena status` says it)."""
        with open_store(self.store_url) as results:
            return state_text(results.get_experiment(self.name))

    def steps(self) -> list[dict]:
        """One record per complete step, oldest first: {"step": its index from 0, then its summary's
        numbers (best, mean, evals_per_s, hit_rate, ...; a nested summary flattened as "a.b")}."""
        with open_store(self.store_url) as results:
            return [{"step": doc["generation"], **_scalars(doc.get("stats", {}))}
                    for doc in results.list_generations(self.name)]

    def to_pandas(self):
        """steps() as a pandas DataFrame (pandas is not a dependency of evoarena: install it)."""
        try:
            import pandas  # optional: only this method needs it
        except ImportError:
            raise ImportError("Run.to_pandas needs pandas (pip install pandas); Run.steps() gives the same "
                              "records without it") from None
        return pandas.DataFrame(self.steps())

    def best(self) -> dict:
        """The best network of the last complete step (an arena's: its best generator): its genome id,
        fitness, role (network or generator), where it was found and, in an arena, its member id."""
        chosen = self._choose()
        return {"genome_id": chosen.genome["id"], "fitness": chosen.fitness, "role": chosen.role,
                "source": chosen.source, "member": chosen.member}

    def network(self, genome_id: str | None = None) -> torch.nn.Module:
        """The best network of the last complete step (or genome / arena member `genome_id`) as a plain
        torch.nn.Module, its weights built from its genome as a worker builds them."""
        chosen = self._choose(genome_id)
        arch, flat = export.build(chosen, self.spec, self.store_url, self.settings)
        return nets.to_module(arch, flat)

    def generator(self, mixture: bool = True) -> torch.nn.Module:
        """An arena's output: the mixture of its final generators (MixtureGenerator), or with
        `mixture=False` (or a run from before mixtures) its best generator alone."""
        if self.spec.algorithm != "arena":
            raise RunError(f"experiment {self.name!r} is a {self.spec.algorithm} run: only an arena has generators")
        if mixture:
            try:
                with open_store(self.store_url) as results:
                    chosen = export.choose_mixture(results, self.spec)
            except BadInput as exc:
                if "stored no mixture" not in str(exc):
                    raise RunError(str(exc)) from None
            else:
                members = export.build_all(chosen.members, self.spec, self.store_url, self.settings)
                return MixtureGenerator(members, chosen.weights)
        return self.network()

    def write_results(self, folder: Path) -> list[Path]:
        """The run's report page and its best network (safetensors, as `evoarena export` writes it)
        in `folder`: what an experiment tracker keeps of it (tracking.py)."""
        page = folder / f"{self.name}.html"
        with open_store(self.store_url) as results:
            page.write_text(build_page(results, self.name, self.settings, self.store_url), encoding="utf-8")
        if self.spec.algorithm == "tune":  # its trials' arenas are not kept: no network
            return [page]
        chosen = self._choose()
        arch, flat = export.build(chosen, self.spec, self.store_url, self.settings)
        network = folder / f"{self.name}-best.safetensors"
        export.write(network, arch, flat, {"experiment": self.name, "genome_id": chosen.genome["id"],
                                           "role": chosen.role, "source": chosen.source})
        return [page, network]

    def _choose(self, genome_id: str | None = None) -> export.Chosen:
        if self.spec.algorithm == "tune":
            raise RunError(f"experiment {self.name!r} is a tune run: its trials' arenas are not kept")
        try:
            with open_store(self.store_url) as results:
                return export.choose(results, self.spec, genome_id)
        except BadInput as exc:
            raise RunError(str(exc)) from None


class MixtureGenerator(torch.nn.Module):
    """A mixture of generators: `sample(n, seed)` draws n samples, each member's share by its weight,
    by the rule `evoarena sample --mixture` and scripts/sample_mixture.py follow (cli/samples.py:
    mixture_samples), so the same seed gives the same samples everywhere."""

    def __init__(self, members: list[tuple[dict, torch.Tensor]], weights: list[float]):
        super().__init__()
        self.archs = [arch for arch, _ in members]
        self.members = torch.nn.ModuleList(nets.to_module(arch, flat) for arch, flat in members)
        self.weights = list(weights)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        flats = [nets.from_module(arch, module) for arch, module in zip(self.archs, self.members)]
        with torch.no_grad():
            samples, _ = mixture_samples(list(zip(self.archs, flats)), self.weights, n, seed)
        return samples

    def forward(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.sample(n, seed)


# --- helpers ------------------------------------------------------------------------------------


def _spec(spec: str | os.PathLike | dict | ExperimentSpec, force: bool) -> ExperimentSpec:
    try:
        if isinstance(spec, ExperimentSpec):
            return spec
        if isinstance(spec, dict):
            return parse_spec(spec)
        return load_spec(Path(spec), force=force)
    except SpecError as exc:
        raise RunError(str(exc)) from None


def _check_fleet(store: str | None, wait_for_broker: bool) -> None:
    """RunError unless a fleet run can start: its settings complete (code 2) and its broker answering
    (code 1; told to wait, it waits). Asked before the store is opened: nothing is touched."""
    given = {"EVOARENA_STORE": store} if store else {}
    if problem := check_fleet_config("master", {**os.environ, **given}):
        raise RunError(problem)
    from evoarena.fleet.broker import wait_for_broker as wait  # only a fleet run asks the broker

    fleet = FleetSettings.from_env()
    if problem := wait(fleet.broker_url, wait_for_broker or fleet.broker_wait):
        raise RunError(problem, code=1)


def _scalars(stats: dict) -> dict:
    """The numbers and strings of a step's summary, a nested dict's under "outer.inner" (tracking.flat)."""
    return {key: value for key, value in flat(stats).items()
            if value is None or isinstance(value, (bool, int, float, str))}


class _Tqdm:
    """scheduler.Progress shown as tqdm's bar (tqdm.auto: a terminal's, or a notebook's widget)."""

    def __init__(self, tqdm, out: TextIO):
        self.tqdm, self.out, self.bar = tqdm, out, None

    def __call__(self, p) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=p.generations, file=self.out, initial=p.generation, unit="step")
        self.bar.n = p.generation + 1
        self.bar.set_postfix_str(p.line[:80], refresh=False)
        self.bar.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


class _Line(ProgressLine):
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(progress: str | None, out: TextIO | None, every: int):
    """A context manager that is the run's on_progress callback (None: no progress)."""
    if progress is None or out is None:
        return _Silent()
    if progress == "auto" and (getattr(out, "isatty", lambda: False)() or "ipykernel" in sys.modules):
        try:  # a bar where one is seen: a terminal, or a notebook (tqdm.auto draws its widget there)
            from tqdm.auto import tqdm  # optional: evoarena's own line where tqdm is not installed
        except ImportError:
            pass
        else:
            return _Tqdm(tqdm, out)
    return _Line(out, every=every)


class _Silent:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        pass

