"""Where the sandbox keeps what it builds: outside the repository, in a cache.

``CARETAKER_CACHE`` overrides the default ``~/.cache/caretaker`` (root's home on
the machines we run on). Nothing here is ever committed.
"""

from __future__ import annotations

from pathlib import Path

from core.settings import settings


def cache_dir() -> Path:
    """The root of everything the sandbox builds (images, estates, logs)."""
    path = settings().cache
    path.mkdir(parents=True, exist_ok=True)
    return path


def images_dir() -> Path:
    """Built base images, one folder each, reused across estates."""
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def estates_dir() -> Path:
    """Running (or stopped) estates, one folder each."""
    path = cache_dir() / "estates"
    path.mkdir(parents=True, exist_ok=True)
    return path
