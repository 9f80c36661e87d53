"""The experiment spec: one YAML file describes one experiment, and these models check it.

Each model is one section of the file and each field's docstring is its documentation, so
`ExperimentSpec.model_fields` is the reference for what a YAML file may say. Anything wrong in
a file becomes one `SpecError` line naming the file, the field, the value and what is accepted:

    experiments/bad.yaml: ga.mutation.sigma = -1: must be greater than 0
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from evoarena.settings import SpecLimits
from evoarena.spec.arena import ArenaSpec, GanSpec
from evoarena.spec.base import SpecModel, _field_error
from evoarena.spec.user_problem import BUILT_IN, UserProblemError, check_fields, module_of
from evoarena.spec.pso import PSOSpec
from evoarena.spec.tune import TuneSpec

NAME_MAX_LENGTH = 53
@dataclass(frozen=True)
class Algorithm:
    """What the experiment file and every view say of one algorithm, said once (its section model
    holds the rest, its on_error default included; evolve/ holds what it computes)."""

    length: str  # the field of its section that says how many steps the run has
    unit: str  # what one step of the master is called in views and messages
    problems: tuple[str, ...]  # the problem kinds it runs
    refusal: str  # why another problem kind is refused


# The spec sections that name an algorithm; exactly one (none: an error).
ALGORITHM_TABLE = {
    "ga": Algorithm("generations", "generation", ("memorize", "atari", "user"),
                    "a GA runs the memorize or atari problem; a gan problem needs arena:"),
    "arena": Algorithm("rounds", "step", ("gan",), "an arena needs a gan problem"),
    "pso": Algorithm("steps", "step", ("memorize", "atari", "user"), "pso runs the memorize or atari problem"),
    "tune": Algorithm("steps", "step", ("gan",), "tune searches an arena's meta-parameters: it needs a gan problem"),
}
ALGORITHMS = tuple(ALGORITHM_TABLE)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dns_label_problem(value: str, limit: int) -> str | None:
    """Why `value` cannot be a DNS-1123 label of at most `limit` characters (a Kubernetes name),
    or None when it can. The one check for experiment names and everything `submit` names."""
    if len(value) > limit:
        return f"is {len(value)} characters; at most {limit} are accepted"
    if not _DNS_LABEL.match(value):
        return "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
    return None


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be an experiment name, or None when it can."""
    problem = dns_label_problem(name, NAME_MAX_LENGTH)
    if problem is not None and len(name) > NAME_MAX_LENGTH:
        return problem + " (it becomes an S3 key and a Kubernetes name)"
    return problem


def validate_name(name: str) -> str:
    """Return `name` if it can name an experiment (a DNS-1123 label); raise ValueError if not."""
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(f"experiment name {name!r} {problem}")
    return name


def _check_name(name: str) -> str:
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(problem)  # the field and the value are named by SpecError
    return name


# --- the problem: what is being optimised -------------------------------------------------

Side = Annotated[int, Field(strict=True, ge=1, le=1024)]


class MemorizeSpec(SpecModel):
    """Memorize random labels for a fixed set of random images (seed 003's benchmark)."""

    kind: Literal["memorize"]
    """Which problem this is; `memorize` is the only one so far."""
    image: tuple[Side, Side, Side] = Field((3, 64, 64), strict=False)  # YAML gives a list
    """Image shape as [channels, height, width]; each 1..1024."""
    classes: int = Field(10, ge=2, le=1000)
    """Number of labels an image can have."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Images per batch."""
    train_batches: int = Field(16, ge=1, le=10_000)
    """Batches of images to memorize; fitness is measured on these."""
    val_batches: int = Field(2, ge=0, le=10_000)
    """Batches of fresh random images, to show that nothing but memorization happens."""
    data_seed: int = Field(0, ge=0)
    """Seed of the random images and labels."""
    fitness: Literal["cross_entropy", "memorized", "memorized_margin"] = "cross_entropy"
    """cross_entropy: minus the mean training cross-entropy; memorized: training points whose argmax is their label; memorized_margin: that count plus a tie-break in (0, 1) from the mean margin (problems/memorize.py)."""


def ale_games() -> list[str] | None:
    """The games ale-py offers, as `problem.game` names them; None where ale-py is not installed
    (the light submit install: the master and the workers check the game again)."""
    try:
        import ale_py
        import gymnasium as gym
    except ImportError:
        return None
    gym.register_envs(ale_py)
    return sorted(k[len("ALE/") : -len("-v5")] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))


