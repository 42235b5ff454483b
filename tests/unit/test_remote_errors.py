"""The remote layer without SSH: the error mapping is complete, sudo wrapping, redaction, keys."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import socket
from collections.abc import Callable, Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.auth_strategy import AuthFailure, AuthResult, AuthSource, AuthStrategy
from paramiko.ber import BERException
from paramiko.buffered_pipe import PipeTimeout
from paramiko.hostkeys import InvalidHostKey
from paramiko.packet import NeedRekeyException
from paramiko.pkey import UnknownKeyType
from paramiko.sftp import SFTPError
from paramiko.ssh_exception import (
    AuthenticationException,
    BadAuthenticationType,
    BadHostKeyException,
    ChannelException,
    ConfigParseError,
    CouldNotCanonicalize,
    IncompatiblePeer,
    MessageOrderError,
    NoValidConnectionsError,
    PartialAuthentication,
    PasswordRequiredException,
    ProxyCommandFailure,
    SSHException,
    UnableToAuthenticate,
)

from blocks.ssh import SshIdentity
from core.errors import (
    AuthenticationError,
    CommandFailed,
    ConfigError,
    ConnectError,
    HostKeyError,
    RemoteError,
)
from tasks.remote.base import REDACTED, CommandResult, SshTarget, redact, sh_join, sudo_wrap
from tasks.remote.errors import TRANSLATABLE, translate_error
from tasks.remote.ssh import SshRemoteHost


class _NoSources(AuthStrategy):
    def get_sources(self) -> Iterator[AuthSource]:
        yield from ()


_KEY_A = paramiko.ECDSAKey.generate()
_KEY_B = paramiko.ECDSAKey.generate()

# How to build each paramiko exception whose constructor needs more than a message.
_FACTORIES: dict[type[BaseException], Callable[[], BaseException]] = {
    BadHostKeyException: lambda: BadHostKeyException("10.0.0.5", _KEY_A, _KEY_B),
    BadAuthenticationType: lambda: BadAuthenticationType("Bad authentication type", ["password"]),
    PartialAuthentication: lambda: PartialAuthentication(["publickey"]),
    ChannelException: lambda: ChannelException(2, "Connect failed"),
    ProxyCommandFailure: lambda: ProxyCommandFailure("nc bastion 22", "exit 1"),
    NoValidConnectionsError: lambda: NoValidConnectionsError(
        {("10.0.0.5", 22): ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")}
    ),
    AuthFailure: lambda: AuthFailure(AuthResult(_NoSources(ssh_config=paramiko.SSHConfig()))),
    UnknownKeyType: lambda: UnknownKeyType("ssh-foo", b"\x00" * 8),
    InvalidHostKey: lambda: InvalidHostKey("bad line", ValueError("bad base64")),
}

# The decided mapping: every exception paramiko defines, its caretaker class, retryable.
EXPECTED: dict[type[BaseException], tuple[type[RemoteError], bool]] = {
    SSHException: (ConnectError, True),
    AuthenticationException: (AuthenticationError, False),
    PasswordRequiredException: (AuthenticationError, False),
    BadAuthenticationType: (AuthenticationError, False),
    PartialAuthentication: (AuthenticationError, False),
    UnableToAuthenticate: (AuthenticationError, False),
    AuthFailure: (AuthenticationError, False),
    ChannelException: (ConnectError, True),
    BadHostKeyException: (HostKeyError, False),
    IncompatiblePeer: (ConnectError, False),
    ProxyCommandFailure: (ConnectError, True),
    NoValidConnectionsError: (ConnectError, True),
    CouldNotCanonicalize: (ConnectError, False),
    ConfigParseError: (ConnectError, False),
    MessageOrderError: (ConnectError, False),
    UnknownKeyType: (ConnectError, False),
    InvalidHostKey: (HostKeyError, False),
    BERException: (ConnectError, False),
    NeedRekeyException: (ConnectError, True),
    PipeTimeout: (ConnectError, True),
    SFTPError: (RemoteError, False),  # not a transport failure
}


def _paramiko_exception_classes() -> set[type[BaseException]]:
    """Every exception class defined anywhere in the installed paramiko."""
    found: set[type[BaseException]] = set()
    for info in pkgutil.iter_modules(paramiko.__path__):
        try:
            module = importlib.import_module(f"paramiko.{info.name}")
        except Exception:  # noqa: S112 - Windows-only modules do not import here
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("paramiko"):
                found.add(obj)
    return found


def _name(cls: object) -> str:
    return getattr(cls, "__name__", str(cls))


def _make(cls: type[BaseException]) -> BaseException:
    factory = _FACTORIES.get(cls)
    return factory() if factory else cls("boom")


def test_every_ssh_exception_member_has_a_decided_mapping() -> None:
    members = {
        obj
        for _, obj in inspect.getmembers(paramiko.ssh_exception, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == "paramiko.ssh_exception"
    }
    assert members, "paramiko.ssh_exception exposes no exceptions?"
    assert members - EXPECTED.keys() == set()


def test_every_exception_paramiko_defines_has_a_decided_mapping() -> None:
    assert _paramiko_exception_classes() - EXPECTED.keys() == set()


@pytest.mark.parametrize("cls", sorted(EXPECTED, key=_name), ids=_name)
def test_each_paramiko_exception_maps_to_its_remote_error(cls: type[BaseException]) -> None:
    expected, retryable = EXPECTED[cls]
    exc = _make(cls)

    err = translate_error(exc, "web1")

    assert type(err) is expected
    assert err.retryable is retryable
    assert err.host == "web1" and str(err).startswith("web1: ")
    assert isinstance(exc, TRANSLATABLE)  # the layer catches it


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (TimeoutError("timed out"), True),  # socket.timeout is this same class
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), True),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), True),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
        (EOFError(), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_socket_and_os_errors_map_to_connect_error(exc: BaseException, retryable: bool) -> None:
    err = translate_error(exc, "web1")

    assert type(err) is ConnectError
    assert err.retryable is retryable


def test_unreachable_hosts_say_so_in_the_message() -> None:
    err = translate_error(OSError(errno.EHOSTUNREACH, "No route to host"), "web1")
    assert "EHOSTUNREACH" in str(err) and "No route to host" in str(err)


def test_an_sshd_that_sends_no_banner_is_a_retryable_connect_error() -> None:
    err = translate_error(SSHException("Error reading SSH protocol banner"), "web1")
    assert type(err) is ConnectError and err.retryable
    assert "banner" in str(err)


def test_reject_policy_refusal_is_a_host_key_error() -> None:
    err = translate_error(SSHException("Server '[10.0.0.5]:2222' not found in known_hosts"), "web1")
    assert type(err) is HostKeyError and not err.retryable
    assert "[10.0.0.5]:2222" in str(err) and "known_hosts" in str(err)


def test_a_changed_host_key_names_host_type_both_fingerprints_and_the_fix() -> None:
    err = translate_error(BadHostKeyException("10.0.0.5", _KEY_A, _KEY_B), "web1")
    message = str(err)
    assert "10.0.0.5" in message and "CHANGED" in message
    assert _KEY_A.get_name() in message
    assert _KEY_A.fingerprint in message and _KEY_B.fingerprint in message
    assert _KEY_A.fingerprint.startswith("SHA256:")
    assert "known_hosts field of the SSH identity block" in message


def test_a_channel_the_server_forbids_is_not_retried() -> None:
    err = translate_error(ChannelException(1, "Administratively prohibited"), "web1")
    assert type(err) is ConnectError and not err.retryable


def test_our_own_errors_pass_through_unchanged() -> None:
    original = CommandFailed("web1", "false", 1)
    assert translate_error(original, "web1") is original


def test_an_unexpected_exception_becomes_a_plain_remote_error() -> None:
    err = translate_error(KeyError("x"), "web1")
    assert type(err) is RemoteError and not err.retryable


def test_the_stage_prefixes_the_message_and_secrets_are_masked() -> None:
    err = translate_error(
        SSHException("banner said hunter2"),
        "web1",
        stage="ssh root@10.0.0.5:22",
        secrets=["hunter2"],
    )
    assert str(err) == f"web1: ssh root@10.0.0.5:22: SSH connection failed: banner said {REDACTED}"


# --- sudo ----------------------------------------------------------------------------


def _host(user: str, *, sudo_password: str | None = None, allow_sudo: bool = True) -> SshRemoteHost:
    identity = SshIdentity(private_key="unused", known_hosts="", sudo_password=sudo_password)
    target = SshTarget(name="web1", address="10.0.0.5", user=user, sudo=allow_sudo)
    return SshRemoteHost(target, identity)


def test_sudo_wrap_quotes_the_command_for_sh() -> None:
    command = "apt-get -y upgrade && echo 'done'"
    assert sudo_wrap(command, with_password=False) == (
        "sudo -n -- sh -c 'apt-get -y upgrade && echo '\"'\"'done'\"'\"''"
    )
    assert sudo_wrap("id -u", with_password=True) == "sudo -S -p '' -- sh -c 'id -u'"


def test_root_runs_privileged_commands_without_sudo() -> None:
    wire, feed = _host("root", sudo_password="pw")._prepare("id -u", sudo=True, stdin=None)
    assert (wire, feed) == ("id -u", None)


def test_a_non_root_user_with_a_sudo_password_feeds_it_on_stdin_never_in_the_command() -> None:
    wire, feed = _host("deploy", sudo_password="s3cret!")._prepare(
        "cat > /etc/motd", sudo=True, stdin="hello"
    )
    assert wire == "sudo -S -p '' -- sh -c 'cat > /etc/motd'"
    assert "s3cret" not in wire
    assert feed == "s3cret!\nhello"


def test_a_non_root_user_without_a_sudo_password_uses_sudo_n() -> None:
    wire, feed = _host("deploy")._prepare("id -u", sudo=True, stdin=None)
    assert (wire, feed) == ("sudo -n -- sh -c 'id -u'", None)


def test_unprivileged_commands_are_not_wrapped() -> None:
    assert _host("deploy", sudo_password="pw")._prepare("id -u", sudo=False, stdin=None) == (
        "id -u",
        None,
    )


def test_a_user_without_sudo_rights_cannot_run_privileged_commands() -> None:
    with pytest.raises(ConfigError, match="may not use sudo"):
        _host("deploy", allow_sudo=False)._prepare("id -u", sudo=True, stdin=None)


# --- redaction, quoting, results -----------------------------------------------------------


def test_redact_masks_every_occurrence_longest_first() -> None:
    text = "pw=abc pw=abcdef again abcdef"
    assert redact(text, ["abc", "abcdef", ""]) == f"pw={REDACTED} pw={REDACTED} again {REDACTED}"


def test_redact_without_secrets_changes_nothing() -> None:
    assert redact("nothing to hide", []) == "nothing to hide"


def test_sh_join_keeps_inventory_values_from_the_shell() -> None:
    assert sh_join(["apt-mark", "hold", "nginx; rm -rf /"]) == "apt-mark hold 'nginx; rm -rf /'"


def test_check_raises_command_failed_with_host_command_exit_code_and_tails() -> None:
    result = CommandResult(
        host="web1",
        command="apt-get -y upgrade",
        exit_code=100,
        stdout="x" * 5000 + "last out",
        stderr="E: Could not get lock /var/lib/dpkg/lock-frontend",
        duration_s=1.5,
    )
    with pytest.raises(CommandFailed) as caught:
        result.check()
    err = caught.value
    assert (err.host, err.command, err.exit_code) == ("web1", "apt-get -y upgrade", 100)
    assert err.stdout_tail.endswith("last out") and len(err.stdout_tail) == 2000
    assert "Could not get lock" in str(err)


def test_check_returns_a_successful_result_unchanged() -> None:
    result = CommandResult(
        host="h", command="true", exit_code=0, stdout="", stderr="", duration_s=0
    )
    assert result.ok and result.check() is result


# --- the identity block ----------------------------------------------------------------


def _pem(
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    fmt: ser.PrivateFormat,
    password: bytes | None = None,
) -> str:
    encryption = ser.BestAvailableEncryption(password) if password else ser.NoEncryption()
    return key.private_bytes(ser.Encoding.PEM, fmt, encryption).decode()


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        (
            _pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH),
            paramiko.Ed25519Key,
        ),
        (
            _pem(ec.generate_private_key(ec.SECP256R1()), ser.PrivateFormat.OpenSSH),
            paramiko.ECDSAKey,
        ),
        (
            _pem(ec.generate_private_key(ec.SECP384R1()), ser.PrivateFormat.TraditionalOpenSSL),
            paramiko.ECDSAKey,
        ),
        (
            _pem(rsa.generate_private_key(65537, 2048), ser.PrivateFormat.TraditionalOpenSSL),
            paramiko.RSAKey,
        ),
    ],
    ids=["ed25519-openssh", "ecdsa-openssh", "ecdsa-pem", "rsa-pem"],
)
def test_load_pkey_reads_openssh_and_pem_keys(text: str, cls: type[paramiko.PKey]) -> None:
    # A web form may turn newlines into CRLF and add edge whitespace.
    mangled = "  " + text.replace("\n", "\r\n") + "\n\n"
    assert isinstance(SshIdentity(private_key=mangled, known_hosts="").load_pkey(), cls)


def test_load_pkey_decrypts_with_the_passphrase() -> None:
    text = _pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH, b"open sesame")
    identity = SshIdentity(private_key=text, passphrase="open sesame", known_hosts="")
    assert isinstance(identity.load_pkey(), paramiko.Ed25519Key)


def test_a_key_is_parsed_once_per_process_and_a_wrong_passphrase_is_refused_every_time() -> None:
    """Every connection of a round signs with the same key: an encrypted key's KDF runs
    once, not per connection; a failure is never kept as an answer."""
    text = _pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH, b"open sesame")
    first = SshIdentity(private_key=text, passphrase="open sesame", known_hosts="").load_pkey()
    again = SshIdentity(private_key=text, passphrase="open sesame", known_hosts="").load_pkey()
    assert again is first
    for _ in range(2):
        with pytest.raises(ConfigError, match="passphrase does not decrypt"):
            SshIdentity(private_key=text, passphrase="wrong", known_hosts="").load_pkey()
    other = _pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH, b"open sesame")
    key = SshIdentity(private_key=other, passphrase="open sesame", known_hosts="").load_pkey()
    assert key is not first and key.get_fingerprint() != first.get_fingerprint()


@pytest.mark.parametrize(
    ("passphrase", "fmt", "message"),
    [
        (None, ser.PrivateFormat.OpenSSH, "encrypted and no passphrase"),
        ("wrong", ser.PrivateFormat.OpenSSH, "passphrase does not decrypt"),
        ("wrong", ser.PrivateFormat.TraditionalOpenSSL, "passphrase does not decrypt"),
        (None, ser.PrivateFormat.PKCS8, "PKCS#8"),
    ],
    ids=["no-passphrase", "wrong-passphrase", "wrong-passphrase-pem", "pkcs8"],
)
def test_an_unreadable_key_is_a_config_error_without_key_material(
    passphrase: str | None, fmt: ser.PrivateFormat, message: str
) -> None:
    text = _pem(rsa.generate_private_key(65537, 2048), fmt, b"right")
    identity = SshIdentity(private_key=text, passphrase=passphrase, known_hosts="")

    with pytest.raises(ConfigError, match=message) as caught:
        identity.load_pkey()

    shown = str(caught.value) + repr(caught.value) + str(caught.value.__cause__)
    body = [line for line in text.splitlines() if "-----" not in line and len(line) > 16]
    assert not [line for line in body if line in shown]
    assert "right" not in shown


def test_garbage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an OpenSSH or PEM"):
        SshIdentity(private_key="hello", known_hosts="").load_pkey()


def test_secrets_never_print_in_the_block() -> None:
    identity = SshIdentity(
        private_key="KEYMATERIAL", passphrase="PASSPHRASE", sudo_password="SUDOPW", known_hosts=""
    )
    shown = repr(identity) + str(identity) + str(identity.model_dump())
    assert "KEYMATERIAL" not in shown and "PASSPHRASE" not in shown and "SUDOPW" not in shown


def test_secrets_lists_passwords_and_every_key_line() -> None:
    text = _pem(ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.OpenSSH)
    identity = SshIdentity(private_key=text, passphrase="pp", sudo_password="sp", known_hosts="")
    secrets = identity.secrets()
    assert {"pp", "sp", text.strip()} <= set(secrets)
    assert all(line in secrets for line in text.splitlines() if "-----" not in line)


def test_known_hosts_accepts_plain_hashed_and_port_entries_and_skips_markers() -> None:
    b64 = _KEY_A.get_base64()
    name = _KEY_A.get_name()
    hashed = paramiko.HostKeys.hash_host("10.0.0.7")
    text = f"""# a comment

