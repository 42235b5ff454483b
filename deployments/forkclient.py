"""The flow-run command of the ``caretaker-process`` pool: hand the run to this machine's
fork server, or start Prefect's engine as Prefect would.

The process worker runs the pool's job ``command`` (``python -m deployments.forkclient``,
set by ``python -m deployments.fleet pool``) in the run's working folder with the run's
environment. This module asks the fork server that ``caretaker-worker`` started beside
the worker (``CARETAKER_FORKSERVER``: its socket) for a flow-run process: it sends its
arguments, environment and working folder, and its stdin, stdout and stderr
(``SCM_RIGHTS``), gets the pid of the process forked for it, relays SIGTERM and SIGINT
to that process's group, and exits with its exit status, so the worker sees what it would
have seen of ``python -m prefect.engine``. When the client dies (SIGKILL), the fork
server kills the run: its socket closes.

No fork server (``CARETAKER_FORKSERVER`` unset: ``prefect worker start`` without
``caretaker-worker``; or nothing answering on it): it says so on stderr and execs
``python -m prefect.engine``, Prefect's own command.

Standard library only, and nothing of caretaker: it starts in ~30 ms and is the same on
every machine whatever commit a run deploys. The fork server's side is
``deployments.forkserver`` (docs/deployments.md, "The fork server").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ENV_SOCKET",
    "HEADER_SIZE",
    "MAGIC",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "exit_code",
    "fallback_reason",
    "main",
    "request_length",
]

#: The environment variable naming the fork server's socket (set by ``caretaker-worker``).
ENV_SOCKET = "CARETAKER_FORKSERVER"
#: A request starts with these bytes, then its length (4 bytes, big-endian), then JSON.
MAGIC = b"CTK1"
_HEADER = struct.Struct(">4sI")
HEADER_SIZE = _HEADER.size
#: Largest request accepted (an environment of a few hundred variables is ~20 kB).
MAX_REQUEST = 1 << 20
ENGINE = ("-m", "prefect.engine")


def encode_request(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bytes:
    """One request: the engine's arguments, the run's environment and folder (pure)."""
    body = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode(
        "utf-8", "surrogateescape"
    )
    if len(body) > MAX_REQUEST:
        raise ValueError(f"request of {len(body)} bytes: more than {MAX_REQUEST}")
    return _HEADER.pack(MAGIC, len(body)) + body


def request_length(header: bytes) -> int:
    """The body length a request header announces (pure).

    Raises:
        ValueError: not a request of this protocol, or too large.
    """
    if len(header) != _HEADER.size:
        raise ValueError(f"a request header is {_HEADER.size} bytes, got {len(header)}")
    magic, length = _HEADER.unpack(header)
    if magic != MAGIC:
        raise ValueError(f"not a fork-server request (starts with {magic!r})")
    if length > MAX_REQUEST:
        raise ValueError(f"request of {length} bytes: more than {MAX_REQUEST}")
    return int(length)


def decode_request(data: bytes) -> tuple[list[str], dict[str, str], str]:
    """``(argv, env, cwd)`` of a whole request (header and body; pure).

    Raises:
        ValueError: a malformed request (wrong magic, length, JSON or field types).
    """
    length = request_length(data[: _HEADER.size])
    body = data[_HEADER.size :]
    if len(body) != length:
        raise ValueError(f"request body of {len(body)} bytes, {length} announced")
    try:
        fields = json.loads(body.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"request is not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise ValueError("request must be a JSON object with argv, env and cwd")
    argv, env, cwd = fields.get("argv"), fields.get("env"), fields.get("cwd")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ValueError("request argv must be a list of strings")
    if not (
        isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ValueError("request env must map strings to strings")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise ValueError("request cwd must be an absolute path")
    return argv, env, cwd


def encode_reply(**fields: int | str) -> bytes:
    """One reply line: ``{"pid": N}`` once forked, ``{"status": S}`` (a wait status) at
    the end, ``{"error": "..."}`` when the server could not start the run (pure)."""
    return json.dumps(fields).encode() + b"\n"


def decode_reply(line: bytes) -> dict[str, Any]:
    """A reply line's fields (pure)."""
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError(f"not a reply: {line!r}")
    return fields


def exit_code(status: int) -> int:
    """The exit code a process would report for a wait ``status``: its exit status, or
    minus the signal that killed it (``subprocess``'s convention; pure)."""
    return os.waitstatus_to_exitcode(status)


def fallback_reason(env: Mapping[str, str], connect_error: OSError | None) -> str | None:
    """Why this run starts Prefect's engine itself instead of asking a fork server, or
    None when it asks one (pure)."""
    path = env.get(ENV_SOCKET, "")
    if not path:
        return f"{ENV_SOCKET} is not set (a worker not started by caretaker-worker)"
    if connect_error is not None:
        return f"no fork server answers on {path} ({connect_error.strerror or connect_error})"
    return None


def _connect(path: str) -> tuple[socket.socket | None, OSError | None]:
    if not path:
        return None, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        return None, exc
    return sock, None


def _exec_engine(argv: Sequence[str], reason: str) -> None:
    print(f"caretaker: {reason}; starting python -m prefect.engine", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, *ENGINE, *argv])  # noqa: S606 - no shell wanted


def _exit_like(code: int) -> None:
    """Exit as the run's process did: the same code, or killed by the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one flow run through the fork server (never returns)."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    sock, error = _connect(env.get(ENV_SOCKET, ""))
    reason = fallback_reason(env, error)
    if sock is None or reason is not None:
        _exec_engine(args, reason or "no fork server")
        return
    child: list[int] = []
    pending: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        if child:
            try:
                os.killpg(child[0], signum)
            except ProcessLookupError:
                pass
        else:  # not forked yet: sent as soon as the pid is known
            pending.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, relay)
    request = encode_request(args, env, os.getcwd())
    try:
        sent = socket.send_fds(sock, [request], [0, 1, 2])
        sock.sendall(request[sent:])
        replies = sock.makefile("rb")
        first = decode_reply(replies.readline() or b"{}")
    except (OSError, ValueError) as exc:
        first = {"error": f"the fork server broke off ({exc})"}
    if "pid" not in first:
        sock.close()
        _exec_engine(args, str(first.get("error", "the fork server closed the connection")))
        return
    child.append(int(first["pid"]))
    for early in pending:
        relay(early, None)
    status: int | None = None
    while status is None:
        try:
            line = replies.readline()
        except InterruptedError:  # a relayed signal; keep waiting for the run's end
            continue
        if not line:
            break
        status = decode_reply(line).get("status")
    if status is None:
        print("caretaker: the fork server went away during the run", file=sys.stderr, flush=True)
        _exit_like(1)
    else:
        _exit_like(exit_code(int(status)))


if __name__ == "__main__":
    main()