def _check_game(game: str) -> str:
    games = ale_games()
    if games is not None and game not in games:
        raise ValueError(f"not a game of ale-py; accepted: {', '.join(games)}")
    return game


class AtariSpec(SpecModel):
    """An Atari game on ale-py, preprocessed as DQN and Such et al. 2017 did (problems/atari.py); fitness = episode return."""

    kind: Literal["atari"]
    """Which problem this is."""
    game: Annotated[str, AfterValidator(_check_game)] = "Frostbite"
    """The ALE game, as gymnasium names it after `ALE/` (Frostbite, Pong, ...)."""
    episodes: int = Field(1, ge=1, le=1000)
    """Episodes each individual plays per generation; its fitness is their mean return (the paper: 1)."""
    max_episode_frames: int = Field(18_000, ge=100, le=1_000_000)
    """Episode cap in emulator frames (18,000 = DQN's five minutes at 60 frames/s)."""
    noop_max: int = Field(30, ge=0, le=1000)
    """A random number of no-op frames, 1..noop_max, starts each episode (0: none)."""
    frame_skip: int = Field(4, ge=1, le=16)
    """Emulator frames per action; the observation is the max of the last two."""
    sticky: float = Field(0.0, ge=0, le=1)
    """Probability that the emulator repeats the previous action (0: deterministic, as in the paper)."""
    episode_seed: int = Field(0, ge=0)
    """Seed from which every task's episode seeds are derived (with the generation and the genome id)."""


class UserProblemSpec(SpecModel):
    """A problem of your own (spec/user_problem.py). The file writes `kind: "package.module:Name"`
    and the problem's own fields beside it; the spec holds them as `path` and `fields`."""

    kind: Literal["user"]
    """`user`: the form the spec stores a problem named by import path in."""
    path: str
    """"package.module:Name": the problem's import path (problems/__init__.py says what it offers)."""
    fields: dict[str, Any] = Field(default_factory=dict)
    """The problem's own fields, checked by its `Spec` model where it has one."""

    @model_validator(mode="after")
    def _importable(self) -> UserProblemSpec:
        try:
            module_of(self.path)
            check_fields(self.path, dict(self.fields))
        except UserProblemError as exc:
            raise _field_error("kind", self.path, str(exc)) from None
        return self


ProblemSpec = Annotated[Union[MemorizeSpec, AtariSpec, GanSpec, UserProblemSpec], Field(discriminator="kind")]


def _user_problem(problem: Any) -> Any:
    """A problem written by import path (`kind: "pkg.mod:Name"`, its fields beside) as the spec holds
    it: `{kind: user, path, fields}`; any other problem as it is."""
    if not isinstance(problem, dict) or problem.get("kind") in (*BUILT_IN, "user", None):
        return problem
    if not isinstance(problem["kind"], str) or ":" not in problem["kind"]:
        return problem  # the union refuses it, naming the kinds it accepts
    return {"kind": "user", "path": problem["kind"], "fields": {k: v for k, v in problem.items() if k != "kind"}}


# --- the network that the genomes encode --------------------------------------------------


class ConvSpec(SpecModel):
    """One convolution (no padding) followed by a ReLU."""

    channels: int = Field(ge=1, le=4096)
    """Output channels."""
    kernel: int = Field(ge=1, le=64)
    """Kernel height and width."""
    stride: int = Field(1, ge=1, le=64)
    """Step between kernel positions, in both directions."""


def _seed_003_convs() -> list[ConvSpec]:
    return [
        ConvSpec(channels=32, kernel=8, stride=4),
        ConvSpec(channels=64, kernel=4, stride=2),
        ConvSpec(channels=64, kernel=3, stride=1),
    ]


class NetworkSpec(SpecModel):
    """Convolutions, a flatten, hidden linear layers, then a linear layer to the classes."""

    convs: list[ConvSpec] = Field(default_factory=_seed_003_convs)
    """Convolution stack, applied in order; the default is seed 003's."""
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = [512]
    """Widths of the hidden linear layers after the flatten; each 1..65536."""


def conv_shapes(image: tuple[int, int, int], convs: list[ConvSpec]) -> list[tuple[int, int, int]]:
    """The (channels, height, width) entering the stack and leaving each conv, in order.

    A size below 1 means the stack does not fit the image; a validated spec never has one.
    """
    shapes = [tuple(image)]
    for conv in convs:
        _, height, width = shapes[-1]
        shapes.append(
            (
                conv.channels,
                (height - conv.kernel) // conv.stride + 1,
                (width - conv.kernel) // conv.stride + 1,
            )
        )
    return shapes