10.0.0.5,web1 {name} {b64}
[10.0.0.6]:2222  {name}\t{b64} comment here
{hashed} {name} {b64}
@cert-authority *.example {name} {b64}
10.0.0.9 ssh-unknown-type AAAA
"""
    entries = SshIdentity(private_key="x", known_hosts=text).host_key_entries()
    assert [e.hostnames for e in entries] == [["10.0.0.5", "web1"], ["[10.0.0.6]:2222"], [hashed]]


def test_a_connection_trusts_only_the_entries_that_can_name_its_host() -> None:
    b64, name = _KEY_A.get_base64(), _KEY_A.get_name()
    hashed = paramiko.HostKeys.hash_host("10.0.0.7")
    fleet = "\n".join(f"10.0.1.{i} {name} {b64}" for i in range(200))
    others = [
        f"10.0.0.5,web1 {name} {b64}",
        f"[10.0.0.6]:2222 {name} {b64}",
        f"{hashed} {name} {b64}",
    ]
    text = "\n".join([fleet, *others]) + "\n"
    identity = SshIdentity(private_key="x", known_hosts=text)

    def trusted(address: str, port: int) -> list[list[str]]:
        client = SshRemoteHost._new_client(identity, address, port)
        return [e.hostnames for e in client.get_host_keys()._entries]

    assert trusted("10.0.0.5", 22) == [["10.0.0.5"], [hashed]]
    assert trusted("10.0.0.6", 2222) == [["[10.0.0.6]:2222"], [hashed]]
    assert trusted("10.0.0.6", 22) == [[hashed]]  # another port is another host to ssh
    assert trusted("web1", 22) == [["web1"], [hashed]]  # an alias on the same line
    assert trusted("10.0.1.7", 22) == [["10.0.1.7"], [hashed]]
    # Looked up by name in an index, not by scanning the fleet's entries per connection.
    assert [e.hostnames for e in identity.host_key_entries_for("10.0.1.7")] == [
        ["10.0.1.7"],
        [hashed],
    ]
    assert [e.hostnames for e in identity.host_key_entries_for("nowhere")] == [[hashed]]
    # Parsed once per known_hosts text, whatever the number of connections.
    assert identity.host_key_entries()[0].key is identity.host_key_entries()[0].key


@pytest.mark.parametrize("line", ["10.0.0.5 ssh-ed25519", "10.0.0.5 ssh-ed25519 !!!notbase64"])
def test_a_malformed_known_hosts_line_is_a_config_error(line: str) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        SshIdentity(private_key="x", known_hosts=f"# header\n{line}\n").host_key_entries()
    with pytest.raises(ConfigError, match="line 2"):
        SshIdentity(private_key="x", known_hosts=f"# header\n{line}\n").host_key_entries_for(
            "10.0.0.5"
        )
