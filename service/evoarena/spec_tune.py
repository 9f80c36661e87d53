"""The meta-parameter search's section of the experiment spec (`tune:`): a GA or a particle swarm
over continuous (and rounded integer) values of an arena spec, each trial one short arena run
(evolve/tune.py). Like spec.py, each field's docstring is its documentation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .evolve.swarm import ACCELERATION, INERTIA
from .spec_arena import ArenaSpec
from .spec_base import SpecModel


class ParameterSpec(SpecModel):
    """One value of the base arena spec that the search sets, and its range."""

    path: str
    """Dotted path in the arena section, e.g. meta.lr, fitness.rac_weight, fitness.virulence, train_steps."""
    low: float
    """Smallest value."""
    high: float
    """Largest value."""
    log: bool = False
    """Search the logarithm (learning rates); needs low > 0."""
    integer: bool = False
    """Round to the nearest integer before the trial runs."""


class TuneSpec(SpecModel):
    """Search the base arena's meta-parameters: each trial runs `base` with one point of `space` applied."""

    search: Literal["ga", "pso"] = "pso"
    """ga: truncation selection and Gaussian mutation of the values; pso: a particle swarm over them."""
    steps: int = Field(ge=1, le=100_000)
    """Generations (ga) or swarm steps (pso); each runs `population` trials."""
    population: int = Field(8, ge=2, le=10_000)
    """Trials per step: the GA's population or the swarm's particles."""
    space: list[ParameterSpec] = Field(min_length=1)
    """The values searched."""
    base: ArenaSpec
    """The arena every trial runs, with the trial's values applied."""
    inertia: float = Field(INERTIA, ge=0, le=10)
    """pso: w."""
    cognitive: float = Field(ACCELERATION, ge=0, le=10)
    """pso: c1."""
    social: float = Field(ACCELERATION, ge=0, le=10)
    """pso: c2."""
    topology: Literal["global", "ring"] = "global"
    """pso: whose best a particle follows."""
    parents: int = Field(2, ge=1, le=10_000)
    """ga: truncation size."""
    sigma: float = Field(0.1, gt=0, le=10)
    """ga: mutation step, in units of each value's range (of its logarithm when log)."""
