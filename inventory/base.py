"""What every inventory module builds on: the validation error our rules raise, the model base.

A rule that fails raises :func:`fail`; its message travels in the error context and the
loader turns it into ``<file>:<line>: <field path>: <message> (allowed: <allowed>)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

#: The pydantic error type of :func:`fail` (the loader reads its context).
ERROR_TYPE = "caretaker"


def fail(message: str, allowed: str | None = None, at: tuple[str | int, ...] = ()) -> Exception:
    """Build the validation error our validators raise.

    The message travels in the error context (not in the template) so braces in user
    input cannot break formatting. ``allowed`` becomes the ``(allowed: ...)`` hint and
    ``at`` refines the location below the model that raised it (for cross-field rules).
    """
    context: dict[str, Any] = {"message": message}
    if allowed:
        context["allowed"] = allowed
    if at:
        context["at"] = at
    return PydanticCustomError(ERROR_TYPE, "{message}", context)


def char_list(chars: Sequence[str]) -> str:
    """``["$", ";"]`` -> ``"'$', ';'"``: characters named in a message."""
    return ", ".join(repr(c) for c in chars)


def duplicates(values: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Yield (index, value) of every value already seen earlier in ``values``."""
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            yield index, value
        seen.add(value)


class Model(BaseModel):
    """Base of every inventory model: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
