"""caretaker's settings: the few things that depend on the machine, in one place.

Read from ``CARETAKER_*`` environment variables when a setting is first asked
for (never at import time), with defaults that work on a fresh machine.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    @property
    def data(self) -> Path:
        """The data folder (created on demand)."""
        path = self.data_dir or self.cache / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path


def settings() -> CaretakerSettings:
    """Current settings (re-read each call, so tests can change the environment)."""
    return CaretakerSettings()
