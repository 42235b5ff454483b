"""The one exception family of caretaker.

Every failure the project raises on purpose is a ``CaretakerError``; third-party
errors (paramiko, socket, botocore, pydantic) are translated at one boundary each
and chained with ``raise ... from exc``. A failure carries its evidence.

    CaretakerError
    ├── InventoryError            a client file is invalid (path, field, what, allowed)
    ├── FactParseError            a fact's output could not be read (also a ValueError)
    ├── ConfigError               a block or setting is missing or unusable
    ├── RemoteError               anything between us and a host (carries ``host``)
    │   ├── ConnectError          TCP/SSH transport could not be established (retryable)
    │   ├── AuthenticationError   the host refused our key
    │   ├── HostKeyError          the host key is unknown or changed (never retried)
    │   ├── CommandTimeout        a command ran longer than its bound
    │   ├── CommandFailed         a command ran and exited non-zero (never retried)
    │   │   └── PatchFailed       apt failed while patching (kind + the diff of what changed)
    │   └── RebootTimeout         a rebooted host did not come back within its bound
    ├── SnapshotError             a provider could not create/restore/delete a snapshot
    │   └── TransientSnapshotError  the endpoint was unreachable or throttled (reads retry)
    ├── MaintenanceInProgress     another run of the same client holds its run lock
    ├── MaintenanceStopped        the procedure ended early with an outcome (rejected,
    │                             timed out, staging failed, halted...), recorded
    ├── ReportInputError          a report's input broke an expectation; nothing computed
    ├── PdfNotMade                report.pdf was not made (the HTML and CSV were)
    ├── ReportNotStored           a report's files could not be written to its storage block
    ├── ImportRejected            an import file has bad rows; nothing was imported
    ├── HistoryExists             a bulk import met a server that already has history
    ├── AnnouncementRefused       a maintenance announcement is not one (times, names, late)
    ├── LimitUnavailable          a global concurrency / rate limit's slots were not granted
    └── SandboxError              the sandbox estate could not do what was asked

A test (tests/unit/test_errors.py) checks that every ``CaretakerError`` subclass in the
project is defined here and drawn in this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class CaretakerError(Exception):
    """Base class of every error caretaker raises on purpose."""


class InventoryError(CaretakerError):
    """An inventory file is invalid.

    ``problems`` holds one line per problem: ``<file>: <field path>: <what is wrong> (<allowed>)``.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid inventory {path}:\n{lines}")


