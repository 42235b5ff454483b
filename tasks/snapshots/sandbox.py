"""The ``sandbox`` provider: real copies of a sandbox host's disk, restores and restore tests.

A sandbox host's disk is its overlay upper dir (``<estate>/hosts/<name>/upper``): every
file apt or anyone else changed on the host. A snapshot is a copy of that dir
(``cp -a --reflink=auto``) in ``<estate>/snapshots/<id>/upper`` beside a
``snapshot.json`` with the caretaker tags, the size and the state. To make the copy
consistent, every process of the host (everything in its PID namespace) is stopped
with SIGSTOP for the copy and continued afterwards, whatever happens.

A restore stops the host, swaps its upper dir for a copy of the snapshot's (with a
fresh overlay work dir), boots it and waits for sshd: the host comes back with the
snapshot's packages and a new boot id. The previous upper dir is kept until the
restored host answers, so a failed boot is rolled back.

The restore test boots a *new* host from a copy of the snapshot in a network namespace
of its own, joined to the root namespace by a veth pair on a separate /30 (see
``sandbox.estate.Estate.boot_isolated``), at another address than the original. Over
SSH, with the host key verified against the *original's* known_hosts entry, it runs a
check (``dpkg-query``), records the RTO, and always tears the copy down.

This is the only module of ``tasks/`` that imports ``sandbox/`` (DESIGN §2).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from blocks.ssh import SshIdentity
from core.errors import CaretakerError, ConfigError, RemoteError, SandboxError, SnapshotError
from inventory import SandboxProvider, Server, SnapshotPolicy
from sandbox.estate import Estate, load
from sandbox.system import pid_namespace_members, process_state, tcp_open
from tasks.remote import SshRemoteHost, SshTarget
from tasks.snapshots.base import (
    ProviderName,
    RestoreTestResult,
    SnapshotRecord,
    poll_until,
    restore_test_result,
)

log = logging.getLogger(__name__)

META = "snapshot.json"
#: What the restore test runs on the copy: the package database must be readable.
DEFAULT_CHECK = "dpkg-query -W -f '${Package} ${Version}\\n'"


def copy_tree(source: Path, target: Path) -> None:
    """``cp -a --reflink=auto``: owners, modes, links, xattrs kept; shared blocks if possible."""
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SnapshotError(f"copy {source} -> {target} failed: {proc.stderr.strip()[-500:]}")


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def frozen(init_pid: int | None, settle_s: float = 2.0) -> Iterator[builtins.list[int]]:
    """Stop every process of a host's PID namespace for the duration of the block.

    The scan is repeated until it finds nothing new, so a process forked between a scan
    and the stop is caught too. SIGSTOP takes effect asynchronously, so each round waits
    (at most ``settle_s``) until its processes read stopped before scanning again.
    Every stopped process is continued in ``finally``.

    Args:
        init_pid: The host's init (root-namespace PID); None (host down) freezes nothing.
        settle_s: Bound of the wait for one round of processes to stop.

    Yields:
        The PIDs that were stopped.
    """
    stopped: builtins.list[int] = []
    try:
        if init_pid is not None:
            for _ in range(20):
                fresh = [p for p in pid_namespace_members(init_pid) if p not in stopped]
                if not fresh:
                    break
                for pid in fresh:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                _wait_stopped(fresh, settle_s)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _wait_stopped(pids: builtins.list[int], settle_s: float) -> None:
    """Wait until each process reads stopped (T), a zombie or gone; at most ``settle_s``."""
    pending = pids
    deadline = time.monotonic() + settle_s
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if process_state(p) not in (None, "T", "t", "Z", "X")]
        if pending:
            time.sleep(0.005)


def known_hosts_for(known_hosts: str, original: str, address: str) -> str:
    """The original host's known_hosts entries, re-addressed to ``address``.

    A restored copy must present the original's host key; verifying it at the copy's
    new address needs the original's entries under the new name.

    Raises:
        SnapshotError: No entry for ``original``.
    """
    lines = []
    for line in known_hosts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and original in fields[0].split(","):
            lines.append(" ".join([address, *fields[1:]]))
    if not lines:
        raise SnapshotError(f"no known_hosts entry for {original}: cannot verify a restored copy")
    return "\n".join(lines) + "\n"


class SandboxSnapshotProvider:
    """Snapshots of the hosts of one sandbox estate.

    Args:
        estate: The estate (``sandbox.estate.load(name)``; see :func:`sandbox_provider`).
        policy: The client's snapshot policy.
        client: The client slug; when given, ``find`` and ``list`` see only its snapshots.
        boot_timeout_s: Bound for a restored host's sshd to answer.
        check_command: What the restore test runs on the copy over SSH.
        clock: Injected for tests.
    """

    name: ProviderName = "sandbox"

    def __init__(
        self,
        estate: Estate,
        policy: SnapshotPolicy,
        *,
        client: str | None = None,
        boot_timeout_s: float = 60,
        check_command: str = DEFAULT_CHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.estate = estate
        self.policy = policy
        self.client = client
        self.boot_timeout_s = boot_timeout_s
        self.check_command = check_command
        self._clock = clock

    @property
    def snapshots_dir(self) -> Path:
        """Where the estate's snapshots live."""
        return self.estate.dir / "snapshots"

    def _host(self, server: Server) -> str:
        try:
            return self.estate.host(server.name).name
        except SandboxError as exc:
            raise SnapshotError(str(exc)) from exc

    def _dir(self, record: SnapshotRecord) -> Path:
        if record.provider != "sandbox" or len(record.ids) != 1:
            raise SnapshotError(f"{record.server}: not a sandbox snapshot: {record.ids}")
        snapshot_id = record.ids[0]
        if not snapshot_id.startswith("sbx-") or "/" in snapshot_id:
            raise SnapshotError(f"{record.server}: {snapshot_id!r} is not a sandbox snapshot id")
        return self.snapshots_dir / snapshot_id

    # ------------------------------------------------------------------ metadata

    @staticmethod
    def _write(folder: Path, record: SnapshotRecord) -> None:
        data = {**record.model_dump(mode="json"), "managed": True}
        tmp = folder / (META + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(folder / META)  # atomic: a reader never sees half a file

    def _read(self, folder: Path) -> SnapshotRecord | None:
        try:
            data = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        if not data.pop("managed", False):
            return None
        try:
            return SnapshotRecord.model_validate(data)
        except ValueError:
            return None

    # ------------------------------------------------------------------ create / wait

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Copy the host's disk layer while every process of the host is stopped.

        Raises:
            SnapshotError: The host is not in the estate, encryption is required (sandbox
                disks are not encrypted), or the copy failed (the snapshot is marked error).
        """
        name = self._host(server)
        if self.policy.require_encryption:
            raise SnapshotError(
                f"{name}: encryption is required but sandbox disks are not encrypted"
            )
        stamp = datetime.now(UTC)
        snapshot_id = f"sbx-{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        folder = self.snapshots_dir / snapshot_id
        folder.mkdir(parents=True)
        record = SnapshotRecord(
            provider="sandbox",
            kind="disk",
            server=name,
            client=client,
            change_ref=change_ref,
            ids=[snapshot_id],
            state="pending",
            encrypted=False,
            created_at=stamp,
            detail=f"estate {self.estate.spec.name}",
        )
        self._write(folder, record)
        try:
            with frozen(self.estate.init_pid(name)) as stopped:
                copy_tree(self.estate.host_dir(name) / "upper", folder / "upper")
            record = record.model_copy(
                update={
                    "state": "completed",
                    "size_bytes": tree_size(folder / "upper"),
                    "detail": f"estate {self.estate.spec.name}; {len(stopped)} processes frozen",
                }
            )
        except SnapshotError as exc:
            self._write(folder, record.model_copy(update={"state": "error", "detail": str(exc)}))
            raise
        self._write(folder, record)
        log.info("%s: snapshot %s (%d bytes)", name, snapshot_id, record.size_bytes or 0)
        return record

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Read the snapshot's state until it is completed.

        Raises:
            SnapshotError: The snapshot is missing, failed, or still pending at the bound.
        """
        folder = self._dir(record)
        last: builtins.list[SnapshotRecord] = []

        def probe() -> tuple[bool, str]:
            current = self._read(folder)
            if current is None:
                raise SnapshotError(f"{record.server}: snapshot {record.ids[0]} does not exist")
            if current.state == "error":
                raise SnapshotError(
                    f"{record.server}: snapshot {record.ids[0]} failed: {current.detail}"
                )
            last[:] = [current]
            return current.state == "completed", current.state

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=poll_s,
            what=f"{record.server}: snapshot {record.ids[0]}",
        )
        return last[0]

    # ------------------------------------------------------------------ find / list / delete

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """The host's snapshots in this estate, oldest first."""
        if not self.snapshots_dir.is_dir():
            return []
        records = []
        for folder in self.snapshots_dir.iterdir():
            record = self._read(folder)
            if record is None or record.server != server.name:
                continue
            if self.client and record.client != self.client:
                continue
            records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """The snapshot already taken for ``change_ref`` (a failed one does not count)."""
        usable = [r for r in self.list(server) if r.change_ref == change_ref and r.state != "error"]
        return usable[-1] if usable else None

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the snapshot cannot be deleted: a running restore test uses it."""
        folder = self._dir(record)
        for marker in folder.glob("in-use-*"):
            pid = int(marker.name.rsplit("-", 1)[1])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                marker.unlink(missing_ok=True)  # a crashed test's marker
                continue
            return f"snapshot {record.ids[0]} is being restore-tested by process {pid}"
        return None

    def delete(self, record: SnapshotRecord) -> None:
        """Delete the snapshot's folder (already gone counts as deleted).

        Raises:
            SnapshotError: A restore test is using it.
        """
        reason = self.in_use(record)
        if reason:
            raise SnapshotError(f"{record.server}: not deleting {record.ids[0]}: {reason}")
        shutil.rmtree(self._dir(record), ignore_errors=True)

    # ------------------------------------------------------------------ restore

    def _completed_dir(self, record: SnapshotRecord) -> Path:
        folder = self._dir(record)
        current = self._read(folder)
        if current is None or not (folder / "upper").is_dir():
            raise SnapshotError(f"{record.server}: snapshot {record.ids[0]} does not exist")
        if current.state != "completed":
            raise SnapshotError(f"{record.server}: snapshot {record.ids[0]} is {current.state}")
        return folder

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Stop the host, put the snapshot's disk in place of its own, boot it, wait for sshd.

        The host's previous disk is kept aside until the restored host answers; if it
        does not, the previous disk is put back and booted, and SnapshotError is raised.

        Raises:
            SnapshotError: The snapshot is missing or not completed, or the host did not
                come back within ``boot_timeout_s``.
        """
        name = self._host(server)
        source = self._completed_dir(record) / "upper"
        hdir = self.estate.host_dir(name)
        upper, staging = hdir / "upper", hdir / "upper.restoring"
        aside = hdir / f"upper.before-{record.ids[0]}"
        shutil.rmtree(staging, ignore_errors=True)
        # Copy first, while the host still runs: its downtime is only the swap and boot.
        copy_tree(source, staging)
        try:
            self.estate.stop_host(name)
        except SandboxError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise SnapshotError(f"{name}: could not stop the host for the restore: {exc}") from exc
        shutil.rmtree(aside, ignore_errors=True)
        upper.rename(aside)
        staging.rename(upper)
        self._fresh_work_dir(hdir)
        try:
            self.estate.start_host(name, wait=self.boot_timeout_s)
        except SandboxError as exc:
            with contextlib.suppress(SandboxError):
                self.estate.stop_host(name)
            shutil.rmtree(upper, ignore_errors=True)
            aside.rename(upper)
            self._fresh_work_dir(hdir)
            with contextlib.suppress(SandboxError):
                self.estate.start_host(name, wait=self.boot_timeout_s)
            raise SnapshotError(
                f"{name}: the host did not come back from snapshot {record.ids[0]}"
                f" (its previous disk was put back): {exc}"
            ) from exc
        shutil.rmtree(aside, ignore_errors=True)
        log.info("%s: restored from %s", name, record.ids[0])

    @staticmethod
    def _fresh_work_dir(hdir: Path) -> None:
        # overlayfs refuses a work dir left over from another upper dir.
        shutil.rmtree(hdir / "work", ignore_errors=True)
        (hdir / "work").mkdir()

    # ------------------------------------------------------------------ restore test

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Boot an isolated copy of the snapshot, verify it over SSH, time it, remove it.

        Returns:
            ok with the RTO (copy + boot + checks) in seconds, or ok=False with what
            failed; ``cleaned_up`` is True only if no namespace, link, process or file of
            the copy is left.
        """
        started = self._clock()
        token = uuid.uuid4().hex[:8]
        run_dir = self.estate.dir / "restore-tests" / f"{record.ids[0]}-{token}"
        marker: Path | None = None
        isolated = None
        ok, rto, detail = False, None, ""
        problems: builtins.list[str] = []
        try:
            name = self._host(server)
            folder = self._completed_dir(record)
            marker = folder / f"in-use-{os.getpid()}"
            marker.touch()
            run_dir.mkdir(parents=True)
            copy_tree(folder / "upper", run_dir / "upper")
            try:
                isolated = self.estate.boot_isolated(name, run_dir)
            except SandboxError as exc:
                raise SnapshotError(f"{name}: could not boot the copy: {exc}") from exc
            address = isolated.address

            def sshd() -> tuple[bool, str]:
                return tcp_open(address, 22, timeout=0.5), "no answer on tcp 22"

            poll_until(
                sshd,
                timeout_s=max(0.0, timeout_s - (self._clock() - started)),
                poll_s=0.1,
                what=f"{name}: restored copy at {address}",
            )
            output = self._check(name, address)
            rto = round(self._clock() - started, 3)
            ok = True
            detail = (
                f"copy of {record.ids[0]} booted at {address} (isolated /30), host key of"
                f" {name} verified, check passed in {rto:.1f}s: {output}"
            )
        except (SnapshotError, RemoteError) as exc:
            detail = f"restore test failed: {exc}"
            if isolated is not None:
                detail += f" (copy at {isolated.address})"
        finally:
            if isolated is not None:
                problems.extend(isolated.teardown())
            shutil.rmtree(run_dir, ignore_errors=True)
            if run_dir.exists():
                problems.append(f"folder {run_dir}")
            if marker is not None:
                marker.unlink(missing_ok=True)
        return restore_test_result(
            server,
            "sandbox",
            record,
            ok=ok,
            rto_s=rto,
            detail=detail,
            leftovers=problems,
            separator=", ",
        )

    def _check(self, name: str, address: str) -> str:
        """Run the check on the copy over SSH, trusting only the original's host key."""
        original = self.estate.host(name).address
        identity = SshIdentity(
            username="root",
            private_key=SecretStr(self.estate.key_path.read_text()),
            known_hosts=known_hosts_for(
                self.estate.known_hosts_path.read_text(), original, address
            ),
        )
        target = SshTarget(name=f"{name}-restore-test", address=address, user="root", sudo=False)
        with SshRemoteHost(
            target, identity, connect_timeout=5, connect_retries=5, backoff_s=0.2
        ) as host:
            try:
                result = host.run(self.check_command, timeout=60, check=True)
            except CaretakerError as exc:
                raise SnapshotError(f"{name}: check on the restored copy failed: {exc}") from exc
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise SnapshotError(f"{name}: check on the restored copy printed nothing")
        return f"{len(lines)} line(s) of output"


def sandbox_provider(
    server: Server, entry: SandboxProvider, policy: SnapshotPolicy, *, client: str | None = None
) -> SandboxSnapshotProvider:
    """The provider for a server of a sandbox estate (what ``provider_for`` asks for).

    Raises:
        ConfigError: The estate named in the inventory is not known here.
    """
    try:
        estate = load(entry.estate)
    except CaretakerError as exc:
        raise ConfigError(f"{server.name}: sandbox estate {entry.estate!r}: {exc}") from exc
    if any(h.name == server.name and h.kind == "vm" for h in estate.spec.hosts):
        from tasks.snapshots.sandbox_vm import VmSnapshotProvider

        return VmSnapshotProvider(estate, policy, client=client)
    return SandboxSnapshotProvider(estate, policy, client=client)
