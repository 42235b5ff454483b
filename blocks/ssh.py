"""The SSH identity block: who caretaker is on a host, and which hosts it trusts.

One ``SshIdentity`` block holds a private key (with its optional passphrase), the
optional sudo password, and the OpenSSH ``known_hosts`` text that every host key
is verified against. Secrets stay ``SecretStr`` so they never print; the
known_hosts text is public and kept as plain text so operators can read and
update it in the Prefect UI.

The remote layer (``tasks/remote.py``) asks the block for a ``paramiko.PKey``
(``load_pkey``) and for the parsed host keys (``host_key_entries``); it never
touches ``~/.ssh``.
"""

from __future__ import annotations

import functools
import io

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from core.errors import ConfigError

# Tried in this order: ed25519 is the modern default, so most keys load on the first try.
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key,
    paramiko.ECDSAKey,
    paramiko.RSAKey,
)


class SshIdentity(Block):
    """An SSH identity: private key, optional passphrase and sudo password, trusted host keys.

    Host keys are always verified against ``known_hosts``; a host that is missing
    or whose key changed is refused (see docs/remote.md for how to fix that).

    Attributes:
        username: Login user when the inventory gives none for a server.
        private_key: Private key text (OpenSSH or PEM; ed25519, rsa or ecdsa).
        passphrase: Passphrase of the private key, if it is encrypted.
        sudo_password: Password fed to ``sudo -S`` for non-root users, if sudo needs one.
        known_hosts: OpenSSH known_hosts text; hashed or plain entries, ``[host]:port`` form.

    Example:
        ```python
        identity = SshIdentity.load("acme-ops")
        pkey = identity.load_pkey()
        ```
    """

    _block_type_name = "Caretaker SSH Identity"
    _block_type_slug = "caretaker-ssh-identity"
    _description = "SSH private key, sudo password and trusted host keys for a client's servers."

    username: str = Field(
        default="root",
        description="Login user for servers whose inventory entry names none.",
    )
    private_key: SecretStr = Field(
        description=(
            "Private key text, OpenSSH ('BEGIN OPENSSH PRIVATE KEY') or PEM "
            "('BEGIN RSA/EC PRIVATE KEY'); ed25519, rsa or ecdsa."
        ),
    )
    passphrase: SecretStr | None = Field(
        default=None,
        description="Passphrase of the private key, if the key is encrypted.",
    )
    sudo_password: SecretStr | None = Field(
        default=None,
        description=(
            "Password given to sudo on stdin for non-root users; leave empty when "
            "sudo is passwordless (sudo then runs with -n and never prompts)."
        ),
    )
    known_hosts: str = Field(
        description=(
            "OpenSSH known_hosts text the host keys are verified against (hashed or "
            "plain entries; '[host]:port' for non-22 ports). Unknown or changed keys are refused."
        ),
    )

    def load_pkey(self) -> paramiko.PKey:
        """Parse the private key.

        Returns:
            The key as a paramiko ``PKey`` (``Ed25519Key``, ``ECDSAKey`` or ``RSAKey``).

        Raises:
            ConfigError: The key is missing, encrypted without a passphrase, the
                passphrase is wrong, or the text is no key paramiko reads. The
                message never contains key material.
        """
        # Pasting into a web form often mangles line endings and edge whitespace.
        text = self.private_key.get_secret_value().replace("\r\n", "\n").strip() + "\n"
        password = self.passphrase.get_secret_value() if self.passphrase else None
        if not text.strip():
            raise ConfigError(f"SSH identity {self._label()}: private_key is empty")
        if "BEGIN PRIVATE KEY" in text or "BEGIN ENCRYPTED PRIVATE KEY" in text:
            raise ConfigError(
                f"SSH identity {self._label()}: PKCS#8 keys are not supported; convert "
                "with `ssh-keygen -p -f <keyfile>` (writes OpenSSH format) and paste again"
            )
        try:
            return _parse_pkey(text, password)
        except _KeyUnreadable as exc:
            # Chained for debugging: paramiko/cryptography messages name formats, never
            # key bytes.
            raise ConfigError(
                f"SSH identity {self._label()}: cannot read private_key: {exc.reason}"
            ) from exc.__cause__

    def host_key_entries(self) -> list[HostKeyEntry]:
        """Parse ``known_hosts`` into paramiko host-key entries.

        Comment lines, blank lines and ``@cert-authority``/``@revoked`` lines are
        skipped (paramiko verifies plain keys only), as are key types paramiko
        cannot use; a line that cannot be parsed at all is an error, so a typo
        never silently turns into "host unknown".

        Returns:
            One entry per usable line, hostnames as written (hashed ``|1|...`` kept).

        Raises:
            ConfigError: A line is malformed (names the line number).
        """
        return list(self._known_hosts()[0])

    def host_key_entries_for(self, hostname: str) -> list[HostKeyEntry]:
        """The entries that can match ``hostname`` as paramiko looks it up (``address``,
        or ``[address]:port`` off port 22): its own plain entries and every hashed one.

        Looked up in an index made once per process: a connection scanning a fleet's
        whole file cost ~4 ms of CPU at 1,000 servers, for each of the 1,000.

        Raises:
            ConfigError: A line is malformed (names the line number).
        """
        _, by_name, hashed = self._known_hosts()
        return [*by_name.get(hostname, ()), *hashed]

    def _known_hosts(self) -> _KnownHosts:
        try:
            return _parse_known_hosts(self.known_hosts)
        except _KnownHostsLineError as exc:
            what = "is malformed (expected '<hosts> <key type> <base64 key>')"
            raise ConfigError(
                f"SSH identity {self._label()}: known_hosts line {exc.lineno} "
                + (what if exc.malformed else "has an unreadable key")
            ) from exc.__cause__

    def secrets(self) -> list[str]:
        """The secret strings that must never leave the layer (for ``redact``).

        Returns:
            The sudo password, the passphrase and the private key's text and lines.
        """
        values = [s.get_secret_value() for s in (self.sudo_password, self.passphrase) if s]
        key = self.private_key.get_secret_value()
        # Whole text plus each base64 line, so a partial echo is caught too; header
        # lines and short lines are public or too short to be meaningful.
        values.append(key.strip())
        values.extend(
            line.strip()
            for line in key.splitlines()
            if len(line.strip()) >= 16 and not line.startswith("-----")
        )
        return [v for v in values if v]

    def _label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return repr(name) if name else "(unsaved)"


