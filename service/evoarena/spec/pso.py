"""The particle swarm's section of the experiment spec (`pso:`): PSO over a network's weights,
each particle a point in the span of K noise-table directions (evolve/pso.py says why). Like
spec/experiment.py, each field's docstring is its documentation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from evoarena.spec.base import SpecModel, _field_error
from evoarena.spec.constriction import ACCELERATION, INERTIA

SWARM_NUMBERS = 1 << 16
"""Most particles x directions: each stored step holds four such arrays (positions, velocities,
personal bests, the positions evaluated), about 20 bytes a number in JSON, so a step document stays
near 5 MB, under MongoDB's 16 MB per document."""


class PSOSpec(SpecModel):
    """Particle swarm optimisation of the network's weights (Kennedy and Eberhart; Clerc and Kennedy's constriction)."""

    steps: int = Field(ge=1, le=1_000_000)
    """Swarm steps to run; each step evaluates every particle once."""
    particles: int = Field(32, ge=2, le=100_000)
    """Number of particles."""
    directions: int = Field(64, ge=1, le=1024)
    """K: a particle is a coefficient vector over K fixed noise-table directions (the task message grows with K)."""
    scale: float = Field(0.01, gt=0, le=10)
    """The weights are the founder's plus scale * sum_k c_k * direction_k: a coefficient of 1 moves each weight by `scale` noise units."""
    bound: float = Field(1.0, gt=0, le=1e6)
    """Coefficients start uniform in [-bound, bound] and stay there."""
    vmax: float = Field(1.0, gt=0, le=1e6)
    """Velocity clamp: no coefficient moves more than this in one step."""
    inertia: float = Field(INERTIA, ge=0, le=10)
    """w, the share of its velocity a particle keeps."""
    cognitive: float = Field(ACCELERATION, ge=0, le=10)
    """c1, the pull towards the particle's own best."""
    social: float = Field(ACCELERATION, ge=0, le=10)
    """c2, the pull towards the best of its neighbourhood."""
    topology: Literal["global", "ring"] = "global"
    """global: every particle follows the swarm's best; ring: the best of its `neighbours` on each side."""
    neighbours: int = Field(1, ge=1, le=1000)
    """ring: neighbours on each side."""
    on_error: Literal["skip", "stop"] = "skip"
    """A failed evaluation: skip (the particle keeps its old best and moves on) or stop the run."""

    @model_validator(mode="after")
    def _check_swarm_fits(self) -> PSOSpec:
        if self.particles * self.directions > SWARM_NUMBERS:
            raise _field_error("particles", self.particles,
                               f"particles x directions = {self.particles} x {self.directions} = "
                               f"{self.particles * self.directions}; at most {SWARM_NUMBERS} (a step's stored swarm "
                               "must fit one document)")
        return self

    def describe(self) -> str:
        """What the run is, in a few words."""
        return f"{self.steps} steps of {self.particles} particles ({self.directions} directions)"
