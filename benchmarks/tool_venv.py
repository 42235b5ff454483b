"""Benchmark-only virtual environments: the tools a benchmark compares caretaker with.

polars, DuckDB and ansible-core are never project dependencies. A benchmark asks for
its venv by name; it is made in ``<settings().cache>/<name>`` with pip (from the index
pip is configured with) when it is missing or was made for other requirements, and
reused after that. When it cannot be made (no network, no ``venv`` module), the caller
gets None and a printed line that says why, and skips its comparison.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import settings

# Pinned, so that figures from two machines compare the same versions.
POLARS_DUCKDB = ["polars==2.1.0", "duckdb==2.0.0"]
ANSIBLE = ["ansible-core==2.19.14"]  # the last series that runs on Python 3.11


def tool_venv(name: str, requirements: list[str]) -> Path | None:
    """The ``bin`` folder of the venv ``<cache>/<name>`` with ``requirements`` installed,
    made now if needed; None (and a printed reason) when it cannot be made."""
    cache = settings().cache
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / name
    stamp = root / ".caretaker-requirements"
    wanted = "\n".join(requirements) + "\n"
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmarks at once make it once
        if stamp.exists() and stamp.read_text() == wanted:
            return root / "bin"
        print(f"making {root} (benchmark only): {' '.join(requirements)}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        try:
            for argv in (
                [sys.executable, "-m", "venv", str(root)],
                [str(root / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            ):
                subprocess.run(argv, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            print(f"could not make {root}: {detail.strip().splitlines()[-1]}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
            return None
        stamp.write_text(wanted)
    return root / "bin"
