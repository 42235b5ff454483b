"""Health checks: how a host is doing, checked from the caretaker host and over SSH.

Facts (what a host is) live in ``tasks.facts``; ``collect_facts`` in
``tasks.facts.collect`` reads them over SSH. Here a health check reads only the cheap
``METRIC_FACTS`` beside its checks.

Health checks (``run_health_checks``) are the inventory's checks of one server plus SSH
reachability: a TCP connect and an HTTP(S) request from the caretaker host (bounded by
the check's timeout), and over SSH **one script per server** (``build_health_script``):
it answers the reachability probe (it ran), ``systemctl is-active <unit>`` for each
systemd check and, in a health-check round, the metrics. Each check gives a
``CheckResult``; a check that cannot tell (systemd not running, no SSH session) is
``ok=False`` with ``unknown=True`` and says why: never healthy by default.
``parse_systemctl_is_active``, ``parse_health_output`` and ``summarize_checks`` are pure.
See docs/patching.md and docs/health-check.md.

The ``health-check`` flow checks its servers in batches (``check_servers``: one task run
per batch, threads inside; ``check_server`` per server: its checks, then its metrics over
the same SSH session, retries and crash isolation). See docs/health-check.md.
"""

from __future__ import annotations

import base64
import errno
import functools
import http.client
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, ConfigDict, Field

from core.errors import CommandTimeout, RemoteError
from core.lanes import run_on_lanes
from inventory import HttpCheck, Server, SystemdCheck, TcpCheck
from tasks.facts.script import HostFacts, build_facts_script, parse_facts, split_facts_output
from tasks.limits import ssh_sessions
from tasks.remote.base import RemoteHost, sh_join

# What a health check reads besides its checks: cheap, bounded, in the same round trip.
METRIC_FACTS = ("load", "memory", "disks")

# ------------------------------------------------------------------------ health checks

CheckKind = Literal["tcp", "http", "ssh", "systemd"]

#: The SSH reachability probe: a command that does nothing and exits 0.
SSH_PROBE = "true"

# Bound of the SSH probe and of `systemctl is-active` once connected, when each is asked
# on its own (after the health script timed out).
_SSH_CHECK_TIMEOUT_S = 15.0
#: Bound of a server's health script (probe, systemd units, metrics): one round trip.
HEALTH_SCRIPT_TIMEOUT_S = 20.0

# systemctl's words when it cannot reach systemd (containers, our sandbox hosts), or
# when it is not there at all.
_NO_SYSTEMD = (
    "System has not been booted with systemd",
    "Failed to connect to bus",
    "Failed to connect to system scope bus",
)
_NOT_INSTALLED = ("systemctl: not found", "systemctl: command not found")
# `systemctl is-active` exits 0 for these (systemd's check_unit_generic), so they are up.
_ACTIVE_STATES = frozenset({"active", "reloading", "refreshing"})
# The other ActiveState values systemd documents, plus "unknown" (older systemd's
# answer for a unit it does not know).
_INACTIVE_STATES = frozenset(
    {"inactive", "failed", "activating", "deactivating", "maintenance", "unknown"}
)

UNKNOWN_NO_SYSTEMD = "unknown: systemd not running"


def systemctl_is_active_command(unit: str) -> str:
    """``systemctl is-active <unit>``, quoted (pure)."""
    return sh_join(["systemctl", "is-active", unit])


class UnitState(BaseModel):
    """What ``systemctl is-active`` said about one unit."""

    model_config = ConfigDict(frozen=True)

    ok: bool = Field(description="The unit is active (or reloading).")
    unknown: bool = Field(default=False, description="systemd could not be asked.")
    state: str | None = Field(default=None, description="The unit's ActiveState, if known.")
    detail: str = Field(description="active, the state, or 'unknown: <why>'.")


