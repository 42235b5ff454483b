"""The remote-execution layer: run shell commands on hosts over SSH (paramiko).

- ``tasks.remote.base``: the ``RemoteHost`` interface (``run(command) ->
  CommandResult``), ``SshTarget``/``SshJump``, and ``sh_join``, ``sudo_wrap``,
  ``redact`` that callers build commands with;
- ``tasks.remote.errors``: the one translation boundary, ``translate_error``, from
  paramiko/socket/OS errors into the ``RemoteError`` family;
- ``tasks.remote.ssh``: ``SshRemoteHost`` (host keys always verified against the identity
  block's known_hosts, one lazily opened connection per host, only connecting retried)
  and ``SessionPool``.

The public names are re-exported here (``from tasks.remote import RemoteHost``). See
docs/remote.md.
"""

from __future__ import annotations

from tasks.remote.base import (
    REDACTED,
    CommandResult,
    RemoteHost,
    SshJump,
    SshTarget,
    redact,
    sh_join,
    sudo_wrap,
)
from tasks.remote.errors import TRANSLATABLE, translate_error
from tasks.remote.ssh import SessionPool, SshRemoteHost

__all__ = [
    "REDACTED",
    "TRANSLATABLE",
    "CommandResult",
    "RemoteHost",
    "SessionPool",
    "SshJump",
    "SshRemoteHost",
    "SshTarget",
    "redact",
    "sh_join",
    "sudo_wrap",
    "translate_error",
]