class FactParseError(CaretakerError, ValueError):
    """A fact's output could not be read.

    Attributes:
        fact: the fact's name (a key of ``FACTS``).
        line: the offending line (or the whole output when it was empty).
        reason: what was wrong with it.
    """

    def __init__(self, fact: str, line: str, reason: str) -> None:
        self.fact = fact
        self.line = line
        self.reason = reason
        super().__init__(f"{fact}: {reason}: {line!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles task exceptions; the default reduce would call
        # __init__ with the formatted message only.
        return (type(self), (self.fact, self.line, self.reason))


class ConfigError(CaretakerError):
    """A block, setting or parameter is missing or unusable."""


class RemoteError(CaretakerError):
    """Something went wrong between caretaker and a host."""

    retryable: bool = False

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class ConnectError(RemoteError):
    """The SSH transport could not be established (refused, unreachable, timed out)."""

    retryable = True


class AuthenticationError(RemoteError):
    """The host refused our credentials."""


class HostKeyError(RemoteError):
    """The host key is not in known_hosts, or it changed. Never retried."""


class CommandTimeout(RemoteError):
    """A command ran longer than its timeout."""

    def __init__(self, host: str, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        super().__init__(host, f"command timed out after {timeout_s:g}s: {command}")


class CommandFailed(RemoteError):
    """A command ran and exited non-zero. Carries its evidence."""

    def __init__(
        self, host: str, command: str, exit_code: int, stdout: str = "", stderr: str = ""
    ) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stdout_tail = stdout[-2000:]
        self.stderr_tail = stderr[-2000:]
        detail = (self.stderr_tail or self.stdout_tail).strip().splitlines()[-5:]
        super().__init__(
            host,
            f"command exited {exit_code}: {command}" + ("\n" + "\n".join(detail) if detail else ""),
        )


class PatchFailed(CommandFailed):
    """apt failed while applying a host's approved plan.

    Besides the command's evidence (exit code, output tails) it says what kind of failure
    it was (``kind``: ``lock``, ``postinst``, ``network`` or ``unknown``) and carries the
    diff of what did change on the host before apt stopped (``diff``, a
    ``tasks.packages.PackageDiff``, or None when the host could not be read afterwards),
    so the change record shows a half-applied host as it is.
    """

    def __init__(
        self,
        host: str,
        command: str,
        exit_code: int,
        stdout: str = "",
        stderr: str = "",
        *,
        kind: str = "unknown",
        summary: str = "",
        diff: BaseModel | None = None,
    ) -> None:
        super().__init__(host, command, exit_code, stdout, stderr)
        self.kind = kind
        self.summary = summary
        self.diff = diff
        if summary:
            # The summary leads (what happened, in words); the command's evidence follows.
            evidence = str(self.args[0]).removeprefix(f"{host}: ")
            self.args = (f"{host}: {summary}\n{evidence}",)

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles exceptions into states; rebuild from our own arguments.
        return (
            _rebuild_patch_failed,
            (
                self.host,
                self.command,
                self.exit_code,
                self.stdout_tail,
                self.stderr_tail,
                self.kind,
                self.summary,
                self.diff,
            ),
        )


def _rebuild_patch_failed(
    host: str,
    command: str,
    exit_code: int,
    stdout: str,
    stderr: str,
    kind: str,
    summary: str,
    diff: BaseModel | None,
) -> PatchFailed:
    return PatchFailed(
        host, command, exit_code, stdout, stderr, kind=kind, summary=summary, diff=diff
    )


class RebootTimeout(RemoteError):
    """A host was rebooted and did not come back (a new boot id) within the bound.

    A ``RemoteError`` because it is about reaching the host: the host is down or
    unreachable, or it never went down. Never retried: rebooting again blindly could
    interrupt a host that is slowly coming back.
    """

    def __init__(self, host: str, old_boot_id: str, waited_s: float, last_seen: str = "") -> None:
        self.old_boot_id = old_boot_id
        self.waited_s = waited_s
        self.last_seen = last_seen
        message = (
            f"did not come back from a reboot within {waited_s:.1f}s (old boot id {old_boot_id})"
        )
        super().__init__(host, message + (f"; last seen: {last_seen}" if last_seen else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.host, self.old_boot_id, self.waited_s, self.last_seen))


class SnapshotError(CaretakerError):
    """A snapshot provider could not do what was asked."""


class TransientSnapshotError(SnapshotError):
    """The provider's endpoint could not be reached or asked us to slow down.

    Raised for transport failures, throttling and 5xx answers. Repeating a *read*
    (``find``, ``wait``, ``list``) may succeed; a ``create`` is never repeated blindly.
    """


class MaintenanceInProgress(CaretakerError):
    """Another maintenance run of the same client holds the client's run lock.

    Carries the holder's flow run id and change ref, so the refused run can say who is in
    the way (and an operator can look that run up in Prefect), and why the lock was not
    taken over (``reason``: e.g. the holder's state could not be read).
    """

    def __init__(
        self,
        client: str,
        holder_flow_run_id: str,
        change_ref: str,
        since: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        self.client = client
        self.holder_flow_run_id = holder_flow_run_id
        self.change_ref = change_ref
        self.since = since
        self.reason = reason
        held = f" since {since.isoformat()}" if since is not None else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"client {client}: maintenance is in progress: flow run {holder_flow_run_id}"
            f" (change {change_ref}) holds the run lock{held}{why}"
        )

    def __reduce__(self) -> tuple[type[MaintenanceInProgress], tuple[object, ...]]:
        # Prefect pickles exceptions into states; rebuild from our own arguments.
        return (
            type(self),
            (self.client, self.holder_flow_run_id, self.change_ref, self.since, self.reason),
        )


class LimitUnavailable(CaretakerError):
    """A global concurrency or rate limit's slots were not granted (timed out waiting,
    the limit vanished, or the Prefect API refused); nothing was done under it."""


class SandboxError(CaretakerError):
    """The sandbox estate could not do what was asked."""


class MaintenanceStopped(CaretakerError):
    """Ends the maintenance procedure early with an outcome (not a crash: the change record
    says why). ``outcome`` is a ``history.change.Outcome`` value."""

    def __init__(self, outcome: str, detail: str) -> None:
        self.outcome = outcome
        self.detail = detail
        super().__init__(f"{outcome}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.outcome, self.detail))


class ReportInputError(CaretakerError):
    """The report's input data broke an expectation; nothing was computed.

    Attributes:
        expectation: the name of the (first) failed expectation.
        rows: the offending rows, as short descriptions (at most a few per expectation).
        problems: one line per failed expectation, each naming it and its rows.
    """

    def __init__(
        self,
        expectation: str,
        message: str,
        rows: Sequence[str] = (),
        problems: Sequence[str] = (),
    ) -> None:
        self.expectation = expectation
        self.rows = list(rows)
        self.problems = list(problems) or [f"{expectation}: {message}"]
        super().__init__(
            message if not problems else "invalid report input:\n" + "\n".join(problems)
        )


class PdfNotMade(CaretakerError):
    """report.pdf was not made; the message says why (no browser, a timeout, a failure).

    The HTML report and the CSV files do not depend on it.
    """


class ReportNotStored(CaretakerError):
    """A report's files could not be written to (or linked in) its storage block; the
    message names the block, the file and the storage's error (never its credentials).
    The files stay in the report's local folder."""


_SHOWN_PROBLEMS = 50


class ImportRejected(CaretakerError):
    """An import file has bad rows; nothing was imported.

    Attributes:
        path: the file.
        problems: one line per problem, ``line N: ...`` (CSV) or ``row N: ...`` (Parquet).
    """

    def __init__(self, path: Path | str, problems: Sequence[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:_SHOWN_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(
            f"{self.path}: {len(self.problems)} problem(s), nothing imported:\n  {lines}"
        )


class AnnouncementRefused(CaretakerError):
    """A maintenance window announcement was refused; nothing was recorded.

    Attributes:
        problems: one line per problem (end before start, unknown server, announced after
            the window began, ...).
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"announcement refused, nothing recorded:\n  {lines}")


class HistoryExists(CaretakerError):
    """A bulk import was refused: a server of the file already has intervals in the store."""
