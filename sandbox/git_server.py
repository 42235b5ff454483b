"""The MSP's git server in the sandbox: a local bare repository of this working tree.

Workers get the code the way prefect.yaml says, with a ``git_clone`` of the deployed
commit; in tests and benchmarks the repository is a bare one in a folder of theirs, made
from the files of this checkout (tracked and new, as ``git ls-files`` lists them, so what
runs is the working tree), optionally with other client files in ``clients/`` (and
``prefect.yaml`` generated from them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.errors import SandboxError

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GitServer:
    """A bare repository and a checkout of it (the deploying machine's)."""

    url: str  # file:// URL of the bare repository
    checkout: Path  # a clone, with ``origin`` set to ``url``
    commit: str  # the one commit


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` (as a test identity); its output."""
    done = subprocess.run(
        ["git", "-c", "user.name=caretaker-test", "-c", "user.email=test@caretaker.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def publish_repository(root: Path, clients: Mapping[str, str] | None = None) -> GitServer:
    """Make ``root/caretaker.git`` from this working tree and clone it to ``root/deployer``.

    Args:
        root: an empty folder.
        clients: ``{slug: client file text}`` replacing ``clients/`` (and ``prefect.yaml``
            regenerated from them); None keeps the checkout's.
    """
    source = root / "source"
    files = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, files.split("\0")):
        path = REPO / name
        if path.is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    if clients is not None:
        shutil.rmtree(source / "clients")
        (source / "clients").mkdir()
        for slug, text in clients.items():
            (source / "clients" / f"{slug}.yaml").write_text(text)
        done = subprocess.run(
            [sys.executable, "-m", "deployments.generate", "--inventory", "clients"],
            cwd=source,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SandboxError(f"prefect.yaml for the given clients: {done.stderr or done.stdout}")
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "caretaker under test")
    bare = root / "caretaker.git"
    git(root, "clone", "-q", "--bare", str(source), str(bare))
    # One pack instead of ~400 loose objects: every clone of it (the deployer's, each
    # worker's git_clone pull step) then sends the pack as it is instead of compressing
    # every object again (0.7 s -> 0.15 s a clone, measured).
    git(bare, "repack", "-adq")
    url = bare.as_uri()
    checkout = root / "deployer"
    git(root, "clone", "-q", url, str(checkout))
    return GitServer(url=url, checkout=checkout, commit=git(checkout, "rev-parse", "HEAD"))
