"""What the hygiene steps share: bounded commands, sectioned output, findings.

A hygiene command runs as root over the remote layer, in the C locale, bounded by
``timeout`` (``-k``: a command that ignores SIGTERM is killed 10 s later) and, where it
only reads, at the lowest CPU and I/O priority (``nice -n 19 ionice -c 3``), so a scan
never competes with the server's own work. A script that runs several commands prints
``=== <name>`` before each one and ``rc=<exit code>`` after it; :func:`sections` cuts it
back into parts for the pure parsers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import FactParseError
from history.change import Finding

#: Exit status of ``timeout`` when it stopped the command (124) or had to kill it (137).
TIMED_OUT = frozenset({124, 137})

_SECTION = re.compile(r"^=== ([a-z_]+)$")
_RC = re.compile(r"^rc=(-?\d+)$")


def bounded(command: str, seconds: int, *, idle: bool = True) -> str:
    """``command`` stopped after ``seconds`` (killed 10 s later), idle priority when ``idle``.

    ``command`` is run by ``sh -c``, so it may be a pipeline; it must already be quoted.
    """
    if seconds < 1:
        raise ValueError(f"a bound of {seconds} s is not a bound")
    prefix = f"timeout -k 10 {seconds} "
    if idle:
        prefix += "nice -n 19 ionice -c 3 "
    return prefix + "sh -c " + _quote(command)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@dataclass(frozen=True)
class Section:
    """One command's output in a sectioned script, and its exit status."""

    name: str
    lines: tuple[str, ...]
    rc: int | None  # None: the script did not get to print it

    @property
    def text(self) -> str:
        """The output as one text."""
        return "\n".join(self.lines)


def sections(what: str, text: str) -> dict[str, Section]:
    """Cut ``=== name`` ... ``rc=N`` output into sections by name (pure).

    Raises:
        FactParseError: output before the first section marker.
    """
    out: dict[str, Section] = {}
    name: str | None = None
    lines: list[str] = []
    rc: int | None = None

    def close() -> None:
        if name is not None:
            out[name] = Section(name, tuple(lines), rc)

    for line in text.splitlines():
        marker = _SECTION.match(line)
        if marker:
            close()
            name, lines, rc = marker.group(1), [], None
            continue
        if name is None:
            if line.strip():
                raise FactParseError(what, line, "output before the first '=== section' line")
            continue
        code = _RC.match(line)
        if code and rc is None:
            rc = int(code.group(1))
        elif rc is None:
            lines.append(line)
    close()
    return out


def finding(
    kind: str,
    server: str | None,
    summary: str,
    severity: str = "warning",
    detail: str = "",
) -> Finding:
    """One hygiene finding (the change record's and the audit's)."""
    return Finding.model_validate(
        {"kind": kind, "server": server, "severity": severity, "summary": summary, "detail": detail}
    )