def parameter_count(image: tuple[int, int, int], classes: int, network: NetworkSpec) -> int:
    """Number of weights and biases in the network built for this image shape and class count."""
    shapes = conv_shapes(image, network.convs)
    count = 0
    for (in_channels, _, _), conv in zip(shapes, network.convs):
        count += in_channels * conv.channels * conv.kernel**2 + conv.channels
    channels, height, width = shapes[-1]
    widths = [channels * height * width, *network.hidden, classes]
    for fan_in, fan_out in zip(widths, widths[1:]):
        count += fan_in * fan_out + fan_out
    return count


# --- the genetic algorithm -----------------------------------------------------------------


class MutationSpec(SpecModel):
    """How a child's weights are perturbed from its parent's.

    gaussian: Gaussian noise on every parameter. layer: Gaussian noise on one randomly chosen
    layer. norm: norm-preserving; each tensor keeps its norm. adaptive: self-adaptive; each
    parameter has a log-rate that mutates too, with standard deviation `tau`.
    Seed 003's other ideas are options on top (genome.py's docstring defines their deltas):
    momentum, a self-adaptive sigma (self_adapt), one sigma per layer (per_layer), and mutating
    the layer whose sigma is largest (layer_choice).
    """

    kind: Literal["gaussian", "layer", "norm", "adaptive"] = "gaussian"
    """Mutation operator: gaussian, layer, norm or adaptive (see above)."""
    sigma: float = Field(0.02, gt=0, le=10)
    """Standard deviation of the Gaussian noise added to the weights (with self_adapt: the founders' children's starting sigma)."""
    tau: float = Field(0.1, ge=0, le=10)
    """Standard deviation of the log-rate mutation; used by `adaptive` only."""
    momentum: float = Field(0.0, ge=0, le=10)
    """Weight w with which a child repeats its parent's last fresh noise beside its own (kind gaussian only); 0 = off."""
    self_adapt: float = Field(0.0, ge=0, le=10)
    """tau' of the self-adaptive sigma: a child's sigma is its parent's times exp(tau' * N(0, 1)); 0 = every child uses `sigma`."""
    per_layer: bool = False
    """With self_adapt: one sigma per layer, each adapted on its own (kind gaussian or layer)."""
    layer_choice: Literal["random", "largest_sigma"] = "random"
    """kind layer: the layer a child mutates, drawn at random or the one with the largest sigma (needs per_layer)."""

    @model_validator(mode="after")
    def _check_options(self) -> MutationSpec:
        if self.momentum > 0 and self.kind != "gaussian":
            raise _field_error("momentum", self.momentum, f"needs kind gaussian; kind is {self.kind}")
        if self.self_adapt > 0 and self.kind not in ("gaussian", "layer"):
            raise _field_error("self_adapt", self.self_adapt, f"needs kind gaussian or layer; kind is {self.kind}")
        if self.per_layer and self.self_adapt == 0:
            raise _field_error("per_layer", self.per_layer, "needs self_adapt > 0 (the per-layer sigmas adapt)")
        if self.per_layer and self.momentum > 0:
            raise _field_error("per_layer", self.per_layer, "cannot be combined with momentum")
        if self.layer_choice == "largest_sigma" and not (self.kind == "layer" and self.per_layer):
            raise _field_error("layer_choice", self.layer_choice, "largest_sigma needs kind layer and per_layer: true")
        return self