def parse_systemctl_is_active(exit_code: int, stdout: str, stderr: str) -> UnitState:
    """Read ``systemctl is-active <unit>``'s answer (pure).

    ``active`` (exit 0) is healthy; ``inactive``, ``failed``, ``activating`` and the
    other states are not, with the state as detail. When systemd is not running or
    systemctl is missing, the unit's state is unknown: ``ok=False``, ``unknown=True``
    and a detail starting with ``unknown: systemd not running``, never healthy.

    Args:
        exit_code: systemctl's exit status (0 active, 3 not active, 1 cannot tell,
            127 not installed).
        stdout: its standard output (the state word).
        stderr: its standard error.

    Returns:
        The unit's state.
    """
    both = stderr + "\n" + stdout
    lines = [line.strip() for line in both.splitlines() if line.strip()]
    evidence = next((ln for ln in lines if any(m in ln for m in _NO_SYSTEMD)), None)
    if evidence is not None:
        return UnitState(ok=False, unknown=True, detail=f"{UNKNOWN_NO_SYSTEMD} ({evidence})")
    if exit_code == 127 or any(m in both for m in _NOT_INSTALLED):
        return UnitState(
            ok=False, unknown=True, detail=f"{UNKNOWN_NO_SYSTEMD} (systemctl is not installed)"
        )
    words = stdout.split()
    state = words[0] if len(words) == 1 else None
    if state in _ACTIVE_STATES and exit_code == 0:
        return UnitState(ok=True, state=state, detail=state)
    if state in _INACTIVE_STATES or (state in _ACTIVE_STATES and exit_code != 0):
        return UnitState(ok=False, state=state, detail=f"{state} (exit {exit_code})")
    # Anything else (access denied, an unexpected answer) cannot be read as a state.
    reason = lines[-1] if lines else "no output"
    return UnitState(ok=False, unknown=True, detail=f"unknown: exit {exit_code}: {reason}")


class CheckResult(BaseModel):
    """The outcome of one health check of one server."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    kind: CheckKind = Field(description="tcp, http, ssh or systemd.")
    target: str = Field(description="address:port, the URL, or the unit name.")
    ok: bool = Field(description="The check passed. False when it failed or could not tell.")
    unknown: bool = Field(
        default=False, description="The check could not tell (e.g. systemd not running)."
    )
    detail: str = Field(description="What was seen: status, state or error.")
    latency_ms: float | None = Field(
        default=None, ge=0, description="Connect / response time, when something answered."
    )


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _socket_error(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror})"
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{name}: {exc.strerror or exc}"


def check_tcp(server: Server, check: TcpCheck) -> CheckResult:
    """Connect to ``server.address:check.port`` from here, bounded by the check's timeout."""
    timeout_s = check.timeout.total_seconds()
    target = _target(server.address, check.port)
    started = time.monotonic()
    try:
        with socket.create_connection((server.address, check.port), timeout=timeout_s):
            latency = _ms(started)
    except OSError as exc:
        return CheckResult(
            server=server.name,
            kind="tcp",
            target=target,
            ok=False,
            detail=_socket_error(exc, timeout_s),
        )
    return CheckResult(
        server=server.name, kind="tcp", target=target, ok=True, detail="open", latency_ms=latency
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's CAs), made once."""
    return httpx.create_ssl_context(trust_env=False)


def check_http(server: Server, check: HttpCheck) -> CheckResult:
    """GET the check's URL from here and compare the status with ``expect_status``.

    Redirects are not followed (a 301 is reported as 301, so it can be expected) and
    proxy settings from the environment are ignored: the check sees the service itself.
    TLS certificates and host names are verified (with one SSL context per process: making
    one costs ~40 ms of CPU, more than the check). Each check makes its own connection: a
    service that stopped accepting them is seen. The timeout bounds the connection and each
    read, as a socket timeout. The standard library's ``http.client``, not an HTTP client
    library: one GET costs a fraction of the CPU (a 1,000-server round spent more of the
    flow process's CPU in httpx's request machinery than in anything of caretaker's).

    Args:
        server: the server the check belongs to.
        check: URL, expected status and timeout.
    """
    timeout_s = check.timeout.total_seconds()
    url = urlsplit(str(check.url))
    headers = {"User-Agent": "caretaker-health-check", "Accept": "*/*", "Connection": "close"}
    if url.username is not None:  # credentials in the URL: basic auth, as a browser does
        userinfo = f"{unquote(url.username)}:{unquote(url.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    path = url.path or "/"
    if url.query:
        path += f"?{url.query}"
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection(
            url.hostname or "", url.port, timeout=timeout_s, context=_ssl_context()
        )
        if url.scheme == "https"
        else http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout_s)
    )
    try:
        started = time.monotonic()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        latency = _ms(started)
    except TimeoutError:
        detail = f"timed out after {timeout_s:g}s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
    else:
        ok = response.status == check.expect_status
        detail = f"HTTP {response.status}" + ("" if ok else f" (expected {check.expect_status})")
        return CheckResult(
            server=server.name,
            kind="http",
            target=check.url,
            ok=ok,
            detail=detail,
            latency_ms=latency,
        )
    finally:
        connection.close()
    return CheckResult(server=server.name, kind="http", target=check.url, ok=False, detail=detail)


