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


#: Prefect's settings that put its messaging, event ordering and concurrency leases in
#: Redis (prefect-redis): what several API processes (``prefect server start --workers N``)
#: and a separate services process need to share.
REDIS_MODULES = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}


#: The background services' batches on a server of several processes (Redis messaging).
#: Prefect reads its message streams one message at a time and records every task-run
#: event in a transaction of its own by default (a Redis read, an acknowledgement and a
#: database commit per event: each task run sends three); a window of 40 maintenance runs
#: sends ~1,200 at once. Here each consumer reads up to 50 waiting messages per Redis call
#: (it never waits to fill a batch), and the task-run recorder writes up to 50 events per
#: transaction, within 1 s (its states reach the UI at most a second later); a crash of
#: the services process loses the events it had not written yet, as Prefect's event
#: persister's own batches already do. Decision 87.
SERVICE_BATCHES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TRIGGERS_READ_BATCH_SIZE": "50",
}


def redis_env(host: str = "127.0.0.1", port: int = 6379, db: int = 0) -> dict[str, str]:
    """The server environment for Redis messaging at ``host:port``, database ``db``, with
    the services' batches of a server that needs it (:data:`SERVICE_BATCHES`).

    Raises:
        ConfigError: prefect-redis is not installed.
    """
    try:
        import prefect_redis.messaging  # noqa: F401 - the modules the settings name
    except ImportError as exc:
        raise ConfigError(
            "Redis messaging needs prefect-redis (pip install prefect-redis)"
        ) from exc
    return {
        **REDIS_MODULES,
        **SERVICE_BATCHES,
        "PREFECT_REDIS_MESSAGING_HOST": host,
        "PREFECT_REDIS_MESSAGING_PORT": str(port),
        "PREFECT_REDIS_MESSAGING_DB": str(db),
    }


def _prefect(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("prefect")), *args]


def ensure_server(
    timeout: float = 90.0,
    home: Path | None = None,
    *,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> str:
    """Start the local Prefect server unless it already runs; return its base URL.

    Args:
        timeout: seconds to wait for the server to answer.
        home: PREFECT_HOME of the server (default ``<cache>/prefect``).
        database_url: the server's database (``postgresql+asyncpg://...``); default the
            SQLite file in ``home``.
        env: more environment of the server process (``PREFECT_SERVER_*`` settings;
            :func:`redis_env` for ``workers`` > 1).
        workers: API processes. More than one needs PostgreSQL and Redis messaging; the
            database is migrated first (the processes would race to create it) and the
            background services run in a process of their own (``prefect server services
            start``), as Prefect's multi-worker mode requires.

    Raises:
        ConfigError: the server exited or did not answer in time, or ``workers`` > 1
            without PostgreSQL.
    """
    home = prefect_home(home)
    url = running_server(home)
    if url:
        return url
    if workers > 1 and not (database_url or "").startswith("postgresql"):
        raise ConfigError("several Prefect server processes need PostgreSQL (database_url)")
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
    commands = [
        _prefect("server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off")
    ]
    if workers > 1:
        subprocess.run(
            _prefect("server", "database", "upgrade", "-y"),
            stdout=log,
            stderr=log,
            env=server_env,
            check=True,
            timeout=timeout,
        )
        server_env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        commands[0] += ["--workers", str(workers)]
        commands.append(_prefect("server", "services", "start"))
    procs = [
        subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=server_env,
            start_new_session=True,
        )
        for command in commands
    ]
    state = {"pid": procs[0].pid, "pids": [p.pid for p in procs], "url": url}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(url):
            (home / "server.json").write_text(json.dumps(state))
            return url
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    exited = [p.returncode for p in procs if p.poll() is not None]
    for proc in procs:
        _kill_group(proc.pid)
    if exited:
        raise ConfigError(f"prefect server exited {exited[0]}: see {home}/server.log")
    raise ConfigError(f"prefect server did not answer within {timeout:g}s: see {home}/server.log")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 15)
    except ProcessLookupError:
        pass


def stop_server(home: Path | None = None) -> None:
    """Stop the local server (of ``home``, if given) if we started it: every process."""
    state = prefect_home(home) / "server.json"
    if not state.exists():
        return
    data = json.loads(state.read_text())
    for pid in data.get("pids", [data["pid"]]):
        _kill_group(int(pid))
    state.unlink()