class GASpec(SpecModel):
    """Truncation selection: the best `parents` each have `children_per_parent` mutated children."""

    generations: int = Field(ge=1, le=1_000_000)
    """Generations to run, generation 0 (the founders) included."""
    parents: int = Field(1, ge=1, le=10_000)
    """Truncation size T: how many of the best individuals reproduce."""
    children_per_parent: int = Field(16, ge=1, le=100_000)
    """Children each parent has per generation (selection = per_parent)."""
    selection: Literal["per_parent", "uniform"] = "per_parent"
    """per_parent: each of the T parents has `children_per_parent` children; uniform (the paper's): each of `children` children has a parent drawn uniformly from the T."""
    children: int | None = Field(None, ge=1, le=1_000_000)
    """Children per generation with selection = uniform (the paper: population N minus its one elite)."""
    elites: int = Field(1, ge=0, le=10_000)
    """Best individuals carried over unchanged (and re-evaluated); at most `parents`."""
    elite_candidates: int = Field(0, ge=0, le=10_000)
    """For noisy fitness: the best C of each generation are re-evaluated on `elite_episodes` more episodes and the `elites` best means carried over; 0 = elites are the E fittest."""
    elite_episodes: int = Field(30, ge=1, le=1000)
    """Episodes each elite candidate plays in its re-evaluation (the paper: 30)."""
    frame_budget: int | None = Field(None, ge=1)
    """Stop once this many emulator frames have been played in all (atari); the run also stops after `generations`."""
    mutation: MutationSpec = Field(default_factory=MutationSpec)
    """How children are mutated."""
    crossover_rate: float = Field(0.0, ge=0, le=1)
    """Probability that a child is a one-point crossover of two distinct parents, then mutated."""
    initial_population: int | None = Field(None, ge=1)
    """Size of generation 0; when unset, `population`."""
    on_error: Literal["skip", "stop"] = "skip"
    """A failed evaluation: skip (recorded, never selected, the run goes on) or stop the run."""
    checkpoint_every: int = Field(0, ge=0)
    """Every N generations, save every parent's weights and rebase descendants on them (short task messages); 0 = never."""
    eval_group: int = Field(1, ge=1, le=1024)
    """Children of one parent sent as one task and scored in one batched pass (batched.py); 1 = one task each. A worker splits a group whose stacked weights would pass half its cache budget."""

    @property
    def children_per_generation(self) -> int:
        """Children born per generation: `children` (uniform) or parents x children_per_parent."""
        return self.children if self.selection == "uniform" else self.parents * self.children_per_parent

    @property
    def population(self) -> int:
        """Individuals evaluated per generation after generation 0: the children plus the elites
        (with elite candidates: plus the candidates, re-evaluated)."""
        return self.children_per_generation + (self.elite_candidates or self.elites)

    @property
    def generation_zero_size(self) -> int:
        """Individuals drawn at random for generation 0."""
        return self.initial_population or self.population

    @model_validator(mode="after")
    def _check_counts(self) -> GASpec:
        if self.elites > self.parents:
            raise _field_error(
                "elites", self.elites, f"must be at most ga.parents ({self.parents})"
            )
        if self.selection == "uniform" and self.children is None:
            raise _field_error("children", None, "selection = uniform needs the number of children per generation")
        if self.selection == "per_parent" and self.children is not None:
            raise _field_error("children", self.children, "is for selection = uniform; per_parent uses children_per_parent")
        if self.elite_candidates and not self.elites <= self.elite_candidates:
            raise _field_error("elites", self.elites, f"must be at most ga.elite_candidates ({self.elite_candidates})")
        if self.checkpoint_every and (self.mutation.momentum > 0 or self.mutation.self_adapt > 0):
            raise _field_error("checkpoint_every", self.checkpoint_every, "must be 0 with mutation.momentum or "
                               "mutation.self_adapt: a rebase drops the deltas a child's mutation reads")
        if self.crossover_rate > 0 and self.parents < 2:
            raise _field_error(
                "crossover_rate",
                self.crossover_rate,
                f"needs ga.parents >= 2 to cross distinct parents; ga.parents is {self.parents}",
            )
        return self


# --- infrastructure -------------------------------------------------------------------------

    def describe(self) -> str:
        """What the run is, in a few words."""
        return f"{self.generations} generations of {self.population}"


class NoiseSpec(SpecModel):
    """The shared table of Gaussian noise that compact genomes index into."""

    seed: int = Field(1234, ge=0)
    """Seed the table is generated from; every worker generates the same table."""
    size: int = Field(2**24, ge=2**16, le=2**31)
    """Number of float32 entries; at least twice the network's parameter count."""


class ExecutorSpec(SpecModel):
    """Where individuals are evaluated."""

    kind: Literal["local", "celery"] = "local"
    """local: worker processes on this machine; celery: tasks on a fleet."""
    workers: int = Field(2, ge=1, le=1024)
    """Number of workers evaluating individuals in parallel."""
    cache_mb: int = Field(512, ge=1, le=1_000_000)
    """Memory each worker may use to cache materialized parents, in MiB."""