def check_ssh(server: Server, host: RemoteHost) -> CheckResult:
    """Run ``true`` over the host's SSH session (connecting if needed)."""
    target = _target(server.address, server.port)
    started = time.monotonic()
    try:
        result = host.run(SSH_PROBE, timeout=_SSH_CHECK_TIMEOUT_S)
    except RemoteError as exc:
        return CheckResult(server=server.name, kind="ssh", target=target, ok=False, detail=str(exc))
    latency = _ms(started)
    ok = result.ok
    detail = "ok" if ok else f"`true` exited {result.exit_code}: {result.stderr.strip()[-200:]}"
    return CheckResult(
        server=server.name, kind="ssh", target=target, ok=ok, detail=detail, latency_ms=latency
    )


def check_systemd(server: Server, check: SystemdCheck, host: RemoteHost | None) -> CheckResult:
    """Ask systemd over SSH whether the check's unit is active."""
    if host is None:
        return CheckResult(
            server=server.name,
            kind="systemd",
            target=check.unit,
            ok=False,
            unknown=True,
            detail="unknown: no SSH session to ask systemd",
        )
    started = time.monotonic()
    try:
        result = host.run(systemctl_is_active_command(check.unit), timeout=_SSH_CHECK_TIMEOUT_S)
    except RemoteError as exc:
        return CheckResult(
            server=server.name,
            kind="systemd",
            target=check.unit,
            ok=False,
            unknown=True,
            detail=f"unknown: {exc}",
        )
    state = parse_systemctl_is_active(result.exit_code, result.stdout, result.stderr)
    return CheckResult(
        server=server.name,
        kind="systemd",
        target=check.unit,
        ok=state.ok,
        unknown=state.unknown,
        detail=state.detail,
        latency_ms=_ms(started),
    )


# ------------------------------------------------- one SSH round trip per server and check

_UNIT_SECTION = "unit_{}"
_UNIT_STDERR_SECTION = "unit_{}_err"
_SECTION_MARK = "printf '\\n@@caretaker:%s:%s@@\\n' '{name}' {rc}"


