"""The base of every spec section, shared by spec/experiment.py and spec/arena.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class SpecModel(BaseModel):
    """Base of every spec section: unknown keys are errors and a loaded spec never changes."""

    # strict: YAML already types its scalars, so `generations: yes` or `sigma: "0.1"` is a
    # mistake to report, not a value to convert.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


def _field_error(field: str, value: Any, reason: str) -> PydanticCustomError:
    """An error that involves several fields; `field` is relative to the model raising it."""
    return PydanticCustomError(
        "spec_field",
        "{field} = {value}: {reason}",
        {"field": field, "value": value, "reason": reason},
    )
