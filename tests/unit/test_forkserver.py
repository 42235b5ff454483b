"""The fork server and its client: the protocol and decisions as tables, then the process
plumbing with real processes (a stand-in main module instead of Prefect's engine, no
preload: about 2 s), and the fallback to Prefect's own engine command."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.forkclient import (
    ENV_SOCKET,
    MAGIC,
    MAX_REQUEST,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    exit_code,
    fallback_reason,
)
from deployments.forkserver import (
    CARETAKER_PACKAGES,
    PRELOAD,
    caretaker_modules,
    child_sys_path,
    exit_status,
    fork_hazards,
    share_ssl_contexts,
    shared_context_key,
)

PROBE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "forkserver"
SERVER = (sys.executable, "-m", "deployments.forkserver")


def framed(fields: object) -> bytes:
    body = json.dumps(fields).encode()
    return MAGIC + len(body).to_bytes(4, "big") + body


def test_a_request_round_trips_with_its_environment_and_folder() -> None:
    env = {"PREFECT__FLOW_RUN_ID": "1234", "EMPTY": "", "SPACES": "a b=c", "UNI": "é\udcff"}
    data = encode_request(["a", "--b"], env, "/tmp/run")
    assert data.startswith(MAGIC)
    assert decode_request(data) == (["a", "--b"], env, "/tmp/run")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XXXX\x00\x00\x00\x02{}", "not a fork-server request"),
        (MAGIC + b"\x00\x00\x00\x05{}", "2 bytes, 5 announced"),
        (MAGIC + b"\x7f\x00\x00\x00{}", "more than"),
        (MAGIC + b"\x00\x00\x00\x02[]", "a JSON object"),
        (MAGIC + b"\x00\x00\x00\x03{x}", "not JSON"),
        (encode_request(["a"], {}, "relative/dir"), "absolute path"),
        (framed({"argv": "a", "env": {}, "cwd": "/x"}), "argv must be a list"),
        (framed({"argv": ["a"], "env": {"A": 1}, "cwd": "/x"}), "env must map strings"),
        (framed({"argv": ["a"], "env": {}}), "absolute path"),
        (MAGIC[:2], "header is 8 bytes"),
    ],
)
def test_what_a_malformed_request_is_refused_for(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_request(data)


def test_a_request_larger_than_the_limit_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="more than"):
        encode_request([], {"BIG": "x" * MAX_REQUEST}, "/")


@pytest.mark.parametrize("fields", [{"pid": 4242}, {"status": 256}, {"error": "refused: x"}])
def test_a_reply_is_one_line_that_round_trips(fields: dict[str, int | str]) -> None:
    line = encode_reply(**fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_reply(line) == fields


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (0, 0),
        (1 << 8, 1),
        (7 << 8, 7),
        (signal.SIGKILL, -signal.SIGKILL),
        (signal.SIGTERM, -signal.SIGTERM),
        (signal.SIGSEGV | 0x80, -signal.SIGSEGV),  # core dumped
    ],
)
def test_the_exit_code_the_worker_sees_is_the_runs(status: int, code: int) -> None:
    assert exit_code(status) == code


@pytest.mark.parametrize(
    ("code", "status"), [(None, 0), (0, 0), (1, 1), (5, 5), (256, 0), ("a message", 1)]
)
def test_a_runs_sys_exit_is_its_exit_status(code: object, status: int) -> None:
    assert exit_status(code) == status


@pytest.mark.parametrize(
    ("env", "error", "reason"),
    [
        ({ENV_SOCKET: "/run/x/socket"}, None, None),
        ({}, None, "is not set"),
        ({ENV_SOCKET: ""}, None, "is not set"),
        (
            {ENV_SOCKET: "/run/x/socket"},
            FileNotFoundError(2, "No such file or directory"),
            "no fork server answers on /run/x/socket (No such file or directory)",
        ),
        (
            {ENV_SOCKET: "/run/x/socket"},
            ConnectionRefusedError(111, "Connection refused"),
            "Connection refused",
        ),
    ],
)
def test_when_the_client_starts_prefects_engine_itself(
    env: dict[str, str], error: OSError | None, reason: str | None
) -> None:
    found = fallback_reason(env, error)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


@pytest.mark.parametrize(
    ("cwd", "pythonpath", "inherited", "expected"),
    [
        ("/run/a", None, ["/lib/py", "/site"], ["/run/a", "/lib/py", "/site"]),
        ("/run/a", "/extra:rel", ["/site"], ["/run/a", "/extra", "/run/a/rel", "/site"]),
        ("/run/a", "::/site", ["/site", ""], ["/run/a", "/site"]),  # no duplicates, no ""
        ("/run/a", ".", ["/site"], ["/run/a", "/site"]),
    ],
)
def test_the_childs_sys_path_is_what_python_m_would_make_in_the_runs_folder(
    cwd: str, pythonpath: str | None, inherited: list[str], expected: list[str]
) -> None:
    env = {"PYTHONPATH": pythonpath} if pythonpath is not None else {}
    assert child_sys_path(cwd, env, inherited) == expected


@pytest.mark.parametrize(
    ("threads", "tasks", "loop", "hazards"),
    [
        (1, 1, False, []),
        (2, 2, False, ["2 Python threads", "2 OS threads"]),
        (1, 3, False, ["3 OS threads"]),  # a library's native thread (OpenBLAS, jemalloc)
        (1, 1, True, ["an event loop running"]),
    ],
)
def test_the_server_forks_only_with_one_thread_and_no_event_loop(
    threads: int, tasks: int, loop: bool, hazards: list[str]
) -> None:
    assert fork_hazards(threads, tasks, loop) == hazards


def test_caretakers_modules_are_told_from_third_party_ones() -> None:
    names = ["tasks", "tasks.checks", "flows.x", "prefect", "pandas.core", "deployments", "core"]
    assert caretaker_modules(names) == ["core", "deployments", "flows.x", "tasks", "tasks.checks"]


def test_the_preload_list_holds_no_caretaker_package() -> None:
    assert caretaker_modules(PRELOAD) == []
    assert {"prefect.engine", "pandas", "paramiko", "sqlalchemy", "boto3"} <= set(PRELOAD)
    found = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    packages = found["tool"]["setuptools"]["packages"]["find"]["include"]
    assert CARETAKER_PACKAGES == {p.rstrip("*") for p in packages}  # every package caretaker ships


# --- real processes: the server with a stand-in main module, the client as the worker runs it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    folder = tmp_path / "server"
    folder.mkdir(mode=0o700)
    sock = str(folder / "socket")
    proc = subprocess.Popen(
        [*SERVER, sock, "--module", "forkprobe", "--preload", "json"],
        cwd=folder,
        env={**os.environ, "FORKSERVER_ONLY": "server's"},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield sock, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def client(sock: str | None, run_dir: Path, *argv: str, **popen: object) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(PROBE_DIR),
        "PROBE_VALUE": "the job's",
        **({ENV_SOCKET: sock} if sock else {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.forkclient", *argv],
        cwd=run_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,  # type: ignore[call-overload]
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


def test_a_run_gets_the_jobs_env_folder_and_streams_and_its_exit_code_reaches_the_worker(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    sock, proc = server
    out, err = client(sock, tmp_path, "report", "7").communicate(timeout=20)
    report = json.loads(out.splitlines()[0])

    assert report["argv"] == ["report", "7"]
    assert report["env"] == "the job's" and report["forkserver_env"] is None
    assert report["cwd"] == str(tmp_path) and report["path0"] == str(tmp_path)
    assert report["ppid"] == proc.pid  # forked by the server, not started by the client
    assert report["sid"] == report["pid"] == report["pgid"]  # a session of its own
    assert report["caretaker_modules"] == []  # the server's own module is dropped
    assert b"to stderr" in err
    assert out.splitlines()[-1] == b"atexit ran"  # ended as the interpreter would end it
    assert client(sock, tmp_path, "report", "0").wait(20) == 0


def test_a_run_that_raises_prints_its_traceback_and_exits_1(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run = client(server[0], tmp_path, "raise")
    out, err = run.communicate(timeout=20)
    assert run.returncode == 1
    assert b"RuntimeError: the probe's own error" in err
    assert b"atexit ran" in out


def started(sock: str, run_dir: Path, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    """A client whose run has started (it printed its report): the client and the run's pid."""
    run = client(sock, run_dir, mode)
    assert run.stdout is not None
    pid = int(json.loads(run.stdout.readline())["pid"])
    assert alive(pid)
    return run, pid