def build_health_script(units: Sequence[str], *, metrics: bool) -> str:
    """Everything a health check asks a server over SSH, in one POSIX sh script (pure).

    One command per server instead of one per question (the ``true`` probe, each
    ``systemctl is-active``, the metrics): one channel and one shell on the server. It is
    the facts script of ``METRIC_FACTS`` (when ``metrics``; tasks.facts, its sections and
    markers) followed, before its ``exit 0``, by one ``systemctl is-active <unit>`` per
    unit (duplicates asked once): its exit code and standard output make the section
    ``unit_<i>``, its standard error the section ``unit_<i>_err``, kept apart because
    :func:`parse_systemctl_is_active` reads them apart. The script exits 0 whatever the
    answers: another exit status means the shell itself failed.

    Args:
        units: the systemd units of the server's checks, in order.
        metrics: also read load, memory and disks.

    Returns:
        The script text.
    """
    facts = build_facts_script(METRIC_FACTS if metrics else ())
    body = facts.removesuffix("exit 0\n")
    if body == facts:  # pragma: no cover - guards a change of the facts script's shape
        raise AssertionError("the facts script no longer ends with 'exit 0'")
    parts = [body.rstrip("\n")]
    for i, unit in enumerate(dict.fromkeys(units)):
        # stderr into the variable, stdout straight to the script's stdout (fd 3).
        ask = systemctl_is_active_command(unit)
        parts.append(f"{{ _ct_err=$({ask} </dev/null 2>&1 >&3 3>&-); _ct_rc=$?; }} 3>&1")
        parts.append(_SECTION_MARK.format(name=_UNIT_SECTION.format(i), rc='"$_ct_rc"'))
        parts.append("printf '%s' \"$_ct_err\"")
        parts.append(_SECTION_MARK.format(name=_UNIT_STDERR_SECTION.format(i), rc="0"))
    parts.append("exit 0")
    return "\n".join(parts) + "\n"


class SshAnswer(BaseModel):
    """What a server's one SSH round trip said: the probe, its units and its metrics."""

    model_config = ConfigDict(frozen=True)

    ssh: CheckResult = Field(description="The SSH reachability check.")
    units: dict[str, CheckResult] = Field(description="One systemd check result per unit.")
    metrics: HostFacts | None = Field(
        default=None, description="Load, memory and disks, when asked and SSH reached the host."
    )
    metrics_error: str | None = Field(default=None, description="Why metrics are missing.")


def _unknown_units(server: str, units: Sequence[str], detail: str) -> dict[str, CheckResult]:
    return {
        unit: CheckResult(
            server=server, kind="systemd", target=unit, ok=False, unknown=True, detail=detail
        )
        for unit in units
    }


def parse_health_output(
    server: str,
    target: str,
    units: Sequence[str],
    *,
    metrics: bool,
    exit_code: int,
    stdout: str,
    stderr: str,
    latency_ms: float | None = None,
) -> SshAnswer:
    """Read a health script's answer (pure): what ``true``, each ``systemctl is-active``
    and the metrics script would have said, each asked on its own.

    The SSH check passes when the script ran (exit 0). Each unit is read from its
    sections with :func:`parse_systemctl_is_active`; a unit without its section (the
    script was cut short) or on a host whose shell failed is unknown, never healthy.

    Args:
        server: the server's name.
        target: the SSH check's target (``address:port``).
        units: the units the script asked, in order.
        metrics: the script read the metrics.
        exit_code: the script's exit status.
        stdout: its standard output.
        stderr: its standard error.
        latency_ms: the round trip's time, given to the SSH and systemd results.

    Returns:
        The SSH check, one systemd result per unit, and the metrics (when asked and the
        script ran).
    """
    units = list(dict.fromkeys(units))
    if exit_code != 0:
        tail = stderr.strip()[-200:]
        return SshAnswer(
            ssh=CheckResult(
                server=server,
                kind="ssh",
                target=target,
                ok=False,
                detail=f"the health script exited {exit_code}: {tail}",
                latency_ms=latency_ms,
            ),
            units=_unknown_units(server, units, f"unknown: the health script exited {exit_code}"),
        )
    sections = split_facts_output(stdout)
    answers: dict[str, CheckResult] = {}
    for i, unit in enumerate(units):
        section = sections.get(_UNIT_SECTION.format(i))
        if section is None:
            answers |= _unknown_units(
                server, [unit], "unknown: no answer (the health script was cut short)"
            )
            continue
        rc, out = section
        err = sections.get(_UNIT_STDERR_SECTION.format(i), (0, ""))[1]
        state = parse_systemctl_is_active(rc, out, err)
        answers[unit] = CheckResult(
            server=server,
            kind="systemd",
            target=unit,
            ok=state.ok,
            unknown=state.unknown,
            detail=state.detail,
            latency_ms=latency_ms,
        )
    facts = None
    if metrics:
        mine = {name: sections[name] for name in METRIC_FACTS if name in sections}
        facts = parse_facts(mine, expected=METRIC_FACTS)
    return SshAnswer(
        ssh=CheckResult(
            server=server, kind="ssh", target=target, ok=True, detail="ok", latency_ms=latency_ms
        ),
        units=answers,
        metrics=facts,
    )