class BaselineSpec(SpecModel):
    """The gradient-descent baseline the GA is compared with."""

    epochs: int = Field(100, ge=1, le=100_000)
    """Passes over the training batches."""
    lr: float = Field(1e-3, gt=0, le=10)
    """Learning rate."""


class MlflowSpec(SpecModel):
    """Where the master logs the run in MLflow (tracking.py)."""

    uri: str = ""
    """The tracking server's URI; empty: $MLFLOW_TRACKING_URI."""
    experiment: str = "evoarena"
    """The MLflow experiment the run is logged under (one MLflow run per evoarena experiment)."""


class TrackingSpec(SpecModel):
    """Experiment trackers the master logs the run to; none by default (MLFLOW_TRACKING_URI also
    turns MLflow on)."""

    mlflow: MlflowSpec | None = None
    """MLflow: `{uri: ..., experiment: ...}`; absent: MLflow only where MLFLOW_TRACKING_URI is set."""


class ExperimentSpec(SpecModel):
    """One experiment: the problem, the network, the algorithm and where it runs."""

    name: Annotated[str, AfterValidator(_check_name)]
    """A DNS-1123 label of at most 53 characters: it becomes an S3 key and a Kubernetes name."""
    seed: int = Field(0, ge=0)
    """Seed of the scheduler's choices (which parents, which noise offsets)."""
    problem: ProblemSpec = MemorizeSpec(kind="memorize")
    """What is being optimised; `kind` picks the problem."""
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    """The network each genome encodes the weights of."""
    ga: GASpec | None = None
    """The genetic algorithm (GA experiments; exactly one of `ga` and `arena`)."""
    arena: ArenaSpec | None = None
    """The GAN arena (arena experiments, with a `gan` problem)."""
    pso: PSOSpec | None = None
    """Particle swarm optimisation of the network's weights (a memorize or atari problem)."""
    tune: TuneSpec | None = None
    """A search (GA or PSO) over the meta-parameters of an arena (a `gan` problem); each trial is a short arena run."""
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    """The shared noise table."""
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    """Where individuals are evaluated."""
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    """The gradient-descent baseline."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking (MLflow): the master logs the spec, every step's summary and the results."""
    arithmetic: Literal["fast", "reproducible"] = "fast"
    """CPU arithmetic of every process of the run: fast (each CPU's fastest kernels; the same bits run to run on one machine) or reproducible (the same bits on every x86-64 CPU with AVX2, Intel or AMD; CPU workers only; slower: docs/ARCHITECTURE.md); EVOARENA_ARITHMETIC overrides it."""
    description: str = ""
    """Free text for people reading the results."""

    @model_validator(mode="before")
    @classmethod
    def _problem_by_import_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and "problem" in data:
            return {**data, "problem": _user_problem(data["problem"])}
        return data

    @property
    def algorithm(self) -> str:
        """Which algorithm runs this experiment: "ga", "arena", "pso" or "tune"."""
        given = [name for name in ALGORITHMS if getattr(self, name) is not None]
        return given[0] if given else "ga"

    @property
    def section(self) -> GASpec | ArenaSpec | PSOSpec | TuneSpec:
        """The section of the algorithm that runs this experiment."""
        return getattr(self, self.algorithm)

    @property
    def length_field(self) -> str:
        """The field that says how many steps the run has: ga.generations, arena.rounds, pso.steps, tune.steps."""
        return f"{self.algorithm}.{ALGORITHM_TABLE[self.algorithm].length}"

    @property
    def step_unit(self) -> str:
        """What one step of the master is called: a GA's generation; an arena's, a swarm's or a search's step."""
        return ALGORITHM_TABLE[self.algorithm].unit

    @property
    def steps_wanted(self) -> int:
        """Generations (GA), rounds (arena) or steps (pso, tune) asked for."""
        return getattr(self.section, ALGORITHM_TABLE[self.algorithm].length)

    @model_validator(mode="after")
    def _check_algorithm(self) -> ExperimentSpec:
        given = [name for name in ALGORITHMS if getattr(self, name) is not None]
        if len(given) > 1:
            raise _field_error(given[1], "{...}", f"give one algorithm section of {', '.join(ALGORITHMS)}; "
                               f"this file gives {' and '.join(given)}")
        for name in given:
            if self.problem.kind not in ALGORITHM_TABLE[name].problems:
                raise _field_error("problem.kind", self.problem.kind, ALGORITHM_TABLE[name].refusal)
        if self.tune is not None and self.problem.data.kind not in ("ring", "grid"):
            raise _field_error("problem.data.kind", self.problem.data.kind, "tune's objectives (trial.py) count a "
                               "mixture's modes: ring or grid")
        if self.ga is not None and self.problem.kind != "atari":
            for name in ("elite_candidates", "frame_budget"):
                if getattr(self.ga, name):
                    raise _field_error(f"ga.{name}", getattr(self.ga, name),
                                       f"is for a problem with episodes (atari); problem.kind is {self.problem.kind}")
        return self

    @model_validator(mode="after")
    def _check_network_fits(self) -> ExperimentSpec:
        if self.problem.kind not in ("memorize", "atari"):
            return self
        image = self.problem.image if self.problem.kind == "memorize" else (4, 84, 84)  # atari: 4 stacked 84x84 frames
        shapes = conv_shapes(image, self.network.convs)
        for index, (conv, (_, height, width)) in enumerate(zip(self.network.convs, shapes)):
            if conv.kernel > min(height, width):
                raise _field_error(
                    f"network.convs[{index}].kernel",
                    conv.kernel,
                    f"does not fit the {height}x{width} input this conv gets from a "
                    f"{'x'.join(map(str, image))} image; use a smaller kernel or a larger image",
                )
        outputs = self.problem.classes if self.problem.kind == "memorize" else 18  # atari: at most 18 actions
        needed = 2 * parameter_count(image, outputs, self.network)
        if self.noise.size < needed:
            raise _field_error(
                "noise.size",
                self.noise.size,
                f"must be at least 2x the network's {needed // 2} parameters ({needed})",
            )
        return self


