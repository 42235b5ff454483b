"""Health checks without a fleet: systemctl's answers from fixtures, HTTP through a mock
transport, TCP against sockets on 127.0.0.1, and the one SSH health script run in a real
local shell (dash and bash) with a recorded systemctl answer."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.errors import CommandTimeout, ConnectError
from inventory import HttpCheck, Server, SystemdCheck, TcpCheck
from tasks.checks import (
    SSH_PROBE,
    CheckResult,
    batch_threads,
    build_health_script,
    check_http,
    check_server,
    check_servers,
    check_tcp,
    health_batches,
    parse_health_output,
    parse_systemctl_is_active,
    round_batch_size,
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


class _Answers(BaseHTTPRequestHandler):
    """``/health`` 200 ``ok``, ``/503``, ``/moved`` 301, ``/slow`` after 3 s, ``/auth`` echoes
    the Authorization header's status (200 with it, 401 without), ``/cut`` hangs up."""

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/cut":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status = {"/health": 200, "/503": 503, "/moved": 301}.get(self.path, 404)
        if self.path == "/auth":
            status = 200 if self.headers["Authorization"] == "Basic dTpwQHNz" else 401
        try:
            self.send_response(status)
            if status == 301:
                self.send_header("Location", "/health")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the check gave up first

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    """A real HTTP service on a free loopback port."""
    service = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    service.daemon_threads = True
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    yield int(service.server_address[1])
    service.shutdown()
    service.server_close()


def _http(url: str, **check: Any) -> CheckResult:
    srv = server({"type": "http", "url": url, **check})
    (http_check,) = srv.checks
    assert isinstance(http_check, HttpCheck)
    return check_http(srv, http_check)


def test_an_http_check_passes_on_the_expected_status_and_reports_latency(http_port: int) -> None:
    url = f"http://127.0.0.1:{http_port}/health"
    checked = _http(url)
    assert checked.ok and checked.detail == "HTTP 200"
    assert checked.kind == "http" and checked.target == url
    assert checked.latency_ms is not None and checked.latency_ms >= 0


def test_an_http_check_fails_on_another_status(http_port: int) -> None:
    checked = _http(f"http://127.0.0.1:{http_port}/503")
    assert not checked.ok and checked.detail == "HTTP 503 (expected 200)"


def test_a_redirect_is_reported_not_followed(http_port: int) -> None:
    assert _http(f"http://127.0.0.1:{http_port}/moved", expect_status=301).ok
    assert _http(f"http://127.0.0.1:{http_port}/moved").detail == "HTTP 301 (expected 200)"


def test_credentials_in_the_url_are_sent_as_basic_auth(http_port: int) -> None:
    assert _http(f"http://u:p%40ss@127.0.0.1:{http_port}/auth").ok
    assert _http(f"http://127.0.0.1:{http_port}/auth").detail == "HTTP 401 (expected 200)"


def test_an_http_timeout_fails_with_its_bound(http_port: int) -> None:
    checked = _http(f"http://127.0.0.1:{http_port}/slow", timeout="1s")
    assert not checked.ok and checked.detail == "timed out after 1s"
    assert checked.latency_ms is None


def test_an_unreachable_http_service_fails_with_the_reason() -> None:
    checked = _http(f"http://127.0.0.1:{_closed_port()}/health")
    assert not checked.ok and "Connection refused" in checked.detail


def test_a_service_that_hangs_up_fails_with_the_reason(http_port: int) -> None:
    checked = _http(f"http://127.0.0.1:{http_port}/cut")
    assert not checked.ok and checked.detail.startswith("RemoteDisconnected: ")


def test_an_https_check_verifies_the_certificate(http_port: int) -> None:
    # A plain-HTTP service spoken to in TLS: the handshake fails, never a pass.
    checked = _http(f"https://127.0.0.1:{http_port}/health")
    assert not checked.ok and checked.latency_ms is None


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


# ------------------------------------------------- one SSH round trip, in a real shell