def ask_over_ssh(server: Server, host: RemoteHost, *, metrics: bool) -> SshAnswer:
    """Run the server's health script over ``host`` and read it (``parse_health_output``).

    A connection that fails is the SSH check failing (its units unknown, no metrics). A
    script that outlasts ``HEALTH_SCRIPT_TIMEOUT_S`` (a ``df`` stuck on a dead network
    mount, a hung systemd) is asked again the old way, each question on its own and
    bounded: ``true``, then each unit; the metrics are then missing, with the reason.
    """
    units = [c.unit for c in server.checks if isinstance(c, SystemdCheck)]
    target = _target(server.address, server.port)
    script = build_health_script(units, metrics=metrics)
    started = time.monotonic()
    try:
        result = host.run(script, timeout=HEALTH_SCRIPT_TIMEOUT_S)
    except CommandTimeout as exc:
        return _ask_one_by_one(server, host, units, metrics_error=str(exc) if metrics else None)
    except RemoteError as exc:
        return SshAnswer(
            ssh=CheckResult(
                server=server.name, kind="ssh", target=target, ok=False, detail=str(exc)
            ),
            units=_unknown_units(server.name, units, f"unknown: {exc}"),
        )
    return parse_health_output(
        server.name,
        target,
        units,
        metrics=metrics,
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        latency_ms=_ms(started),
    )


def _ask_one_by_one(
    server: Server, host: RemoteHost, units: Sequence[str], *, metrics_error: str | None
) -> SshAnswer:
    ssh = check_ssh(server, host)
    if not ssh.ok:
        return SshAnswer(
            ssh=ssh, units=_unknown_units(server.name, units, f"unknown: {ssh.detail}")
        )
    answers: dict[str, CheckResult] = {}
    for check in server.checks:
        if isinstance(check, SystemdCheck) and check.unit not in answers:
            answers[check.unit] = check_systemd(server, check, host)
    return SshAnswer(ssh=ssh, units=answers, metrics_error=metrics_error)


@task(
    name="run-health-checks",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    task_run_name="health-checks-{server.name}",
)
def run_health_checks(server: Server, host: RemoteHost | None) -> list[CheckResult]:
    """Run a server's health checks and an SSH reachability check.

    Read-only, so retried (on an unexpected error; a failing check is a result, not
    an error). TCP and HTTP checks run from the caretaker host; the SSH and systemd
    checks run over ``host``. Every check is bounded by its timeout.

    Args:
        server: the server, with its checks from the inventory.
        host: its SSH session; None skips the SSH check, and its systemd checks are
            reported unknown (never healthy).

    Returns:
        One result per check: SSH first (when there is a host), then the inventory's
        checks in order.
    """
    return server_checks(server, host)


def server_checks(server: Server, host: RemoteHost | None) -> list[CheckResult]:
    """The checks of ``run_health_checks``, as a plain function (no task, no retries)."""
    return _server_checks(server, host, metrics=False)[0]


def _server_checks(
    server: Server, host: RemoteHost | None, *, metrics: bool
) -> tuple[list[CheckResult], SshAnswer | None]:
    """SSH first (one round trip, ``ask_over_ssh``), then the inventory's checks in order:
    tcp and http from here, systemd from the SSH answer."""
    answer = ask_over_ssh(server, host, metrics=metrics) if host is not None else None
    results: list[CheckResult] = [] if answer is None else [answer.ssh]
    for check in server.checks:
        if isinstance(check, TcpCheck):
            results.append(check_tcp(server, check))
        elif isinstance(check, HttpCheck):
            results.append(check_http(server, check))
        elif answer is None:
            results.append(check_systemd(server, check, None))
        else:
            results.append(answer.units[check.unit])
    return results, answer


