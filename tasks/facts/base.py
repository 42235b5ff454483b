"""What every fact shares: the ``Fact`` record, the typed-model base, the models that
more than one package manager returns, and the small helpers the parsers use.

The domain modules (``server``, ``apt``, ``dnf``, ``security``) each keep a fact's
command, model and parser side by side and import only from here; ``script`` holds the
registry of every fact and the one-round-trip script built from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.errors import FactParseError

T = TypeVar("T")

Family = Literal["debian", "rhel", "unknown"]
ALL_FAMILIES: frozenset[str] = frozenset({"debian", "rhel", "unknown"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackageUpdate(_Frozen):
    """An installed package that has a newer candidate version."""

    name: str
    current: str | None = Field(description="Installed version; None where unknown (dnf).")
    candidate: str
    suites: list[str] = Field(description="Archives/suites (apt) or repositories (dnf).")
    arch: str
    security: bool = Field(description="Any suite ends with '-security'.")


class RebootRequired(_Frozen):
    """Whether the OS asks for a reboot, and because of which packages."""

    required: bool
    packages: list[str] = Field(default_factory=list)


_RC_LINE = re.compile(r"^rc=(\d+)$")
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(?::[a-z0-9\-]+)?$")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _is_security(suites: Iterable[str]) -> bool:
    return any(s.endswith("-security") for s in suites)


def _split_rc(fact: str, text: str) -> tuple[int, list[str]]:
    """Split off the trailing ``rc=N`` line that some commands print."""
    lines = _lines(text)
    if not lines:
        raise FactParseError(fact, text, "empty output, expected a final rc=N line")
    match = _RC_LINE.match(lines[-1].strip())
    if match is None:
        raise FactParseError(fact, lines[-1], "expected a final rc=N line")
    return int(match.group(1)), lines[:-1]


def _single_line(fact: str, text: str) -> str:
    lines = _lines(text)
    if len(lines) != 1:
        raise FactParseError(
            fact, lines[1] if lines else text, f"expected one line, got {len(lines)}"
        )
    return lines[0].strip()


def _int(fact: str, value: str, line: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FactParseError(fact, line, f"not an integer: {value!r}") from None


def _float(fact: str, value: str, line: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FactParseError(fact, line, f"not a number: {value!r}") from None


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One fact: its name, the command that reads it and the parser of its output.

    Attributes:
        name: key in ``FACTS`` and field of ``HostFacts``.
        command: POSIX shell command run on the host.
        parse: pure parser of the command's stdout.
        families: OS families the fact applies to.
        ok_exit_codes: exit codes whose output is parsed; any other is an error.
    """

    name: str
    command: str
    parse: Callable[[str], T]
    families: frozenset[str] = ALL_FAMILIES
    ok_exit_codes: frozenset[int] = frozenset({0})
