"""The SSH remote layer against a real OpenSSH sshd (see sshd_fixture.py)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from blocks.ssh import SshIdentity
from core.errors import (
    AuthenticationError,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    ConnectError,
    HostKeyError,
    RemoteError,
)
from tasks.remote import (
    CommandResult,
    RemoteHost,
    SessionPool,
    SshJump,
    SshRemoteHost,
    SshTarget,
    sh_join,
)
from tests.integration.sshd_fixture import Sshd, free_port, keygen, require_sshd, start_sshd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSPHRASE = "correct horse battery staple"
SUDO_PASSWORD = "s00per-s3cret-sudo"


@pytest.fixture()
def client_key(tmp_path: Path) -> Path:
    """The client's private key (its ``.pub`` is authorized on every sshd here)."""
    require_sshd()
    return keygen(tmp_path / "id_ed25519")


@pytest.fixture()
def make_sshd(tmp_path: Path, client_key: Path) -> Iterator[Callable[..., Sshd]]:
    """Start sshds on demand; all are stopped after the test."""
    started: list[Sshd] = []

    def make(name: str = "sshd", *, authorized: list[Path] | None = None, **kw: str) -> Sshd:
        pubs = authorized if authorized is not None else [client_key.with_suffix(".pub")]
        server = start_sshd(tmp_path / name, pubs, **kw)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture()
def sshd(make_sshd: Callable[..., Sshd]) -> Sshd:
    """One running sshd that trusts ``client_key``."""
    return make_sshd()


def identity_for(key: Path, known_hosts: str, **kw: str) -> SshIdentity:
    return SshIdentity(private_key=key.read_text(), known_hosts=known_hosts, **kw)


def target_for(server: Sshd, name: str = "web1", **kw: object) -> SshTarget:
    return SshTarget(name=name, address=server.address, port=server.port, **kw)


@pytest.fixture()
def host(sshd: Sshd, client_key: Path) -> Iterator[SshRemoteHost]:
    """An SshRemoteHost for ``sshd`` with a correct known_hosts."""
    with SshRemoteHost(target_for(sshd), identity_for(client_key, sshd.known_hosts_line)) as h:
        yield h


def test_runs_a_command_and_returns_exit_code_stdout_stderr_and_duration(
    host: SshRemoteHost,
) -> None:
    result = host.run("echo out; echo err >&2; sleep 0.2; exit 7")

    assert isinstance(host, RemoteHost)
    assert isinstance(result, CommandResult)
    assert (result.host, result.exit_code, result.ok) == ("web1", 7, False)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert 0.2 <= result.duration_s < 5
    assert host.run("id -u", check=True).stdout == "0\n"


def test_reuses_one_connection_for_many_commands(host: SshRemoteHost, sshd: Sshd) -> None:
    host.run("true")
    transport = host.transport

    for i in range(20):
        assert host.run(sh_join(["echo", str(i)])).stdout == f"{i}\n"

    assert host.transport is transport
    assert host.connect_attempts == 1
    assert sshd.accepted_logins() == 1