def summarize_checks(results: Sequence[CheckResult]) -> tuple[bool, list[str]]:
    """Whether a server passed its checks, and one line per failed check (pure).

    Args:
        results: the server's check results.

    Returns:
        ``(passed, failures)``: passed only when there was at least one check and
        every one was ok (unknown counts as failed); each failure reads
        ``<kind> <target>: <detail>``.
    """
    failures = [f"{r.kind} {r.target}: {r.detail}" for r in results if not r.ok]
    if not results:
        failures.append("no health check ran")
    return not failures, failures


# ------------------------------------------------------------- a health-check round, batched

#: Servers per ``check_servers`` task, at least: a round over 500 servers is 20 task runs,
#: not 1000 (more per batch on a big round: ``round_batch_size``).
HEALTH_BATCH_SIZE = 25
#: Threads checking servers at once in a whole round (spread over its batches).
HEALTH_CONCURRENCY = 64
#: Threads a batch gets, about, on a big round (``round_batch_size``).
_BATCH_THREADS = 8

# Attempts of one server's checks (an unexpected error, not a failed check) and their
# pauses: what ``run_health_checks``'s retries do, per server inside a batch.
_CHECK_RETRY_DELAYS_S = (1.0, 5.0)


class ServerCheck(BaseModel):
    """One server's part of a health-check round: its check results and its metrics."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    results: list[CheckResult] | None = Field(
        default=None, description="One result per check (SSH first); None when they crashed."
    )
    crashed: str | None = Field(
        default=None, description="Why the checks themselves raised (after retries)."
    )
    metrics: HostFacts | None = Field(
        default=None, description="Load, memory and disks, when SSH reached the server."
    )
    metrics_error: str | None = Field(default=None, description="Why metrics are missing.")


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_server(
    server: Server,
    host: RemoteHost | None,
    *,
    retry_delays: Sequence[float] | None = None,
) -> ServerCheck:
    """Run one server's checks, its metrics read in the same SSH round trip.

    Never raises: an unexpected error in the checks is retried after each of
    ``retry_delays``, and if it lasts the server is reported ``crashed`` (no results:
    that is not an outage). Metrics come only from a server SSH reached; when they
    could not be read, ``metrics_error`` says why.

    Args:
        server: the server, with its checks from the inventory.
        host: its SSH session; None: no SSH check and no metrics.
        retry_delays: pauses between attempts of the checks (default 1 s, 5 s).
    """
    log = _logger()
    if retry_delays is None:
        retry_delays = _CHECK_RETRY_DELAYS_S
    for delay in (*retry_delays, None):
        try:
            results, answer = _server_checks(server, host, metrics=True)
        except Exception as exc:  # a crash is this server's result
            if delay is None:
                return ServerCheck(server=server.name, crashed=_error(exc))
            log.warning(
                "%s: health checks raised %s; again in %gs", server.name, _error(exc), delay
            )
            time.sleep(delay)
        else:
            if answer is None or not answer.ssh.ok:
                return ServerCheck(server=server.name, results=results)
            return ServerCheck(
                server=server.name,
                results=results,
                metrics=answer.metrics,
                metrics_error=answer.metrics_error,
            )
    raise AssertionError("unreachable")  # pragma: no cover


def health_batches(sizes: Sequence[int], batch_size: int = HEALTH_BATCH_SIZE) -> list[range]:
    """Cut a round's servers into batches (pure).

    Args:
        sizes: the number of servers of each client, in order.
        batch_size: at most this many servers per batch; a batch never mixes clients.

    Returns:
        One ``range`` of server indexes (into the clients' servers laid end to end) per
        batch; the batches of a client are of even size.
    """
    batches: list[range] = []
    start = 0
    for size in sizes:
        count = -(-size // batch_size)  # ceil
        for i in range(count):
            batches.append(range(start + size * i // count, start + size * (i + 1) // count))
        start += size
    return batches


def round_batch_size(total: int, concurrency: int = HEALTH_CONCURRENCY) -> int:
    """Servers per batch in a round of ``total`` servers (pure).

    ``HEALTH_BATCH_SIZE``, or more on a big round, so that a batch gets about
    ``_BATCH_THREADS`` of the round's ``concurrency`` threads: with 25 servers a batch at
    1,000 servers, 40 batches shared 64 threads as 1 or 2 each, and a one-thread batch
    took twice as long as the others (the round waits for its slowest batch); with 125,
    10 batches get 6 or 7 threads each, and 10 task runs cost less than 40.
    """
    return max(HEALTH_BATCH_SIZE, -(-total * _BATCH_THREADS // max(concurrency, 1)))


def batch_threads(lengths: Sequence[int], concurrency: int = HEALTH_CONCURRENCY) -> list[int]:
    """Threads of each batch of a round (pure): ``concurrency`` shared in proportion to
    the batches' servers (largest remainders), each batch at least 1 and at most one per
    server.

    They add up to at most ``concurrency`` (unless there are more batches than that): each
    batch holds one SSH session slot per thread, and a round asking for more slots than
    the limit has made one of its own batches wait for the others (Prefect answers a
    refused acquisition with a retry seconds later).

    Args:
        lengths: the servers of each batch, in order.
        concurrency: the round's threads (at most the SSH session limit).

    Returns:
        One thread count per batch, in order.
    """
    total = sum(lengths)
    if total == 0:
        return [1] * len(lengths)
    shares = [concurrency * n / total for n in lengths]
    threads = [max(1, min(n, int(share))) for n, share in zip(lengths, shares, strict=True)]
    by_remainder = sorted(range(len(lengths)), key=lambda i: int(shares[i]) - shares[i])
    left = concurrency - sum(threads)
    for i in by_remainder:
        if left <= 0:
            break
        if threads[i] < lengths[i]:
            threads[i] += 1
            left -= 1
    while sum(threads) > concurrency and max(threads) > 1:  # batches raised to 1 thread
        threads[threads.index(max(threads))] -= 1
    return threads


@task(
    name="check-servers",
    cache_policy=NO_CACHE,
    task_run_name="health-checks-{label}",
)
def check_servers(
    label: str,
    servers: Sequence[tuple[Server, RemoteHost | None]],
    workers: int,
    round_key: str | None = None,
) -> list[ServerCheck]:
    """Check a batch of servers, ``workers`` at a time: per server ``check_server``.

    One task run per batch instead of two per server: on a large fleet, creating task runs
    and their state events cost more than the checks. Per server results, retries and
    crash isolation are ``check_server``'s. Each server's session is closed as soon as
    its checks and metrics are done (the next ``run`` would reconnect): an open paramiko
    connection keeps a thread polling its socket ten times a second, and hundreds of them
    idle until the end of the round cost more CPU than the checks.

    Args:
        label: names the task run (``<client>-<n>``).
        servers: each server with its SSH session (None: no SSH check, no metrics).
        workers: threads (each holds a slot of ``caretaker-ssh-sessions`` meanwhile).
        round_key: the round's id: the batches of a round in this process share their
            threads (core/lanes.py), so none waits idle while another still has servers.

    Returns:
        One ``ServerCheck`` per server, in order.
    """
    threads = max(1, min(workers, len(servers)))
    # A thread has at most one session open at a time: one slot of the estate-wide SSH
    # session limit per thread, held while the batch works (tasks/limits.py). A server of
    # this batch may be checked on another batch's thread: that batch holds its slot, and
    # the check runs in this task's context (its logs are this task's).
    with ssh_sessions(threads):
        return run_on_lanes(
            [functools.partial(_check_and_close, server, host) for server, host in servers],
            threads,
            round_key=round_key,
        )


def _check_and_close(server: Server, host: RemoteHost | None) -> ServerCheck:
    try:
        return check_server(server, host)
    finally:
        if host is not None:
            host.close()
