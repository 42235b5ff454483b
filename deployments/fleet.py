"""Worker mode on several machines: the work pool that carries caretaker's settings.

Every machine that runs flows runs a Prefect process worker of the ``caretaker-process``
pool; each flow run clones the deployed commit (``prefect.yaml``'s pull step). What the
runs need to know about the fleet (where the shared history store is) travels with the
work pool, in its base job template's ``env``: a worker's own shell passes nothing on, so
a worker started on a new machine needs only Prefect's API URL. The deployments add their
own job variables on top (heartbeats, ``CARETAKER_HISTORY_STORE_SHARED=true``: a run
refuses a per-machine store). The pool's job command is ``python -m
deployments.forkclient``: on a machine whose worker was started by ``caretaker-worker``
a run is forked from that machine's fork server (``deployments.forkserver``), else it
starts Prefect's engine as Prefect would.

    python -m deployments.fleet pool --store-url postgresql+psycopg://caretaker@db/caretaker
    python -m deployments.fleet pool --store-url URL --set CARETAKER_APPROVAL_POLL_S=5

``pool`` creates the pool or updates its template, and migrates the store's schema once,
so workers starting together do not race to create it. The URL must not hold a password
(the job template is readable by every Prefect user): give each machine a ``~/.pgpass``
(``PGPASSFILE``) instead. The step by step set-up is in docs/deployments.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

from core.errors import ConfigError
from core.settings import is_sqlite_url, telemetry_off
from deployments.generate import WORK_POOL, WORK_POOL_TYPE

__all__ = ["RUN_COMMAND", "base_job_template", "ensure_pool", "main", "pool_env"]

_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def pool_env(store_url: str, assignments: Sequence[str] = ()) -> dict[str, str]:
    """The ``env`` every run of the pool gets: the store's URL, telemetry off, and
    ``NAME=value`` settings (pure).

    Raises:
        ConfigError: the store is a SQLite file (one machine's), its URL holds a password,
            or an assignment is not ``NAME=value``.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if is_sqlite_url(store_url):
        raise ConfigError(
            f"{store_url}: a SQLite store is one machine's; the fleet's history store must be"
            " shared (postgresql+psycopg://user@host/db)"
        )
    try:
        url = make_url(store_url)
    except ArgumentError as exc:
        raise ConfigError(f"{store_url!r} is not a database URL") from exc
    if url.password:
        raise ConfigError(
            f"{url.render_as_string(hide_password=True)}: the URL holds a password, which"
            " every reader of the work pool would see; put it in each machine's ~/.pgpass"
            " (PGPASSFILE) and leave it out of the URL"
        )
    env = {
        "CARETAKER_HISTORY_STORE_URL": store_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f"{assignment!r}: give NAME=value (an environment variable)")
        env[name] = value
    return env


#: The job command of every run of the pool: hand the run to the machine's fork server
#: (``caretaker-worker``), else start Prefect's engine (``deployments.forkclient``).
RUN_COMMAND = "python -m deployments.forkclient"


def base_job_template(
    env: Mapping[str, str], default: dict[str, Any], command: str | None = RUN_COMMAND
) -> dict[str, Any]:
    """The process pool's ``default`` template with ``env`` as its runs' default and
    ``command`` as their command (None: Prefect's own; pure)."""
    template = deepcopy(default)
    template["variables"]["properties"]["env"]["default"] = dict(env)
    if command is not None:
        template["variables"]["properties"]["command"]["default"] = command
    return template


def ensure_pool(
    env: Mapping[str, str], name: str = WORK_POOL, command: str | None = RUN_COMMAND
) -> str:
    """Create the process work pool ``name`` with ``env`` and ``command`` for its runs, or
    update its template; returns ``created`` or ``updated``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    template = base_job_template(env, ProcessWorker.get_default_base_job_template(), command)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            done = "updated"
        except ObjectNotFound:
            done = "created"
        client.create_work_pool(
            WorkPoolCreate(name=name, type=WORK_POOL_TYPE, base_job_template=template),
            overwrite=True,
        )
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.fleet pool --store-url URL [--set NAME=value]...``."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="python -m deployments.fleet",
        description="Worker mode on several machines (docs/deployments.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pool = commands.add_parser(
        "pool", help="create or update the work pool with the settings its runs get"
    )
    pool.add_argument(
        "--store-url",
        required=True,
        help="the shared history store (postgresql+psycopg://user@host/db, no password)",
    )
    pool.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=value",
        help="another setting for every run (CARETAKER_..., PREFECT_...); repeatable",
    )
    pool.add_argument("--name", default=WORK_POOL, help=f"work pool (default {WORK_POOL})")
    pool.add_argument(
        "--command",
        default=RUN_COMMAND,
        help=f"its runs' job command (default {RUN_COMMAND!r}: the machine's fork server,"
        " else Prefect's engine; '' for Prefect's own, a new Python process per run)",
    )
    args = parser.parse_args(argv)

    from history.store import open_store

    try:
        env = pool_env(args.store_url, args.set)
        with open_store(args.store_url) as store:
            version = store.schema_version()
        done = ensure_pool(env, args.name, args.command or None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"work pool {args.name} {done}: its runs use the history store {store.url}")
    print(f"(schema version {version}); settings: {', '.join(sorted(env))}")
    print(f"job command: {args.command or 'Prefect default (python -m prefect.engine)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