def test_a_nonzero_exit_is_command_failed_with_evidence_and_is_not_retried(
    host: SshRemoteHost, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    command = (
        f"echo ran >> {sh_join([str(marker)])}; echo partial; echo 'E: broken dpkg' >&2; exit 3"
    )

    with pytest.raises(CommandFailed) as caught:
        host.run(command, check=True)

    err = caught.value
    assert (err.host, err.command, err.exit_code) == ("web1", command, 3)
    assert "partial" in err.stdout_tail and "E: broken dpkg" in err.stderr_tail
    assert "E: broken dpkg" in str(err) and "exited 3" in str(err)
    assert not err.retryable
    assert marker.read_text() == "ran\n"  # ran exactly once
    assert host.connect_attempts == 1


def test_a_refused_port_is_connect_error_after_retries_with_backoff(client_key: Path) -> None:
    port = free_port()  # nothing listens here
    target = SshTarget(name="down", address="127.0.0.1", port=port)
    host = SshRemoteHost(
        target, identity_for(client_key, ""), connect_retries=3, backoff_s=0.1, connect_timeout=2
    )

    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        host.run("true")
    elapsed = time.monotonic() - started

    assert host.connect_attempts == 4  # the first try and 3 retries
    assert elapsed >= 0.1 + 0.2 + 0.4  # exponential backoff between them
    assert caught.value.retryable and caught.value.host == "down"
    assert "refused" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_a_changed_host_key_is_refused_with_host_key_error_and_not_retried(
    sshd: Sshd, client_key: Path, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "other_host_key")
    key_type, b64 = impostor.with_suffix(".pub").read_text().split()[:2]
    host = SshRemoteHost(
        target_for(sshd), identity_for(client_key, f"{sshd.lookup_name} {key_type} {b64}\n")
    )

    with pytest.raises(HostKeyError) as caught:
        host.run("true")

    message = str(caught.value)
    assert "CHANGED" in message and "ssh-ed25519" in message
    assert sshd.host_key_fingerprint in message  # the key offered
    assert "known_hosts" in message and "SSH identity block" in message
    assert host.connect_attempts == 1
    assert sshd.accepted_logins() == 0


def test_an_empty_known_hosts_is_refused_with_host_key_error(sshd: Sshd, client_key: Path) -> None:
    host = SshRemoteHost(target_for(sshd), identity_for(client_key, ""))

    with pytest.raises(HostKeyError) as caught:
        host.run("true")

    message = str(caught.value)
    assert "UNKNOWN" in message and sshd.lookup_name in message
    assert sshd.host_key_fingerprint in message
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 127.0.0.1" in message
    assert host.connect_attempts == 1
    assert sshd.accepted_logins() == 0


def test_a_hashed_known_hosts_entry_is_accepted(
    sshd: Sshd, client_key: Path, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    hashed = known.read_text()
    assert hashed.startswith("|1|")

    with SshRemoteHost(target_for(sshd), identity_for(client_key, hashed)) as host:
        assert host.run("echo ok").stdout == "ok\n"


def test_a_key_the_host_does_not_authorize_is_authentication_error_and_not_retried(
    sshd: Sshd, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")
    host = SshRemoteHost(target_for(sshd), identity_for(stranger, sshd.known_hosts_line))

    with pytest.raises(AuthenticationError) as caught:
        host.run("true")

    assert "authorized_keys" in str(caught.value)
    assert host.connect_attempts == 1


def test_a_command_timeout_raises_command_timeout_and_the_connection_stays_usable(
    host: SshRemoteHost,
) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        host.run("sleep 4", timeout=1)

    assert 1 <= time.monotonic() - started < 5
    assert (caught.value.host, caught.value.command, caught.value.timeout_s) == (
        "web1",
        "sleep 4",
        1,
    )
    assert host.run("echo still here").stdout == "still here\n"


def test_large_stdout_and_stderr_do_not_deadlock(host: SshRemoteHost) -> None:
    size = 5_000_000
    command = (
        f"head -c {size} /dev/zero | tr '\\0' o & head -c {size} /dev/zero | tr '\\0' e >&2; wait"
    )

    result = host.run(command, timeout=60, check=True)

    assert len(result.stdout) == size and set(result.stdout) == {"o"}
    assert len(result.stderr) == size and set(result.stderr) == {"e"}


def test_stdin_reaches_the_command(host: SshRemoteHost) -> None:
    payload = "line\n" * 200_000  # 1 MB: more than one channel window

    assert host.run("wc -c", stdin=payload).stdout.strip() == str(len(payload))
    assert host.run("cat", stdin="hello").stdout == "hello"
    assert host.run("cat").stdout == ""  # no stdin is EOF, not a hang


def test_sudo_as_root_runs_the_command_unwrapped(host: SshRemoteHost) -> None:
    assert host.run("id -u; echo $0", sudo=True, check=True).stdout.split()[0] == "0"


def test_jump_host_reaches_the_target_through_a_bastion(
    make_sshd: Callable[..., Sshd], client_key: Path
) -> None:
    bastion = make_sshd("bastion", log_level="DEBUG1")
    target_sshd = make_sshd("target")
    known = bastion.known_hosts_line + target_sshd.known_hosts_line
    target = target_for(target_sshd, jump=SshJump(address=bastion.address, port=bastion.port))

    with SshRemoteHost(target, identity_for(client_key, known)) as host:
        assert host.run("echo through").stdout == "through\n"
        assert host.run("echo again").stdout == "again\n"

    assert bastion.accepted_logins() == 1 and target_sshd.accepted_logins() == 1
    assert f"port {target_sshd.port}" in bastion.log()  # the direct-tcpip request
    assert "direct-tcpip" in bastion.log()


def test_an_unknown_jump_host_key_is_refused_with_host_key_error(
    make_sshd: Callable[..., Sshd], client_key: Path
) -> None:
    bastion = make_sshd("bastion")
    target_sshd = make_sshd("target")
    target = target_for(target_sshd, jump=SshJump(address=bastion.address, port=bastion.port))
    host = SshRemoteHost(target, identity_for(client_key, target_sshd.known_hosts_line))

    with pytest.raises(HostKeyError) as caught:
        host.run("true")

    assert "jump host" in str(caught.value) and bastion.lookup_name in str(caught.value)
    assert target_sshd.accepted_logins() == 0


def test_reconnects_when_the_connection_was_lost_between_commands(
    host: SshRemoteHost, sshd: Sshd
) -> None:
    host.run("true")
    assert host.transport is not None
    host.transport.close()  # what a reboot does to the connection

    assert host.run("echo back").stdout == "back\n"
    assert host.connect_attempts == 2
    assert sshd.accepted_logins() == 2


def test_a_connection_lost_mid_command_is_a_connect_error_that_must_not_be_retried(
    host: SshRemoteHost, sshd: Sshd
) -> None:
    with pytest.raises(ConnectError) as caught:
        host.run("kill -9 $PPID")  # the sshd serving this connection dies, as in a reboot

    assert not caught.value.retryable
    assert "may have run" in str(caught.value)
    assert host.run("echo back").stdout == "back\n"  # and the next command reconnects
    assert sshd.accepted_logins() == 2


def test_a_command_killed_by_a_signal_reports_exit_code_minus_one(host: SshRemoteHost) -> None:
    result = host.run("kill -9 $$")

    assert (result.exit_code, result.ok) == (-1, False)
    assert host.connect_attempts == 1


def test_concurrent_commands_on_one_connection_from_eight_threads(
    host: SshRemoteHost, sshd: Sshd
) -> None:
    barrier = threading.Barrier(8)

    def work(i: int) -> CommandResult:
        barrier.wait()  # all threads race the lazy connect, too
        return host.run(f"sleep 0.5; echo {i}; echo e{i} >&2", check=True)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    elapsed = time.monotonic() - started

    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    assert [r.stderr for r in results] == [f"e{i}\n" for i in range(8)]
    assert elapsed < 8 * 0.5  # they ran side by side
    assert host.connect_attempts == 1 and sshd.accepted_logins() == 1


def test_a_session_pool_hands_out_one_host_per_target_and_closes_them(
    sshd: Sshd, client_key: Path
) -> None:
    identity = identity_for(client_key, sshd.known_hosts_line)
    with SessionPool(identity) as pool:
        first = pool.get(target_for(sshd))
        assert pool.get(target_for(sshd)) is first
        assert pool.get(target_for(sshd, name="web2")) is not first
        first.run("true")
        transport = first.transport
    assert transport is not None and not transport.is_active()
    assert sshd.accepted_logins() == 1


def test_the_private_key_and_passwords_never_appear_in_logs_results_or_errors(
    make_sshd: Callable[..., Sshd], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = keygen(tmp_path / "locked", passphrase=PASSPHRASE)
    stranger = keygen(tmp_path / "stranger", passphrase=PASSPHRASE)
    sshd = make_sshd(authorized=[key.with_suffix(".pub")])
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="paramiko")
    secrets_ = {"passphrase": PASSPHRASE, "sudo password": SUDO_PASSWORD}
    key_text = key.read_text()
    secrets_.update(
        {f"key line {i}": ln for i, ln in enumerate(key_text.splitlines()) if "-----" not in ln}
    )

    def ident(k: Path, known: str) -> SshIdentity:
        return identity_for(k, known, passphrase=PASSPHRASE, sudo_password=SUDO_PASSWORD)

    seen: list[str] = []
    with SshRemoteHost(target_for(sshd), ident(key, sshd.known_hosts_line)) as host:
        # The remote side echoes the secrets back: results must mask them.
        echo = host.run(f"echo {PASSPHRASE}; echo {SUDO_PASSWORD} >&2; cat", stdin=key_text)
        assert echo.ok and "********" in echo.stdout
        seen += [repr(echo), echo.command, echo.stdout, echo.stderr]
        failing = [
            lambda: host.run(f"echo {SUDO_PASSWORD} >&2; exit 1", check=True),
            lambda: host.run(f"sleep 2 # {PASSPHRASE}", timeout=0.5),
        ]
        for call in failing:
            with pytest.raises(RemoteError) as caught:
                call()
            seen += _chain(caught.value)
    for bad in (
        SshRemoteHost(target_for(sshd), ident(key, "")),  # host key
        SshRemoteHost(target_for(sshd), ident(stranger, sshd.known_hosts_line)),  # auth
    ):
        with pytest.raises(RemoteError) as caught:
            bad.run("true")
        seen += _chain(caught.value)
    seen += [caplog.text, repr(ident(key, ""))]

    assert "Authentication (publickey) successful" in caplog.text  # paramiko did log
    text = "\n".join(seen)
    leaked = [name for name, value in secrets_.items() if value in text]
    assert leaked == []


def _chain(exc: BaseException) -> list[str]:
    """str/repr of an exception, its notes and everything it was chained from."""
    out: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        out += [str(current), repr(current), *getattr(current, "__notes__", [])]
        current = current.__cause__ or current.__context__
    return out


@pytest.mark.usefixtures("prefect_api")
def test_the_identity_block_round_trips_through_prefect_and_still_connects(
    sshd: Sshd, client_key: Path
) -> None:
    identity = identity_for(client_key, sshd.known_hosts_line, sudo_password=SUDO_PASSWORD)
    identity.save("remote-layer-test", overwrite=True)

    loaded = SshIdentity.load("remote-layer-test")
    assert isinstance(loaded, SshIdentity)  # sync context: no coroutine

    assert loaded.private_key.get_secret_value() == client_key.read_text()
    assert SUDO_PASSWORD not in repr(loaded)
    with SshRemoteHost(target_for(sshd), loaded) as host:
        assert host.run("echo ok").stdout == "ok\n"
    SshIdentity(private_key="nonsense", known_hosts="").save("remote-layer-broken", overwrite=True)
    broken = SshIdentity.load("remote-layer-broken")
    assert isinstance(broken, SshIdentity)
    with pytest.raises(ConfigError, match="SSH identity 'remote-layer-broken'"):
        broken.load_pkey()
