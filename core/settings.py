"""caretaker's settings: the few things that depend on the machine, in one place.

Read from ``CARETAKER_*`` environment variables when a setting is first asked
for (never at import time), with defaults that work on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class CaretakerSettings(BaseSettings):
    """Where caretaker finds its inventory and keeps what it builds."""

    model_config = SettingsConfigDict(env_prefix="CARETAKER_")

    inventory_dir: Path = Field(
        default=REPO_ROOT / "clients",
        description="Folder of client inventory files (clients/<slug>.yaml).",
    )
    cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "caretaker",
        description="Built things: sandbox images and estates, the local Prefect server's home.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="History store and reports; default <cache>/data.",
    )
    history_store_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the history store (postgresql+psycopg://user@host/db);"
            " default: the SQLite file <data>/caretaker.db."
        ),
    )
    history_store_shared: bool = Field(
        default=False,
        description=(
            "The history store must be shared by every machine that runs flows (worker mode:"
            " the run lock, health history and reports are one for the fleet). A SQLite"
            " store is per machine, so it is refused then."
        ),
    )
    approval_poll_s: float = Field(
        default=10,
        ge=0.1,
        le=300,
        description=(
            "Seconds between checks for an approver's answer while a run is paused"
            " (fractions allowed: the tests answer within a second)."
        ),
    )
    reboot_timeout_s: float = Field(
        default=600,
        ge=5,
        le=7200,
        description="How long a rebooted host may take to come back with a new boot id.",
    )
    dpkg_lock_timeout_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="How long apt waits for a dpkg lock held by another process before failing.",
    )
    min_free_disk_mb: int = Field(
        default=500,
        ge=0,
        description="Preflight: free space needed on / and /var of every host, in MiB.",
    )
    ssh_sessions_limit: int = Field(
        default=64,
        ge=1,
        le=10000,
        description=(
            "SSH sessions open at once across every worker: the global concurrency limit"
            " caretaker-ssh-sessions (`caretaker-limits apply`); health checks size their"
            " threads by it."
        ),
    )
    aws_api_calls_per_s: float = Field(
        # EC2 refills its own request buckets at 5 (mutating) to 20 (describe) calls a second.
        default=20.0,
        gt=0,
        le=1000,
        description=(
            "AWS API calls per second per region across every worker: the rate limit"
            " caretaker-aws-api-<region> (`caretaker-limits apply`)."
        ),
    )

    def store_url(self) -> str:
        """The history store's URL: ``history_store_url``, else the SQLite file in the data
        folder.

        Raises:
            ConfigError: the store must be shared (``history_store_shared``) but is a
                SQLite file, which only this machine sees.
        """
        url = self.history_store_url or f"sqlite:///{self.data / 'caretaker.db'}"
        if self.history_store_shared and is_sqlite_url(url):
            where = "the SQLite default" if not self.history_store_url else "a SQLite file"
            raise ConfigError(
                f"the history store must be shared by every worker"
                f" (CARETAKER_HISTORY_STORE_SHARED=true) but is {where}, which only this"
                " machine sees: set CARETAKER_HISTORY_STORE_URL to the fleet's PostgreSQL"
                " database (postgresql+psycopg://user@host/db) in the work pool's or the"
                " deployment's job variables"
            )
        return url

    @property
    def data(self) -> Path:
        """The data folder (created on demand)."""
        path = self.data_dir or self.cache / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path


def is_sqlite_url(url: str) -> bool:
    """Whether a SQLAlchemy URL names a SQLite database (``sqlite:///...``,
    ``sqlite+pysqlite:///...``) (pure)."""
    scheme = url.partition(":")[0]
    return scheme.partition("+")[0].strip().lower() == "sqlite"


def settings() -> CaretakerSettings:
    """Current settings (re-read each call, so tests can change the environment)."""
    return CaretakerSettings()


def telemetry_off() -> None:
    """Turn Prefect's telemetry off for this process and what it starts, unless the
    environment already says otherwise. Called by every command's ``main`` (never on import):
    caretaker sends nothing anywhere but to the hosts and APIs it is pointed at."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