class ShellHost:
    """Runs each command as sshd does, in a login shell (``<shell> -c <command>``), here.

    ``systemctl`` is a script first on PATH answering from a recorded fixture (its stdout,
    stderr and exit code), or missing (``systemctl=None``). ``fail`` raises instead of
    running a command that starts with ``fail[0]``; ``timeout`` raises ``CommandTimeout``
    on the health script.
    """

    def __init__(
        self,
        folder: Path,
        systemctl: str | None = "systemctl_is_active__documented_active",
        *,
        shell: str = "sh",
        fail: tuple[str, Exception] | None = None,
        timeout: bool = False,
    ) -> None:
        self.name = "web-1"
        self.shell, self.fail, self.timeout = shell, fail, timeout
        self.commands: list[str] = []
        self.bin = folder / "bin"
        self.bin.mkdir(exist_ok=True)
        for tool in ("cat", "df"):
            (self.bin / tool).unlink(missing_ok=True)
            (self.bin / tool).symlink_to(shutil.which(tool) or tool)
        fake = self.bin / "systemctl"
        fake.unlink(missing_ok=True)
        if systemctl is not None:
            doc = json.loads((FIXTURES / f"{systemctl}.json").read_text())
            (folder / "out").write_text(doc["stdout"])
            (folder / "err").write_text(doc["stderr"])
            fake.write_text(
                f"#!/bin/sh\ncat '{folder}/out'\ncat '{folder}/err' >&2\nexit {doc['exit_code']}\n"
            )
            fake.chmod(0o755)

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        self.commands.append(command)
        if self.fail is not None and command.startswith(self.fail[0]):
            raise self.fail[1]
        if self.timeout and command.startswith("LC_ALL=C"):
            raise CommandTimeout(self.name, "the health script", kwargs.get("timeout", 0))
        done = subprocess.run(
            [shutil.which(self.shell) or self.shell, "-c", command],
            capture_output=True,
            text=True,
            env={"PATH": str(self.bin)},
            check=False,
        )
        return CommandResult(
            host=self.name,
            command=command[:40],
            exit_code=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr,
            duration_s=0,
        )

    def close(self) -> None:
        pass


SHELLS = ["sh", "bash"]  # sh is dash on Debian


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("path", SYSTEMCTL, ids=[p.stem for p in SYSTEMCTL])
def test_a_unit_asked_in_the_health_script_reads_as_asked_on_its_own(
    path: Path, shell: str, tmp_path: Path
) -> None:
    doc = json.loads(path.read_text())
    srv = server({"type": "systemd", "unit": "ssh.service"})
    host = ShellHost(tmp_path, path.stem, shell=shell)
    ssh, systemd = run_health_checks.fn(srv, host)
    assert ssh.kind == "ssh" and ssh.ok and ssh.detail == "ok"
    expected = doc["expected"]
    assert (systemd.ok, systemd.unknown, systemd.detail) == (
        expected["ok"],
        expected["unknown"],
        expected["detail"],
    )
    assert len(host.commands) == 1  # one SSH command for the probe and the unit


@pytest.mark.parametrize("shell", SHELLS)
def test_a_host_without_systemctl_has_its_units_unknown(shell: str, tmp_path: Path) -> None:
    srv = server({"type": "systemd", "unit": "ssh.service"})
    _, systemd = run_health_checks.fn(srv, ShellHost(tmp_path, None, shell=shell))
    assert not systemd.ok and systemd.unknown
    assert systemd.detail == "unknown: systemd not running (systemctl is not installed)"