# --- loading -------------------------------------------------------------------------------


class SpecError(Exception):
    """An experiment spec that cannot be used; `str()` is one line: file, field, value and why."""

    def __init__(self, source: str, field: str, reason: str, value: str | None = None):
        self.source = source
        """The file (or `<spec>`) the spec came from."""
        self.field = field
        """Where the bad field is, like `network.convs[1].kernel`; empty for the whole file."""
        self.reason = reason
        """What is wrong and what would be accepted."""
        self.value = value
        """The offending value as Python shows it, when there is one."""
        super().__init__(source, field, reason, value)

    def __str__(self) -> str:
        where = self.field + (f" = {self.value}" if self.value is not None else "")
        if not where:
            return f"{self.source}: {self.reason}"
        return f"{self.source}: {where}: {self.reason}"


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    """Validate an already-parsed spec (the YAML file's top-level mapping)."""
    if not isinstance(data, dict):
        found = "nothing (empty file)" if data is None else type(data).__name__
        raise SpecError(source, "", f"the top level must be a mapping of fields, got {found}")
    if not any(name in data for name in ALGORITHMS):
        raise SpecError(source, "ga", "required field missing (or another algorithm's section: "
                        f"{', '.join(ALGORITHMS[1:])})")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as error:
        raise _to_spec_error(source, error.errors()[0]) from None


