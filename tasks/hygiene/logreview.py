"""Log review: the journal since the last maintenance, counted, never copied.

Four ``journalctl -o json`` queries since the last maintenance (at most
``log_review.lookback`` back): error entries (priority ``err`` and worse) per unit, kernel
OOM kills, kernel I/O errors, and failed SSH logins. Each asks only for the fields it
counts (``--output-fields=PRIORITY,_SYSTEMD_UNIT,...``), so no message text leaves the
server at all: a log line can hold anything, a password typed as a user name included.
Findings name units and counts above the inventory's thresholds; the lines stay on the
server for a person to read there.

A server without a journal (no systemd, such as the sandbox's namespace hosts) is reported
as not reviewed, never as clean. The file-based counts of the security audit's
``log_review`` fact (``tasks.facts.security``) remain its fallback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import FactParseError
from history.change import ChangeRecord, Finding
from inventory.hygiene import LogReviewPolicy
from tasks.hygiene.base import bounded, finding, sections
from tasks.remote import RemoteHost, sh_join

#: At most this many entries are read per query (the count is then "at least").
ENTRY_CAP = 100_000
AUTH_FAILED = (
    "Failed password|Failed publickey|Invalid user|authentication failure"
    "|Connection closed by authenticating user|maximum authentication attempts"
)
OOM = "Killed process"
IO_ERROR = "I/O error"

_QUERIES: tuple[tuple[str, list[str]], ...] = (
    (
        "errors",
        ["-p", "err", "--output-fields=PRIORITY,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,_TRANSPORT"],
    ),
    ("oom", ["-k", "--grep", OOM, "--output-fields=PRIORITY"]),
    ("io", ["-k", "--grep", IO_ERROR, "--output-fields=PRIORITY"]),
    (
        "auth",
        ["-t", "sshd", "-t", "sshd-session", "--grep", AUTH_FAILED, "--output-fields=PRIORITY"],
    ),
)


def review_command(since: datetime, journal: Sequence[str] = ()) -> str:
    """The review script (pure): whether there is a journal, then the four counts.

    Args:
        since: the start of the review (aware).
        journal: extra journalctl arguments naming the journal (``--file=...``); the
            system journal when empty (the fixture recorder reads a journal file).
    """
    base = ["journalctl", "-q", "--no-pager", *journal]
    stamp = f"@{int(since.timestamp())}"
    script = (
        "echo '=== journal';"
        f' [ -n "$({sh_join([*base, "-n", "1"])} 2>/dev/null)" ] && echo present; echo rc=0;'
    )
    for name, args in _QUERIES:
        query = [*base, "-o", "json", "--since", stamp, "-n", str(ENTRY_CAP), *args]
        script += f" echo '=== {name}'; {sh_join(query)} 2>&1; echo \"rc=$?\";"
    return script


class LogDigest(BaseModel):
    """What the journal holds since ``since``, counted."""

    model_config = ConfigDict(frozen=True)

    known: bool = Field(description="False: the server has no journal to read.")
    since: datetime | None = None
    errors_by_unit: dict[str, int] = Field(default_factory=dict)
    oom_kills: int = 0
    io_errors: int = 0
    auth_failures: int = 0
    capped: list[str] = Field(
        default_factory=list, description="Queries that hit ENTRY_CAP (counts are at least)."
    )
    problems: list[str] = Field(default_factory=list, description="Queries journalctl refused.")


def _entries(name: str, lines: Sequence[str]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise FactParseError("log_review", line[:120], f"{name}: not a JSON entry") from None
        if not isinstance(entry, dict):
            raise FactParseError("log_review", line[:120], f"{name}: not a JSON object")
        out.append(entry)
    return out


def _unit(entry: dict[str, object]) -> str:
    if entry.get("_TRANSPORT") == "kernel":
        return "kernel"
    for key in ("_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return "(no unit)"


def parse_review(text: str, since: datetime) -> LogDigest:
    """Parse :func:`review_command`'s output into counts (pure).

    ``journalctl --grep`` exits 1 when nothing matched; that is a count of 0.

    Raises:
        FactParseError: a section is missing or an entry is not JSON.
    """
    parts = sections("log_review", text)
    missing = [n for n in ("journal", *(q for q, _ in _QUERIES)) if n not in parts]
    if missing:
        raise FactParseError("log_review", text[:200], f"missing sections: {', '.join(missing)}")
    if "present" not in parts["journal"].lines:
        return LogDigest(known=False, since=since)
    counts: dict[str, list[dict[str, object]]] = {}
    capped: list[str] = []
    problems: list[str] = []
    for name, _ in _QUERIES:
        section = parts[name]
        if section.rc not in (0, 1):
            said = section.lines[0].strip() if section.lines else f"exit {section.rc}"
            problems.append(f"{name}: {said}")
            counts[name] = []
            continue
        counts[name] = _entries(name, section.lines)
        if len(counts[name]) >= ENTRY_CAP:
            capped.append(name)
    return LogDigest(
        known=True,
        since=since,
        errors_by_unit=dict(sorted(Counter(_unit(e) for e in counts["errors"]).items())),
        oom_kills=len(counts["oom"]),
        io_errors=len(counts["io"]),
        auth_failures=len(counts["auth"]),
        capped=capped,
        problems=problems,
    )


def review_since(
    records: Sequence[ChangeRecord], now: datetime, lookback: timedelta, change_ref: str = ""
) -> datetime:
    """Where the review starts (pure): the end of the client's last maintenance run other
    than ``change_ref``, but never further back than ``lookback``."""
    ends = [r.ended or r.started for r in records if r.change_ref != change_ref]
    floor = now - lookback
    return max([floor, *(e for e in ends if e <= now)])


def log_findings(server: str, digest: LogDigest, policy: LogReviewPolicy) -> list[Finding]:
    """Counts above the inventory's thresholds (pure); a server without a journal is an
    info finding (not reviewed), never a clean bill."""
    if not digest.known:
        return [finding("logs", server, "log review: no journal on this server", "info")]
    since = f" since {digest.since:%Y-%m-%d %H:%M} UTC" if digest.since else ""
    at_least = "at least " if digest.capped else ""
    out = [
        finding(
            "logs",
            server,
            f"{unit}: {at_least}{n} error entries{since}",
            detail=f"threshold {policy.max_unit_errors} per unit; read them with journalctl"
            f" -p err -u {unit}",
        )
        for unit, n in digest.errors_by_unit.items()
        if n > policy.max_unit_errors
    ]
    kernel = digest.oom_kills + digest.io_errors
    if kernel > policy.max_kernel_errors:
        out.append(
            finding(
                "logs",
                server,
                f"kernel: {digest.oom_kills} OOM kill(s), {digest.io_errors} I/O error(s){since}",
                "critical" if digest.io_errors else "warning",
                f"threshold {policy.max_kernel_errors}; journalctl -k",
            )
        )
    if digest.auth_failures > policy.max_auth_failures:
        out.append(
            finding(
                "logs",
                server,
                f"{digest.auth_failures} failed SSH logins{since}",
                detail=f"threshold {policy.max_auth_failures}; journalctl -t sshd",
            )
        )
    out += [
        finding("logs", server, f"log review query failed: {p}", "info") for p in digest.problems
    ]
    return out


@task(name="review-logs", cache_policy=NO_CACHE, task_run_name="review-logs-{host.name}")
def review_logs(host: RemoteHost, since: datetime) -> LogDigest:
    """Count what the host's journal holds since ``since`` (read-only, idle priority)."""
    script = bounded(review_command(since), 240)
    result = host.run("LC_ALL=C; export LC_ALL; " + script, sudo=True, timeout=300)
    return parse_review(result.stdout, since)
