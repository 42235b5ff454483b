"""Health checks without a fleet: systemctl's answers from fixtures, HTTP through a mock
transport, TCP against sockets on 127.0.0.1, SSH and systemd through a scripted host."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.errors import ConnectError
from inventory import HttpCheck, Server, SystemdCheck, TcpCheck
from tasks.checks import (
    SSH_PROBE,
    CheckResult,
    batch_workers,
    check_http,
    check_server,
    check_servers,
    check_tcp,
    health_batches,
    parse_systemctl_is_active,
    run_health_checks,
    summarize_checks,
    systemctl_is_active_command,
)
from tasks.remote import CommandResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "patching"
SYSTEMCTL = sorted(FIXTURES.glob("systemctl_is_active__*.json"))


def server(*checks: dict[str, Any], address: str = "127.0.0.1") -> Server:
    return Server.model_validate(
        {
            "name": "web-1",
            "role": "production",
            "address": address,
            "ssh_block": "ssh",
            "os_family": "debian",
            "provider": {"type": "sandbox"},
            "checks": list(checks),
        }
    )


def result(kind: Any, ok: bool, detail: str = "", unknown: bool = False) -> CheckResult:
    return CheckResult(
        server="web-1", kind=kind, target="t", ok=ok, detail=detail or kind, unknown=unknown
    )


# ------------------------------------------------------------------------- systemctl


@pytest.mark.parametrize("path", SYSTEMCTL, ids=[p.stem for p in SYSTEMCTL])
def test_systemctl_is_active_output_is_read_as_read_by_hand(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["source"].startswith(("recorded on ", "composed from "))
    state = parse_systemctl_is_active(doc["exit_code"], doc["stdout"], doc["stderr"])
    assert state.model_dump() == doc["expected"]


def test_the_recorded_outputs_come_from_the_real_command() -> None:
    recorded = [
        json.loads(p.read_text())
        for p in SYSTEMCTL
        if "recorded" in json.loads(p.read_text())["source"]
    ]
    assert len(recorded) >= 2
    assert {d["command"] for d in recorded} == {systemctl_is_active_command("ssh.service")}


def test_systemd_not_running_is_never_healthy() -> None:
    for path in SYSTEMCTL:
        doc = json.loads(path.read_text())
        state = parse_systemctl_is_active(doc["exit_code"], doc["stdout"], doc["stderr"])
        if state.unknown:
            assert not state.ok and state.detail.startswith("unknown: "), path.stem


def test_an_active_word_with_a_failing_exit_code_is_not_trusted() -> None:
    state = parse_systemctl_is_active(3, "active\n", "")
    assert not state.ok and state.detail == "active (exit 3)"


def test_a_unit_name_reaches_the_shell_quoted() -> None:
    assert (
        systemctl_is_active_command("getty@tty1.service")
        == "systemctl is-active getty@tty1.service"
    )
    assert systemctl_is_active_command("a b") == "systemctl is-active 'a b'"


# -------------------------------------------------------------------------- summary


def test_a_server_passes_when_every_check_is_ok() -> None:
    assert summarize_checks([result("ssh", True), result("tcp", True)]) == (True, [])


def test_each_failed_check_is_named_with_its_detail() -> None:
    passed, failures = summarize_checks(
        [
            result("ssh", True),
            result("tcp", False, "connection refused"),
            result("systemd", False, "unknown: systemd not running", unknown=True),
        ]
    )
    assert not passed
    assert failures == [
        "tcp t: connection refused",
        "systemd t: unknown: systemd not running",
    ]


def test_no_checks_at_all_is_not_a_pass() -> None:
    assert summarize_checks([]) == (False, ["no health check ran"])


# ------------------------------------------------------------------------------ http


def _http(handler: Any, **check: Any) -> CheckResult:
    spec = {"type": "http", "url": "http://127.0.0.1:8080/health", **check}
    srv = server(spec)
    (http_check,) = srv.checks
    assert isinstance(http_check, HttpCheck)
    return check_http(srv, http_check, transport=httpx.MockTransport(handler))


def test_an_http_check_passes_on_the_expected_status_and_reports_latency() -> None:
    checked = _http(lambda request: httpx.Response(200, text="ok"))
    assert checked.ok and checked.detail == "HTTP 200"
    assert checked.kind == "http" and checked.target == "http://127.0.0.1:8080/health"
    assert checked.latency_ms is not None and checked.latency_ms >= 0


def test_an_http_check_fails_on_another_status() -> None:
    checked = _http(lambda request: httpx.Response(503))
    assert not checked.ok and checked.detail == "HTTP 503 (expected 200)"


def test_a_redirect_is_reported_not_followed() -> None:
    def redirect(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/health", "the redirect was followed"
        return httpx.Response(301, headers={"location": "/elsewhere"})

    assert _http(redirect, expect_status=301).ok
    assert _http(redirect).detail == "HTTP 301 (expected 200)"


def test_an_http_timeout_fails_with_its_bound() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    checked = _http(slow, timeout="2s")
    assert not checked.ok and checked.detail == "timed out after 2s"
    assert checked.latency_ms is None


def test_an_unreachable_http_service_fails_with_the_reason() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    checked = _http(refused)
    assert not checked.ok and "Connection refused" in checked.detail


# ------------------------------------------------------------------------------- tcp


@pytest.fixture()
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_tcp_check_passes_when_the_port_accepts(listening_port: int) -> None:
    srv = server({"type": "tcp", "port": listening_port})
    (tcp,) = srv.checks
    assert isinstance(tcp, TcpCheck)
    checked = check_tcp(srv, tcp)
    assert checked.ok and checked.target == f"127.0.0.1:{listening_port}"
    assert checked.latency_ms is not None


def test_a_tcp_check_fails_when_the_port_refuses() -> None:
    port = _closed_port()
    srv = server({"type": "tcp", "port": port})
    (tcp,) = srv.checks
    assert isinstance(tcp, TcpCheck)
    checked = check_tcp(srv, tcp)
    assert not checked.ok and checked.detail == "connection refused"


# ---------------------------------------------------------------- the task, scripted


class ScriptedHost:
    """Answers ``true`` and ``systemctl is-active`` from a recorded fixture."""

    def __init__(self, systemctl_fixture: str, ssh_error: bool = False) -> None:
        self.name = "web-1"
        self.doc = json.loads((FIXTURES / f"{systemctl_fixture}.json").read_text())
        self.ssh_error = ssh_error
        self.commands: list[str] = []

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        self.commands.append(command)
        if self.ssh_error:
            raise ConnectError(self.name, "connection refused (is sshd running?)")
        if command == SSH_PROBE:
            code, out, err = 0, "", ""
        else:
            code, out, err = self.doc["exit_code"], self.doc["stdout"], self.doc["stderr"]
        return CommandResult(
            host=self.name, command=command, exit_code=code, stdout=out, stderr=err, duration_s=0
        )

    def close(self) -> None:
        pass


def test_health_checks_run_ssh_first_then_the_inventorys_checks_in_order(
    listening_port: int,
) -> None:
    srv = server(
        {"type": "tcp", "port": listening_port}, {"type": "systemd", "unit": "nginx.service"}
    )
    host = ScriptedHost("systemctl_is_active__documented_active")
    results = run_health_checks.fn(srv, host)
    assert [(r.kind, r.ok) for r in results] == [("ssh", True), ("tcp", True), ("systemd", True)]
    assert host.commands == ["true", "systemctl is-active nginx.service"]


def test_a_unit_on_a_host_without_systemd_is_unknown_not_healthy() -> None:
    srv = server({"type": "systemd", "unit": "ssh.service"})
    results = run_health_checks.fn(srv, ScriptedHost("systemctl_is_active__sandbox"))
    systemd = results[-1]
    assert systemd.kind == "systemd" and not systemd.ok and systemd.unknown
    assert systemd.detail.startswith("unknown: systemd not running")
    assert summarize_checks(results)[0] is False


def test_an_unreachable_host_fails_its_ssh_check_and_its_units_are_unknown() -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    results = run_health_checks.fn(
        srv, ScriptedHost("systemctl_is_active__documented_active", ssh_error=True)
    )
    assert [(r.kind, r.ok, r.unknown) for r in results] == [
        ("ssh", False, False),
        ("systemd", False, True),
    ]
    assert "connection refused" in results[0].detail


def test_without_a_session_there_is_no_ssh_check_and_units_are_unknown() -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    (only,) = run_health_checks.fn(srv, None)
    assert only.kind == "systemd" and only.unknown and not only.ok
    assert only.detail == "unknown: no SSH session to ask systemd"


def test_a_systemd_check_from_the_inventory_keeps_its_unit_as_target() -> None:
    srv = server({"type": "systemd", "unit": "getty@tty1.service"})
    (check,) = srv.checks
    assert isinstance(check, SystemdCheck)
    (_, systemd) = run_health_checks.fn(srv, ScriptedHost("systemctl_is_active__documented_failed"))
    assert systemd.target == "getty@tty1.service"
    assert systemd.detail == "failed (exit 3)"


# ------------------------------------------------------------- a round, batched


FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "facts"


def _metrics_stdout() -> str:
    """What the metrics script prints, composed from recorded fact outputs."""
    parts = ["@@caretaker:begin@@"]
    for name, fixture in (("load", "load__dev"), ("memory", "memory__dev_no_swap")):
        output = json.loads((FACTS / f"{fixture}.json").read_text())["output"]
        parts.append(f"{output}\n@@caretaker:{name}:0@@")
    return "\n".join(parts) + "\n"


class MetricsHost(ScriptedHost):
    """Answers ``true``, and the metrics script with recorded load and memory."""

    def __init__(self, raise_on: str | None = None, error: Exception | None = None) -> None:
        super().__init__("systemctl_is_active__documented_active")
        self.raise_on, self.error = raise_on, error

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        if self.raise_on is not None and command.startswith(self.raise_on):
            self.commands.append(command)
            raise self.error or RuntimeError("boom")
        if command.startswith("LC_ALL=C"):
            self.commands.append(command)
            out = _metrics_stdout()
            return CommandResult(
                host=self.name, command="facts", exit_code=0, stdout=out, stderr="", duration_s=0
            )
        return super().run(command, **kwargs)


NO_WAIT: dict[str, Any] = {"retry_delays": (0, 0), "metrics_retry_delays": (0,)}


def test_a_server_reached_over_ssh_gets_its_metrics_from_the_same_session() -> None:
    host = MetricsHost()
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is not None and [r.kind for r in checked.results] == ["ssh"]
    assert host.commands[0] == "true" and host.commands[1].startswith("LC_ALL=C")
    assert checked.metrics is not None and checked.metrics.load is not None
    assert checked.metrics.load.l1 == 1.0 and checked.metrics.memory is not None
    assert checked.crashed is None and checked.metrics_error is None


def test_a_server_ssh_did_not_reach_gets_no_metrics_and_no_metrics_error() -> None:
    host = ScriptedHost("systemctl_is_active__documented_active", ssh_error=True)
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is not None and not checked.results[0].ok
    assert checked.metrics is None and checked.metrics_error is None
    assert host.commands == ["true"]


def test_checks_that_keep_raising_make_a_crash_not_an_outage_after_the_retries() -> None:
    host = MetricsHost(raise_on="true")
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is None and checked.crashed == "RuntimeError: boom"
    assert host.commands == ["true"] * 3  # the first attempt and two retries


def test_metrics_that_keep_failing_are_named_and_the_checks_kept() -> None:
    host = MetricsHost(raise_on="LC_ALL=C", error=ConnectError("web-1", "connection lost"))
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is not None and checked.results[0].ok
    assert checked.metrics is None and "connection lost" in (checked.metrics_error or "")
    assert len(host.commands) == 3  # true, then the metrics twice


def test_a_batch_returns_one_result_per_server_in_order_and_isolates_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tasks.checks._CHECK_RETRY_DELAYS_S", (0.0, 0.0))
    names = [f"web-{i}" for i in range(6)]
    hosts = [MetricsHost(raise_on="true") if i == 2 else MetricsHost() for i in range(6)]
    batch = [
        (server().model_copy(update={"name": n}), h) for n, h in zip(names, hosts, strict=True)
    ]
    out = check_servers.fn("acme-1", batch, 4)
    assert [c.server for c in out] == names
    assert [c.crashed is not None for c in out] == [False, False, True, False, False, False]
    assert all(c.metrics is not None for i, c in enumerate(out) if i != 2)


def test_a_round_is_cut_into_even_batches_that_never_mix_clients() -> None:
    batches = health_batches([3, 0, 60, 25], batch_size=25)
    assert batches == [
        range(0, 3),
        range(3, 23),
        range(23, 43),
        range(43, 63),
        range(63, 88),
    ]
    assert health_batches([]) == []


def test_the_threads_of_a_round_are_spread_over_its_batches() -> None:
    assert batch_workers(20, 25, concurrency=64) == 4
    assert batch_workers(1, 3, concurrency=64) == 3
    assert batch_workers(100, 25, concurrency=64) == 1