@pytest.mark.parametrize("shell", SHELLS)
def test_each_unit_gets_its_own_answer_and_a_unit_named_twice_is_asked_once(
    shell: str, tmp_path: Path
) -> None:
    script = build_health_script(["a.service", "b b.service", "a.service"], metrics=False)
    assert script.count("systemctl is-active") == 2
    assert "systemctl is-active 'b b.service'" in script  # quoted
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "systemctl"
    # a.service is active; the other is failed and says so on stderr too.
    fake.write_text(
        '#!/bin/sh\nif [ "$2" = a.service ]; then echo active; exit 0; fi\n'
        "echo failed; echo 'Warning: unit changed on disk' >&2; exit 3\n"
    )
    fake.chmod(0o755)
    done = subprocess.run(
        [shutil.which(shell) or shell, "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path / "bin")},
    )
    answer = parse_health_output(
        "web-1",
        "10.0.0.1:22",
        ["a.service", "b b.service"],
        metrics=False,
        exit_code=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
    )
    assert answer.units["a.service"].ok and answer.units["a.service"].detail == "active"
    assert not answer.units["b b.service"].ok
    assert answer.units["b b.service"].detail == "failed (exit 3)"
    assert answer.metrics is None


@pytest.mark.parametrize("shell", SHELLS)
def test_the_metrics_come_from_the_same_script(shell: str, tmp_path: Path) -> None:
    host = ShellHost(tmp_path, shell=shell)
    checked = check_server(server({"type": "systemd", "unit": "nginx.service"}), host, **NO_WAIT)
    assert checked.results is not None
    assert [(r.kind, r.ok) for r in checked.results] == [("ssh", True), ("systemd", True)]
    assert len(host.commands) == 1
    facts = checked.metrics
    assert facts is not None and facts.errors == {}, facts
    assert facts.load is not None and facts.memory is not None and facts.disks
    assert checked.metrics_error is None


def test_a_script_cut_short_leaves_its_units_unknown_and_names_the_missing_metrics() -> None:
    stdout = "@@caretaker:begin@@\n" + json.loads((FACTS / "load__dev.json").read_text())["output"]
    stdout += "\n@@caretaker:load:0@@\n"
    answer = parse_health_output(
        "web-1", "t", ["nginx.service"], metrics=True, exit_code=0, stdout=stdout, stderr=""
    )
    assert answer.ssh.ok
    unit = answer.units["nginx.service"]
    assert not unit.ok and unit.unknown and "cut short" in unit.detail
    assert answer.metrics is not None and answer.metrics.load is not None
    assert set(answer.metrics.errors) == {"memory", "disks"}


def test_a_shell_that_fails_is_ssh_failing_and_its_units_unknown() -> None:
    answer = parse_health_output(
        "web-1",
        "10.0.0.1:22",
        ["nginx.service"],
        metrics=True,
        exit_code=1,
        stdout="",
        stderr="This account is currently not available.\n",
    )
    assert not answer.ssh.ok
    assert answer.ssh.detail == (
        "the health script exited 1: This account is currently not available."
    )
    unit = answer.units["nginx.service"]
    assert unit.unknown and unit.detail == "unknown: the health script exited 1"
    assert answer.metrics is None


def test_health_checks_run_ssh_first_then_the_inventorys_checks_in_order(
    listening_port: int, tmp_path: Path
) -> None:
    srv = server(
        {"type": "systemd", "unit": "nginx.service"}, {"type": "tcp", "port": listening_port}
    )
    host = ShellHost(tmp_path)
    results = run_health_checks.fn(srv, host)
    assert [(r.kind, r.ok) for r in results] == [("ssh", True), ("systemd", True), ("tcp", True)]
    (command,) = host.commands
    assert "systemctl is-active nginx.service" in command
    assert "/proc/meminfo" not in command  # the maintenance verification reads no metrics


def test_an_unreachable_host_fails_its_ssh_check_and_its_units_are_unknown(
    tmp_path: Path,
) -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    refused = ConnectError("web-1", "connection refused (is sshd running?)")
    host = ShellHost(tmp_path, fail=("", refused))
    results = run_health_checks.fn(srv, host)
    assert [(r.kind, r.ok, r.unknown) for r in results] == [
        ("ssh", False, False),
        ("systemd", False, True),
    ]
    assert "connection refused" in results[0].detail
    assert "connection refused" in results[1].detail
    assert len(host.commands) == 1  # not asked again for the unit


def test_without_a_session_there_is_no_ssh_check_and_units_are_unknown() -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    (only,) = run_health_checks.fn(srv, None)
    assert only.kind == "systemd" and only.unknown and not only.ok
    assert only.detail == "unknown: no SSH session to ask systemd"


def test_a_systemd_check_from_the_inventory_keeps_its_unit_as_target(tmp_path: Path) -> None:
    srv = server({"type": "systemd", "unit": "getty@tty1.service"})
    (check,) = srv.checks
    assert isinstance(check, SystemdCheck)
    host = ShellHost(tmp_path, "systemctl_is_active__documented_failed")
    (_, systemd) = run_health_checks.fn(srv, host)
    assert systemd.target == "getty@tty1.service"
    assert systemd.detail == "failed (exit 3)"


def test_a_script_that_times_out_is_asked_again_one_question_at_a_time(tmp_path: Path) -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    host = ShellHost(tmp_path, timeout=True)
    checked = check_server(srv, host, **NO_WAIT)
    assert checked.results is not None
    assert [(r.kind, r.ok) for r in checked.results] == [("ssh", True), ("systemd", True)]
    assert host.commands[1:] == [SSH_PROBE, "systemctl is-active nginx.service"]
    assert checked.metrics is None and "timed out" in (checked.metrics_error or "")


def test_a_script_that_times_out_on_a_host_whose_probe_fails_too_is_ssh_down(
    tmp_path: Path,
) -> None:
    srv = server({"type": "systemd", "unit": "nginx.service"})
    lost = ConnectError("web-1", "connection lost")
    host = ShellHost(tmp_path, timeout=True, fail=(SSH_PROBE, lost))
    checked = check_server(srv, host, **NO_WAIT)
    assert checked.results is not None
    ssh, unit = checked.results
    assert not ssh.ok and "connection lost" in ssh.detail
    assert unit.unknown and "connection lost" in unit.detail
    assert checked.metrics is None and checked.metrics_error is None


# ------------------------------------------------------------- a round, batched


FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
NO_WAIT: dict[str, Any] = {"retry_delays": (0, 0)}


def test_a_server_ssh_did_not_reach_gets_no_metrics_and_no_metrics_error(tmp_path: Path) -> None:
    host = ShellHost(tmp_path, fail=("", ConnectError("web-1", "connection refused")))
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is not None and not checked.results[0].ok
    assert checked.metrics is None and checked.metrics_error is None
    assert len(host.commands) == 1


def test_checks_that_keep_raising_make_a_crash_not_an_outage_after_the_retries(
    tmp_path: Path,
) -> None:
    host = ShellHost(tmp_path, fail=("", RuntimeError("boom")))
    checked = check_server(server(), host, **NO_WAIT)
    assert checked.results is None and checked.crashed == "RuntimeError: boom"
    assert len(host.commands) == 3  # the first attempt and two retries


def test_a_batch_returns_one_result_per_server_in_order_and_isolates_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("tasks.checks._CHECK_RETRY_DELAYS_S", (0.0, 0.0))
    names = [f"web-{i}" for i in range(6)]
    hosts = []
    for i in range(6):
        (tmp_path / str(i)).mkdir()
        fail = ("", RuntimeError("boom")) if i == 2 else None
        hosts.append(ShellHost(tmp_path / str(i), fail=fail))
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


@pytest.mark.parametrize(
    ("total", "concurrency", "size"),
    [
        (8, 3, 25),  # a small round: the default batch
        (250, 64, 32),
        (500, 64, 63),
        (1000, 64, 125),  # 10 batches of about 8 threads, not 40 of 1 or 2
        (1000, 8, 1000),  # a low session limit: one thread per batch's worth
        (0, 64, 25),
    ],
)
def test_a_big_round_gets_bigger_batches(total: int, concurrency: int, size: int) -> None:
    assert round_batch_size(total, concurrency) == size


@pytest.mark.parametrize(
    ("lengths", "concurrency", "threads"),
    [
        ([25] * 10, 64, [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]),  # 64 exactly, not 10 x 7 = 70
        ([25] * 40, 64, [2] * 24 + [1] * 16),
        ([100] * 10, 64, [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]),
        ([8], 3, [3]),
        ([3], 64, [3]),  # never more threads than servers
        ([200, 1, 1], 64, [62, 1, 1]),  # tiny batches get one, the sum stays 64
        ([50, 10], 64, [50, 10]),  # fewer servers than threads
        ([25] * 70, 64, [1] * 70),  # more batches than slots: one each
        ([], 64, []),
    ],
)
def test_the_threads_of_a_round_are_shared_by_its_batches_within_the_limit(
    lengths: list[int], concurrency: int, threads: list[int]
) -> None:
    got = batch_threads(lengths, concurrency)
    assert got == threads
    if len(lengths) <= concurrency:
        assert sum(got) <= concurrency
