"""A local Prefect server for the embedded mode: SQLite, loopback, a free port.

It is started once and reused: its PID and URL are kept in
``<cache>/prefect/server.json``; its database in ``<cache>/prefect/``.

Every function takes an optional ``home``: another PREFECT_HOME for a server of its
own (tests start one in a temporary folder, beside any server already running).
``database_url`` puts that server on PostgreSQL (``postgresql+asyncpg://user@host/db``,
Prefect's production set-up; users start theirs with ``prefect server start``, see
docs/deployments.md), and ``env`` adds server settings (e.g. the scheduler off).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.errors import ConfigError
from core.settings import settings


def prefect_home(home: Path | None = None) -> Path:
    """PREFECT_HOME of the local server (database, logs): ``home``, or ``<cache>/prefect``."""
    path = home if home is not None else settings().cache / "prefect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=1) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except OSError:
        return False


def running_server(home: Path | None = None) -> str | None:
    """The URL of the local server (of ``home``, if given) if it is up, else None."""
    state = prefect_home(home) / "server.json"
    if not state.exists():
        return None
    url = str(json.loads(state.read_text())["url"])
    return url if _healthy(url) else None


def ensure_server(
    timeout: float = 90.0,
    home: Path | None = None,
    *,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Start the local Prefect server unless it already runs; return its base URL.

    Args:
        timeout: seconds to wait for the server to answer.
        home: PREFECT_HOME of the server (default ``<cache>/prefect``).
        database_url: the server's database (``postgresql+asyncpg://...``); default the
            SQLite file in ``home``.
        env: more environment of the server process (``PREFECT_SERVER_*`` settings).
    """
    home = prefect_home(home)
    url = running_server(home)
    if url:
        return url
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_API_URL=f"{url}/api",
    )
    server_env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if database_url:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    server_env.update(env or {})
    log = open(home / "server.log", "a")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--analytics-off",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=server_env,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(url):
            (home / "server.json").write_text(json.dumps({"pid": proc.pid, "url": url}))
            return url
        if proc.poll() is not None:
            raise ConfigError(f"prefect server exited {proc.returncode}: see {home}/server.log")
        time.sleep(0.5)
    proc.kill()
    raise ConfigError(f"prefect server did not answer within {timeout:g}s")


def stop_server(home: Path | None = None) -> None:
    """Stop the local server (of ``home``, if given) if we started it."""
    state = prefect_home(home) / "server.json"
    if not state.exists():
        return
    pid = int(json.loads(state.read_text())["pid"])
    try:
        os.killpg(pid, 15)
    except ProcessLookupError:
        pass
    state.unlink()