def load_spec(path: str | os.PathLike, *, force: bool = False, limits: SpecLimits | None = None) -> ExperimentSpec:
    """Read and validate an experiment YAML file; every problem is raised as a SpecError.

    Small inputs stay small: a file over `limits.spec_max_bytes` is refused before it is read, a
    file whose aliases would expand past `limits.spec_max_values` values before anything is built
    from it, and a run whose estimated memory passes `limits.run_max_memory_mb` (spec/limits.py)
    before it starts, unless `force`. `limits` defaults to the environment's (settings.SpecLimits)."""
    source = str(path)
    try:
        limits = limits or SpecLimits.from_env()
    except ValueError as error:  # a limit set to something that is not one
        raise SpecError(source, "", str(error)) from None
    raw = _read_at_most(path, limits.spec_max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(source, "", f"not a UTF-8 text file (byte {error.start}: {error.object[error.start]:#04x}); "
                        "an experiment file is YAML text") from None
    spec = parse_spec(_parse_yaml(text, source, limits), source=source)
    if not force and limits.run_max_memory_mb:
        from evoarena.spec.limits import memory_problem  # it reads this module's models

        problem = memory_problem(spec, limits.run_max_memory_mb << 20)
        if problem is not None:
            field, value, reason = problem
            raise SpecError(source, field, f"{reason} (EVOARENA_RUN_MAX_MEMORY_MB={limits.run_max_memory_mb}; "
                            "`evoarena run --force` skips this check)", None if value is None else _show(value))
    return spec


def _read_at_most(path: str | os.PathLike, limit: int) -> bytes:
    """The file's bytes; a SpecError, before reading it, for a file over `limit` bytes."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise SpecError(str(path), "", f"the file is {size:,} bytes; at most {limit:,} are accepted "
                                "(EVOARENA_SPEC_MAX_BYTES; an experiment file is a few KB)")
            # a pipe or a device tells no size (0): read one byte past the limit, to know
            raw = file.read(size + 1 if size else limit + 1)
    except FileNotFoundError:
        raise SpecError(str(path), "", "file not found") from None
    except OSError as error:
        raise SpecError(str(path), "", f"cannot read the file: {error.strerror}") from None
    if len(raw) > limit:
        raise SpecError(str(path), "", f"the file is more than {limit:,} bytes; at most {limit:,} are accepted "
                        "(EVOARENA_SPEC_MAX_BYTES; an experiment file is a few KB)")
    return raw


def _parse_yaml(text: str, source: str, limits: SpecLimits) -> Any:
    """yaml.safe_load, after counting what the document would hold with its aliases expanded.

    PyYAML builds an alias as a second reference to one object, so a 390-byte "billion laughs"
    loads in a moment; it is everything that walks the result afterwards (validation, an error
    message) that meets a billion values. So the composed node graph is measured first, each
    node once (`_expanded`), and a document that is too big, or refers to itself, is refused
    before any Python object is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values, characters = _expanded(node, source, limits.spec_max_values, {}, set())
        if values > limits.spec_max_values:
            raise SpecError(source, "", f"with its aliases expanded the file holds more than {limits.spec_max_values:,} "
                            "values; at most that many are accepted (EVOARENA_SPEC_MAX_VALUES)")
        if characters > limits.spec_max_bytes:
            raise SpecError(source, "", f"with its aliases expanded the file holds {characters:,} characters of text; "
                            f"at most {limits.spec_max_bytes:,} are accepted (EVOARENA_SPEC_MAX_BYTES)")
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SpecError(source, "", _describe_yaml_error(error)) from None
    except RecursionError:  # PyYAML composes recursively: thousands of levels stop it before _expanded
        raise SpecError(source, "", f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as error:  # int() of a number longer than Python converts (4300 digits)
        raise SpecError(source, "", f"invalid YAML: {str(error).split(';')[0]}") from None
    finally:
        loader.dispose()


MAX_DEPTH = 64
"""Most levels of lists and mappings inside one another in an experiment file; a real one has a few."""


def _expanded(node: yaml.Node, source: str, bound: int, seen: dict, inside: set, depth: int = 0) -> tuple[int, int]:
    """(values, characters of text) in `node` with every alias expanded. Each distinct node is
    counted once (`seen`), so the work is the size of the file, not of the expansion, and counting
    stops once past `bound` values. A node inside itself (`&a [*a]`) or nested too deep is an error."""
    if id(node) in seen:
        return seen[id(node)]
    if id(node) in inside:
        mark = node.start_mark
        raise SpecError(source, "", f"invalid YAML: the list or mapping at line {mark.line + 1}, column "
                        f"{mark.column + 1} holds an alias to itself")
    if depth > MAX_DEPTH:
        raise SpecError(source, "", f"invalid YAML: nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.ScalarNode):
        return 1, len(node.value)
    inside.add(id(node))
    children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
    values, characters = 1, 0
    for child in children:
        v, c = _expanded(child, source, bound, seen, inside, depth + 1)
        values, characters = values + v, characters + c
        if values > bound:
            break
    inside.discard(id(node))
    seen[id(node)] = (values, characters)
    return values, characters


def spec_to_dict(spec: ExperimentSpec) -> dict:
    """The spec as plain JSON-safe data, every default written out; `parse_spec` reads it back."""
    return spec.model_dump(mode="json")


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return " ".join(f"invalid YAML: {where}{problem}".split())


# --- turning pydantic's errors into one line a person can act on ----------------------------


def _to_spec_error(source: str, error: dict) -> SpecError:
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    path, node = _locate(loc)
    value = _show(error["input"])

    if kind == "spec_field":  # raised by a model_validator above, relative to its model
        field = f"{path}.{ctx['field']}" if path else ctx["field"]
        return SpecError(source, field, ctx["reason"], _show(ctx["value"]))
    if kind == "extra_forbidden":
        _, owner = _locate(loc[:-1])
        accepted = ", ".join(owner.model_fields) if _is_model(owner) else "see the spec models"
        return SpecError(source, path, f"unknown field; accepted: {accepted}")
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a tuple with too few items
        container_path, container = _locate(loc[:-1])
        reason = f"must be a list of {len(get_args(container))} items"
        return SpecError(source, container_path, reason, value)
    if kind == "tuple_type":
        return SpecError(source, path, f"must be a list of {len(get_args(node))} items", value)
    if kind == "missing":
        return SpecError(source, path, "required field missing")
    if kind == "union_tag_not_found":
        tags = ", ".join(repr(tag) for tag in _tags(node))
        return SpecError(source, f"{path}.kind", f"required field missing; accepted: {tags}")
    if kind == "union_tag_invalid":
        return SpecError(
            source, f"{path}.kind", f"must be one of {ctx['expected_tags']}", _show(ctx["tag"])
        )
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        fields = ", ".join(node.model_fields) if _is_model(node) else ""
        reason = f"must be a mapping with fields: {fields}" if fields else "must be a mapping"
        return SpecError(source, path, reason, value)
    if kind == "literal_error":
        return SpecError(source, path, f"must be one of {ctx['expected']}", value)
    return SpecError(source, path, _reword(error["msg"]), value)


def _locate(loc: tuple) -> tuple[str, Any]:
    """Pydantic's error location as a user would write it (`network.convs[1].kernel`), and the
    type declared there (None when the location is not a declared field)."""
    path, node, next_is_tag = "", ExperimentSpec, False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            args = get_args(node)
            if get_origin(node) is tuple:
                node = args[part] if part < len(args) else None
            else:
                node = args[0] if args else None
        elif next_is_tag:  # pydantic names the union member by its tag; the user did not write it
            node = next((member for member in _members(node) if part in _tags(member)), None)
            next_is_tag = False
        else:
            path = f"{path}.{part}" if path else part
            field = node.model_fields.get(part) if _is_model(node) else None
            node = _optional_of(field.annotation) if field else None
            next_is_tag = field is not None and field.discriminator is not None
    return path, node


def _optional_of(node: Any) -> Any:
    """`X` for an optional field declared `X | None`, else the declaration itself."""
    members = [m for m in _members(node) if m is not type(None)]
    return members[0] if len(members) == 1 and len(_members(node)) == 2 else node


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _members(node: Any) -> tuple:
    return get_args(node) if get_origin(node) in (Union, UnionType) else (node,)


def _tags(node: Any) -> list[str]:
    """The `kind` values that select each member of a discriminated union."""
    return [
        tag
        for member in _members(node)
        if _is_model(member) and "kind" in member.model_fields
        for tag in get_args(member.model_fields["kind"].annotation)
    ]


def _show(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters; only about `limit` characters of it are ever built,
    however large the value (a list of a million items costs as much as a short one)."""
    pieces, length = [], 0
    for piece in _repr_pieces(value, limit + 1):
        pieces.append(piece)
        length += len(piece)
        if length > limit:
            break
    text = "".join(pieces)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _repr_pieces(value: Any, budget: int) -> Iterator[str]:
    """repr(value) in order, piece by piece, for lists, tuples, dicts and strings (what YAML and
    JSON give); a string piece is cut at `budget` characters, which is as much as anyone reads."""
    if isinstance(value, (list, tuple)):
        brackets = "[]" if isinstance(value, list) else "()"
        yield brackets[0]
        for index, item in enumerate(value):
            yield ", " if index else ""
            yield from _repr_pieces(item, budget)
        yield ("," if isinstance(value, tuple) and len(value) == 1 else "") + brackets[1]
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield ", " if index else ""
            yield from _repr_pieces(key, budget)
            yield ": "
            yield from _repr_pieces(item, budget)
        yield "}"
    elif isinstance(value, str) and len(value) > budget:
        yield repr(value[:budget])[:-1]  # the closing quote would lie: the text goes on
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * budget:
        yield f"<an integer of {value.bit_length():,} bits>"  # repr would write every digit
    else:
        yield repr(value)


def _reword(message: str) -> str:
    """Pydantic's message, reworded to follow `field = value:`."""
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace(" after validation", "")
    return re.sub(r"^(Input|String|Tuple|List|Dictionary|Value) should", "must", message)