class _KnownHostsLineError(Exception):
    def __init__(self, lineno: int, *, malformed: bool) -> None:
        super().__init__(lineno)
        self.lineno = lineno
        self.malformed = malformed


class _KeyUnreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=16)
def _parse_pkey(text: str, password: str | None) -> paramiko.PKey:
    """The private key, parsed once per process (a failure is not kept: asked again).

    Every connection of a round signs with the same key: an encrypted key's KDF (bcrypt,
    ~0.1 s of CPU) or even a plain key's parse (~0.15 ms) per connection adds up on a
    fleet. A paramiko key only signs once loaded: one object serves every thread.
    """
    # A PEM header names the type; trying only that class keeps the error message relevant.
    if "BEGIN RSA PRIVATE KEY" in text:
        classes: tuple[type[paramiko.PKey], ...] = (paramiko.RSAKey,)
    elif "BEGIN EC PRIVATE KEY" in text:
        classes = (paramiko.ECDSAKey,)
    else:
        classes = _KEY_CLASSES
    needs_password = False
    last: Exception | None = None
    for key_class in classes:
        try:
            return key_class.from_private_key(io.StringIO(text), password=password)
        except paramiko.PasswordRequiredException as exc:
            needs_password, last = True, exc
        except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
            # Each class rejects the other key types; only the last failure matters.
            last = exc
    if needs_password and password is None:
        reason = "the key is encrypted and no passphrase is set"
    elif password is not None:
        reason = "the passphrase does not decrypt it, or it is not an ed25519/rsa/ecdsa key"
    else:
        reason = "it is not an OpenSSH or PEM ed25519/rsa/ecdsa private key"
    raise _KeyUnreadable(reason) from last


#: A known_hosts text's entries: all, by plain host name, and the hashed ones.
_KnownHosts = tuple[
    tuple[HostKeyEntry, ...], dict[str, tuple[HostKeyEntry, ...]], tuple[HostKeyEntry, ...]
]


@functools.lru_cache(maxsize=32)
def _parse_known_hosts(text: str) -> _KnownHosts:
    """The usable entries of a known_hosts text, parsed once per text: every connection
    of a run verifies against the same block, and parsing a fleet's file for each of its
    connections grew with the square of the fleet. (Errors are not cached: they raise.)
    With them, by plain host name, and the hashed ones (which could match any name)."""
    entries: list[HostKeyEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "@")):
            continue
        if len(line.split()) < 3:
            raise _KnownHostsLineError(lineno, malformed=True)
        try:
            entry = HostKeyEntry.from_line(" ".join(line.split()), lineno)
        except (InvalidHostKey, paramiko.SSHException, ValueError) as exc:
            raise _KnownHostsLineError(lineno, malformed=False) from exc
        if entry is not None:
            entries.append(entry)
    by_name: dict[str, list[HostKeyEntry]] = {}
    hashed: list[HostKeyEntry] = []
    for entry in entries:
        if any(name.startswith("|1|") for name in entry.hostnames):
            hashed.append(entry)
        for name in entry.hostnames:
            if not name.startswith("|1|"):
                by_name.setdefault(name, []).append(entry)
    return tuple(entries), {k: tuple(v) for k, v in by_name.items()}, tuple(hashed)