def gone(pid: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_sigterm_to_the_client_reaches_the_run_and_its_end_is_the_clients(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run, pid = started(server[0], tmp_path, "term")
    run.send_signal(signal.SIGTERM)
    assert run.wait(20) == 5  # the run's own SIGTERM handler, relayed
    assert gone(pid)


def test_a_killed_client_takes_its_run_with_it(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run, pid = started(server[0], tmp_path, "sleep")
    run.kill()  # the worker's machine dies: SIGKILL, no chance to relay anything
    run.wait(10)
    assert gone(pid)


def test_a_run_dies_with_its_fork_server(
    server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run, pid = started(server[0], tmp_path, "sleep")
    server[1].kill()
    server[1].wait(10)
    assert run.wait(20) != 0  # "the fork server went away during the run"
    assert gone(pid)


def test_without_a_fork_server_the_client_runs_prefects_engine_and_says_so(
    tmp_path: Path,
) -> None:
    for sock in (None, str(tmp_path / "nothing-here")):
        run = client(sock, tmp_path, "not-a-flow-run-id")
        _, err = run.communicate(timeout=60)
        assert run.returncode == 1
        reason = "is not set" if sock is None else "no fork server answers"
        assert f"caretaker: {ENV_SOCKET}" in err.decode() or reason in err.decode()
        assert reason in err.decode()
        assert "starting python -m prefect.engine" in err.decode()
        assert "Invalid flow run id" in err.decode()  # Prefect's engine ran, with the argv


@pytest.mark.parametrize(
    ("purpose", "cafile", "capath", "cadata", "shared"),
    [
        (ssl.Purpose.SERVER_AUTH, "/etc/ca.pem", None, None, True),  # Prefect's, httpx's call
        (ssl.Purpose.SERVER_AUTH, Path("/etc/ca.pem"), None, None, True),
        (ssl.Purpose.SERVER_AUTH, None, None, None, False),  # the insecure mode changes its own
        (ssl.Purpose.SERVER_AUTH, "", None, None, False),
        (ssl.Purpose.SERVER_AUTH, "/etc/ca.pem", "/etc/certs", None, False),
        (ssl.Purpose.SERVER_AUTH, "/etc/ca.pem", None, "PEM", False),
        (ssl.Purpose.CLIENT_AUTH, "/etc/ca.pem", None, None, False),  # a server's context
    ],
)
def test_only_a_server_check_against_one_ca_file_shares_its_context(
    purpose: ssl.Purpose, cafile: object, capath: object, cadata: object, shared: bool
) -> None:
    key = shared_context_key(purpose, cafile, capath, cadata)
    assert (key == os.path.realpath("/etc/ca.pem")) if shared else key is None


def test_runs_share_one_context_per_ca_file_and_get_their_own_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import certifi

    monkeypatch.setattr(ssl, "create_default_context", ssl.create_default_context)
    share_ssl_contexts([certifi.where()])
    share_ssl_contexts()  # twice: still one layer
    first = ssl.create_default_context(cafile=certifi.where())
    assert ssl.create_default_context(cafile=certifi.where()) is first
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats()["x509_ca"] > 100  # the bundle is loaded
    own = ssl.create_default_context()
    assert own is not first and ssl.create_default_context() is not own
    own.check_hostname = False  # Prefect's insecure mode: the shared one is untouched
    assert first.check_hostname


@pytest.mark.parametrize(
    ("name", "owner", "dead", "stale"),
    [
        ("caretaker-forkserver-4242-ab12cd", 0, {4242}, True),  # its worker is gone
        ("caretaker-forkserver-4242-ab12cd", 0, set(), False),  # its worker runs
        ("caretaker-forkserver-4242-ab12cd", 1000, {4242}, False),  # another user's
        ("caretaker-forkserver-ab12cd", 0, {4242}, False),  # no pid in the name: unknown
        ("caretaker-forkserver-42x-ab", 0, {42}, False),
        ("something-else-4242-ab", 0, {4242}, False),
    ],
)
def test_a_fork_server_folder_is_stale_only_when_its_users_worker_is_gone(
    name: str, owner: int, dead: set[int], stale: bool
) -> None:
    from deployments.forkserver import stale_folder

    assert stale_folder(name, owner, 0, lambda pid: pid not in dead) is stale


def test_a_killed_machines_folder_is_removed_at_the_next_start(tmp_path: Path) -> None:
    from deployments.forkserver import FOLDER_PREFIX, remove_stale_folders

    proc = subprocess.Popen(["true"])  # a pid that has exited
    proc.wait()
    dead = tmp_path / f"{FOLDER_PREFIX}{proc.pid}-x1"
    live = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-x2"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "socket").write_text("")
    assert remove_stale_folders(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists()
