"""The remote-execution interface: ``RemoteHost`` and what callers build commands with.

Everything else in caretaker talks to hosts through the small ``RemoteHost`` interface
(``run(command) -> CommandResult``); unit tests pass a scripted fake, integration tests and
flows pass ``SshRemoteHost`` (``tasks.remote.ssh``). Command strings are built with
``sh_join`` so nothing from the inventory reaches a shell unquoted; ``redact`` masks
secrets in anything logged, returned or raised.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from core.errors import CommandFailed

REDACTED = "********"


# --- helpers callers use -----------------------------------------------------------


def sh_join(args: Sequence[str]) -> str:
    """Quote arguments into one POSIX shell command line.

    Every value that comes from the inventory or a parameter goes through this;
    nothing reaches a remote shell unquoted.

    Args:
        args: The argv, e.g. ``["apt-mark", "hold", package]``.

    Returns:
        The command string, e.g. ``"apt-mark hold 'nginx'"``.
    """
    return shlex.join(args)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``********``.

    Longer secrets are replaced first so a secret containing another is fully hidden.

    Args:
        text: Any text derived from user input or remote output.
        secrets: The secret values; empty strings are ignored.

    Returns:
        The text with secrets masked.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def sudo_wrap(command: str, *, with_password: bool) -> str:
    """Wrap a command to run as root through sudo.

    With a password, sudo reads it from stdin (``-S``) without printing a prompt
    (``-p ''``); without one, ``-n`` makes sudo fail at once instead of hanging
    on a prompt. The password itself is never part of the command string.

    Args:
        command: The shell command to run as root.
        with_password: Whether the password will be fed on stdin.

    Returns:
        ``sudo -S -p '' -- sh -c '<command>'`` or ``sudo -n -- sh -c '<command>'``.
    """
    flags = ["-S", "-p", ""] if with_password else ["-n"]
    return sh_join(["sudo", *flags, "--", "sh", "-c", command])


# --- data ---------------------------------------------------------------------------


class CommandResult(BaseModel):
    """What a command did on a host: exit code, output, duration."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(description="Inventory name of the host.")
    command: str = Field(description="The command as the caller gave it (secrets redacted).")
    exit_code: int = Field(description="Exit status; -1 if the host reported none (signal).")
    stdout: str = Field(description="Standard output, UTF-8 decoded with replacement.")
    stderr: str = Field(description="Standard error, UTF-8 decoded with replacement.")
    duration_s: float = Field(ge=0, description="Wall time from channel open to exit.")

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Return self if the command succeeded.

        Returns:
            This result, unchanged.

        Raises:
            CommandFailed: The exit code is not 0; carries host, command, exit
                code and the tails of stdout and stderr.
        """
        if not self.ok:
            raise CommandFailed(self.host, self.command, self.exit_code, self.stdout, self.stderr)
        return self


class SshJump(BaseModel):
    """A bastion host the target is reached through."""

    model_config = ConfigDict(frozen=True)

    address: str = Field(description="Address of the bastion.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port of the bastion.")
    user: str | None = Field(default=None, description="Login user; default: the identity's.")


class SshTarget(BaseModel):
    """Where and as whom to connect; plain data built by callers from the inventory."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Inventory name of the server (used in errors and results).")
    address: str = Field(description="Address to connect to, also the known_hosts lookup name.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(default=None, description="Login user; default: the identity's.")
    sudo: bool = Field(
        default=True,
        description=(
            "Whether privileged commands (run(..., sudo=True)) may escalate with sudo "
            "when the login user is not root. False: such a command is a ConfigError."
        ),
    )
    jump: SshJump | None = Field(default=None, description="Bastion to tunnel through, if any.")


# --- interface ----------------------------------------------------------------------


@runtime_checkable
class RemoteHost(Protocol):
    """A host that runs shell commands. ``SshRemoteHost`` or a scripted fake in tests."""

    name: str

    def run(
        self,
        command: str,
        *,
        timeout: float = 300,
        sudo: bool = False,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run a shell command and return what it did (see ``SshRemoteHost.run``)."""
        ...

    def close(self) -> None:
        """Release the connection; the host may be used again afterwards."""
        ...
