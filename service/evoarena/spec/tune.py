"""The meta-parameter search's section of the experiment spec (`tune:`): a GA or a particle swarm
over continuous (and rounded integer) values of an arena spec, each trial one short arena run
(evolve/tune.py, trial.py). Like spec/experiment.py, each field's docstring is its documentation.

A parameter names a numeric field of the arena section by its dotted path (`meta.lr`,
`fitness.rac_weight`, `train_steps`). `derive` is the one place a trial's values become an arena
spec: they are written at their paths into the base arena, which the arena's own models then
check, so a value the arena would refuse fails with the path and the value named.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from evoarena.spec.arena import ArenaSpec
from evoarena.spec.base import SpecModel, _field_error
from evoarena.spec.constriction import ACCELERATION, INERTIA

# what a trial measures of the final round's generators (trial.py computes it); higher is better
OBJECTIVES = ("modes_hq", "modes_covered", "modes_covered@20", "high_quality", "reverse_kl")


class DerivedSpecError(ValueError):
    """A trial's values give an arena spec its models refuse; the message names the path and value."""


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
    """Round to the nearest integer (halves up) before the trial runs; low and high must be whole numbers."""


class TuneSpec(SpecModel):
    """Search the base arena's meta-parameters: each trial runs `base` with one point of `space` applied."""

    search: Literal["ga", "pso"] = "pso"
    """ga: truncation selection and Gaussian mutation of the values; pso: a particle swarm over them."""
    steps: int = Field(ge=1, le=100_000)
    """Generations (ga) or swarm steps (pso); each runs `population` trials."""
    population: int = Field(8, ge=2, le=10_000)
    """Trials per step: the GA's children or the swarm's particles."""
    space: list[ParameterSpec] = Field(min_length=1)
    """The values searched."""
    base: ArenaSpec
    """The arena every trial runs (to its last round, with the experiment's seed), with the trial's values applied."""
    objective: Literal["modes_hq", "modes_covered", "modes_covered@20", "high_quality", "reverse_kl"] = "modes_hq"
    """What a trial scores, the final round's best generator against the real modes (trial.py): modes_hq is modes with >= 20 high-quality samples + high-quality share; modes_covered counts modes with >= 1."""
    inertia: float = Field(INERTIA, ge=0, le=10)
    """pso: w."""
    cognitive: float = Field(ACCELERATION, ge=0, le=10)
    """pso: c1."""
    social: float = Field(ACCELERATION, ge=0, le=10)
    """pso: c2."""
    topology: Literal["global", "ring"] = "global"
    """pso: whose best a particle follows."""
    vmax: float = Field(0.5, gt=0, le=1)
    """pso: the largest step per coordinate, in units of each value's range (of its logarithm when log)."""
    parents: int = Field(2, ge=1, le=10_000)
    """ga: truncation size: the best `parents` trials so far (elites carried over) breed the next step."""
    sigma: float = Field(0.1, gt=0, le=10)
    """ga: mutation step, in units of each value's range (of its logarithm when log)."""

    @model_validator(mode="after")
    def _check_space(self) -> TuneSpec:
        seen = set()
        for i, p in enumerate(self.space):
            where = f"space[{i}]"
            problem = path_problem(p.path)
            if problem:
                raise _field_error(f"{where}.path", p.path, problem)
            if p.path in seen:
                raise _field_error(f"{where}.path", p.path, "is searched twice; give each path once")
            seen.add(p.path)
            if not p.low < p.high:
                raise _field_error(f"{where}.high", p.high, f"must be greater than low ({p.low})")
            if p.log and p.low <= 0:
                raise _field_error(f"{where}.low", p.low, "must be greater than 0 with log: true")
            if field_type(p.path) is int and not p.integer:
                raise _field_error(f"{where}.integer", p.integer, f"{p.path} is an integer field: give integer: true")
            if p.integer and not (p.low.is_integer() and p.high.is_integer()):
                raise _field_error(f"{where}.low", [p.low, p.high], "with integer: true, low and high must be whole numbers")
            for bound in ("low", "high"):
                value = getattr(p, bound)
                try:
                    derive(self.base, {p.path: int(value) if p.integer else value})
                except DerivedSpecError as exc:
                    raise _field_error(f"{where}.{bound}", value, f"the arena refuses it: {exc}") from None
        return self

    def describe(self) -> str:
        """What the run is, in a few words."""
        return f"{self.steps} steps of {self.population} trials ({self.search} over {len(self.space)} values of an arena)"


def field_type(path: str) -> type | None:
    """The type declared at dotted `path` of ArenaSpec (int, float, a section...), or None if no such field."""
    node: type = ArenaSpec
    for part in path.split("."):
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        if part not in fields:
            return None
        node = fields[part].annotation
    return node


def path_problem(path: str) -> str | None:
    """Why `path` cannot be searched (not a field of the arena, or not a number), or None."""
    kind = field_type(path)
    if kind is None:
        head, _, _ = path.rpartition(".")
        section = field_type(head) if head else ArenaSpec
        fields = ", ".join(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else ""
        return f"is not a field of the arena section" + (f"; {head or 'arena'} has: {fields}" if fields else "")
    if kind not in (int, float):
        return f"is not a number (declared {getattr(kind, '__name__', kind)}); only int and float fields can be searched"
    return None


def derive(base: ArenaSpec, values: dict[str, float | int]) -> ArenaSpec:
    """`base` with each value written at its dotted path, checked by the arena's own models."""
    data = base.model_dump(mode="json")
    for path, value in values.items():
        *head, leaf = path.split(".")
        node = data
        for part in head:
            node = node[part]
        node[leaf] = value
    try:
        return ArenaSpec.model_validate(data)
    except ValidationError as error:
        e = error.errors()[0]
        path = ".".join(map(str, e["loc"]))
        raise DerivedSpecError(f"{path} = {e['input']!r}: {e['msg']}") from None
