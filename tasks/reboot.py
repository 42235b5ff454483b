"""Rebooting a host and knowing, from its boot id, that it really came back.

A reboot is proven by the kernel's boot id (``/proc/sys/kernel/random/boot_id``), new
at every boot: ``reboot_host`` reads it, issues the reboot detached so the command
returns before the connection drops, closes the connection, then polls (bounded by
``timeout_s``) reconnecting until the boot id differs. A host that does not come back
in time is a ``RebootTimeout``. Never retried: a second blind reboot could interrupt a
host that is slowly coming back.

Whether to reboot at all is the pure ``reboot_needed``: the client's reboot policy and
what patching left behind. See docs/patching.md.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConnectError, RebootTimeout, RemoteError
from tasks.facts import BOOT_ID, FactParseError, parse_boot_id
from tasks.packages import PackageDiff
from tasks.remote import RemoteHost

__all__ = [
    "REBOOT_COMMAND",
    "RebootPolicy",
    "RebootResult",
    "reboot_host",
    "reboot_needed",
]

log = logging.getLogger(__name__)

RebootPolicy = Literal["if-required", "always", "never"]

# Detached and delayed by a second: the command exits (and its exit status reaches us)
# before the host goes down, and nothing holds the SSH channel open. Output goes to
# /dev/null so the channel closes as soon as the shell returns.
REBOOT_COMMAND = "nohup sh -c 'sleep 1; reboot' </dev/null >/dev/null 2>&1 &"

# Each poll may wait this long for one connection attempt before the loop looks at the
# clock again (the remote layer retries its own connects with backoff).
_ATTEMPT_S = 30.0


class RebootResult(BaseModel):
    """A reboot that happened: the boot ids on both sides and how long it took."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    old_boot_id: str = Field(description="Boot id before the reboot.")
    new_boot_id: str = Field(description="Boot id after it (differs from the old one).")
    seconds: float = Field(ge=0, description="From issuing the reboot to reading the new id.")


def reboot_needed(policy: RebootPolicy, diff: PackageDiff) -> bool:
    """Whether a host reboots after patching (pure).

    Args:
        policy: the client's reboot policy: ``if-required`` (when the OS asks through
            /var/run/reboot-required), ``always`` (after every run that changed
            packages, or when the OS asks) or ``never`` (not even when asked; the
            pending reboot stays visible in the facts and the change record).
        diff: what patching did on the host.

    Returns:
        True when the host should reboot now. Matches what the plan announced
        (``plan_host``): ``always`` does not reboot a host where nothing changed.
    """
    if policy == "never":
        return False
    if diff.reboot_required_after:
        return True
    return policy == "always" and bool(diff.changes)


class _Attempt:
    """One boot-id read in a daemon thread, so a hung connect cannot outlast the bound."""

    def __init__(self, host: RemoteHost, timeout_s: float) -> None:
        self.boot_id: str | None = None
        self.error: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(host, timeout_s), name=f"reboot-poll-{host.name}", daemon=True
        )
        self._thread.start()

    def _read(self, host: RemoteHost, timeout_s: float) -> None:
        try:
            result = host.run(BOOT_ID, timeout=timeout_s, check=True)
            self.boot_id = parse_boot_id(result.stdout)
        except (RemoteError, FactParseError) as exc:
            self.error = str(exc)
        finally:
            self._done.set()

    def wait(self, seconds: float) -> bool:
        """Whether the attempt finished within ``seconds``."""
        return self._done.wait(max(seconds, 0.0))


def _issue_reboot(host: RemoteHost, server_name: str) -> None:
    try:
        host.run(REBOOT_COMMAND, sudo=True, timeout=30, check=True)
    except ConnectError as exc:
        # The host may drop the connection before our command's exit status arrives:
        # that is the reboot happening, not a failure. The boot id will tell.
        log.info("%s: connection dropped while issuing the reboot (expected): %s", server_name, exc)


@task(name="reboot-host", cache_policy=NO_CACHE, task_run_name="reboot-{server_name}")
def reboot_host(
    host: RemoteHost, server_name: str, timeout_s: float = 300, poll_s: float = 2
) -> RebootResult:
    """Reboot a host and wait, bounded, until it is back with a new boot id.

    Not retried: the reboot is issued once; only the reconnecting is repeated.

    Args:
        host: the host (its connection is closed and reopened).
        server_name: the server's inventory name, for results and errors.
        timeout_s: how long to wait for the new boot id after issuing the reboot.
        poll_s: pause between reconnection attempts.

    Returns:
        The old and new boot ids and the seconds from reboot to the new id.

    Raises:
        RebootTimeout: no new boot id within ``timeout_s``; carries the old boot id,
            the seconds waited and what the last attempt saw.
        RemoteError: the boot id could not be read before rebooting, or the reboot
            command itself failed (e.g. sudo refused); then nothing was rebooted.
    """
    old_boot_id = parse_boot_id(host.run(BOOT_ID, timeout=30, check=True).stdout)
    started = time.monotonic()
    deadline = started + timeout_s
    _issue_reboot(host, server_name)
    # The old connection dies with the host; the next run must open a new one.
    host.close()
    log.info(
        "%s: reboot issued (boot id %s); waiting up to %gs", server_name, old_boot_id, timeout_s
    )
    last_seen = "not polled yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        attempt = _Attempt(host, timeout_s=min(_ATTEMPT_S, max(remaining, 1.0)))
        if not attempt.wait(remaining):
            last_seen = "still trying to connect when the time was up"
            break
        if attempt.boot_id is not None and attempt.boot_id != old_boot_id:
            seconds = time.monotonic() - started
            log.info("%s: back after %.1fs (boot id %s)", server_name, seconds, attempt.boot_id)
            return RebootResult(
                server=server_name,
                old_boot_id=old_boot_id,
                new_boot_id=attempt.boot_id,
                seconds=seconds,
            )
        if attempt.boot_id is not None:
            last_seen = "up with the old boot id (the reboot has not happened)"
            # Drop this connection too: it belongs to the boot that is about to end.
            host.close()
        else:
            last_seen = f"unreachable ({attempt.error})"
        time.sleep(max(min(poll_s, deadline - time.monotonic()), 0.0))
    raise RebootTimeout(server_name, old_boot_id, time.monotonic() - started, last_seen)
