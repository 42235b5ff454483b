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

from blocks.errors import ConnectError
from blocks.inventory import HttpCheck, Server, SystemdCheck, TcpCheck
from tasks.checks import (
    SSH_PROBE,
    CheckResult,
    check_http,
    check_tcp,
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
