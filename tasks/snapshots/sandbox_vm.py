"""The ``sandbox`` provider for the VM hosts of a sandbox estate: qcow2 snapshots over QMP.

A snapshot of a VM host is a saved state inside its qcow2 disk (``snapshot-save`` over
QMP: the disk *and* the RAM, taken while the VM is paused, so it is consistent without
freezing anything by hand), tagged with the snapshot id; its caretaker metadata
(``snapshot.json``) lives beside the namespace hosts' in ``<estate>/snapshots/<id>/``, so
``list``, ``find``, ``wait`` and retention work the same for both kinds of host.

A restore loads that state (``snapshot-load``): disk and memory go back to the moment of
the snapshot (a stopped VM is started from it with ``-loadvm``); the agent then sets the
clock to now, and the host answers SSH again. A restore test copies the disk (the VM
paused for the copy), starts the copy from the snapshot in a QEMU of its own whose only
network is user-mode networking restricted to one loopback port forward (``restrict=on``:
the copy reaches nothing, and only we reach it), verifies the original's host key there,
runs the check, records the RTO and removes the copy, whatever happened.

Only this module and ``tasks.snapshots.sandbox`` import ``sandbox/`` (docs/decisions.md).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from blocks.ssh import SshIdentity
from core.errors import CaretakerError, RemoteError, SandboxError, SnapshotError
from inventory import Server
from sandbox import vm as vm_mod
from sandbox.system import run, tcp_open
from tasks.remote import SshRemoteHost, SshTarget
from tasks.snapshots.base import RestoreTestResult, SnapshotRecord, poll_until, restore_test_result
from tasks.snapshots.sandbox import SandboxSnapshotProvider, known_hosts_for

log = logging.getLogger(__name__)

PREFIX = "vm-"
_FORWARD = re.compile(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)")


class VmSnapshotProvider(SandboxSnapshotProvider):
    """Snapshots of the VM hosts of one sandbox estate (saved states in their qcow2 disks)."""

    def _vm(self, server: Server) -> vm_mod.Vm:
        try:
            return self.estate.vm(self._host(server))
        except SandboxError as exc:
            raise SnapshotError(str(exc)) from exc

    def _dir(self, record: SnapshotRecord) -> Path:
        if record.provider != "sandbox" or len(record.ids) != 1:
            raise SnapshotError(f"{record.server}: not a sandbox snapshot: {record.ids}")
        snapshot_id = record.ids[0]
        if not re.fullmatch(r"vm-[0-9T]+-[0-9a-f]{8}", snapshot_id):
            raise SnapshotError(f"{record.server}: {snapshot_id!r} is not a VM snapshot id")
        return self.snapshots_dir / snapshot_id

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Save the VM's disk and RAM as a qcow2 snapshot named after the snapshot id.

        Raises:
            SnapshotError: the host is not a VM of the estate or not running, encryption
                is required, or QEMU refused (the snapshot is marked error).
        """
        vm = self._vm(server)
        if self.policy.require_encryption:
            raise SnapshotError(
                f"{server.name}: encryption is required but sandbox disks are not encrypted"
            )
        stamp = datetime.now(UTC)
        snapshot_id = f"{PREFIX}{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        folder = self.snapshots_dir / snapshot_id
        folder.mkdir(parents=True)
        record = SnapshotRecord(
            provider="sandbox",
            kind="disk",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[snapshot_id],
            state="pending",
            encrypted=False,
            created_at=stamp,
            detail=f"estate {self.estate.spec.name}; VM",
        )
        self._write(folder, record)
        try:
            started = time.monotonic()
            vm.save(snapshot_id)
            size = vm.state_size(snapshot_id)
        except SandboxError as exc:
            failed = record.model_copy(update={"state": "error", "detail": str(exc)})
            self._write(folder, failed)
            raise SnapshotError(f"{server.name}: VM snapshot failed: {exc}") from exc
        record = record.model_copy(
            update={
                "state": "completed",
                "size_bytes": size,
                "detail": f"estate {self.estate.spec.name}; VM disk and RAM saved"
                f" in {time.monotonic() - started:.1f}s",
            }
        )
        self._write(folder, record)
        log.info("%s: VM snapshot %s (%d bytes of RAM state)", server.name, snapshot_id, size or 0)
        return record

    def delete(self, record: SnapshotRecord) -> None:
        """Delete the saved state from the VM's disk and the metadata (gone counts as deleted).

        Raises:
            SnapshotError: a restore test is using it, or QEMU refused.
        """
        reason = self.in_use(record)
        if reason:
            raise SnapshotError(f"{record.server}: not deleting {record.ids[0]}: {reason}")
        folder = self._dir(record)
        with contextlib.suppress(SandboxError):
            vm = self.estate.vm(record.server)
            try:
                if record.ids[0] in vm.tags():
                    vm.delete(record.ids[0])
            except SandboxError as exc:
                raise SnapshotError(f"{record.server}: {exc}") from exc
        shutil.rmtree(folder, ignore_errors=True)

    def _completed(self, server: Server, record: SnapshotRecord) -> vm_mod.Vm:
        folder = self._dir(record)
        current = self._read(folder)
        vm = self._vm(server)
        if current is None or record.ids[0] not in vm.tags():
            raise SnapshotError(f"{server.name}: snapshot {record.ids[0]} does not exist")
        if current.state != "completed":
            raise SnapshotError(f"{server.name}: snapshot {record.ids[0]} is {current.state}")
        return vm

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Load the saved state (disk and RAM) into the VM, set its clock, wait for sshd.

        Raises:
            SnapshotError: the snapshot is missing or not completed, or the host did not
                answer SSH within ``boot_timeout_s``.
        """
        vm = self._completed(server, record)
        tag = record.ids[0]
        try:
            if vm.pid is None:
                self.estate.start_vm(server.name, loadvm=tag)
            else:
                vm.load(tag)
            vm.agent(vm_mod.clock_script(), timeout=self.boot_timeout_s)
        except SandboxError as exc:
            raise SnapshotError(f"{server.name}: restore from {tag} failed: {exc}") from exc
        address = self.estate.host(server.name).address

        def sshd() -> tuple[bool, str]:
            return tcp_open(address, 22, timeout=0.5), "no answer on tcp 22"

        poll_until(
            sshd, timeout_s=self.boot_timeout_s, poll_s=0.2, what=f"{server.name}: restored VM"
        )

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Start an isolated copy of the VM from the snapshot, verify it over SSH, remove it."""
        started = self._clock()
        run_dir = self.estate.dir / "restore-tests" / f"{record.ids[0]}-{uuid.uuid4().hex[:8]}"
        marker: Path | None = None
        copy: vm_mod.Vm | None = None
        ok, rto, detail = False, None, ""
        problems: builtins.list[str] = []
        try:
            vm = self._completed(server, record)
            marker = self._dir(record) / f"in-use-{os.getpid()}"
            marker.touch()
            run_dir.mkdir(parents=True)
            self._copy_disk(vm, run_dir)
            copy = vm_mod.Vm(run_dir)
            port = self._start_copy(copy, record.ids[0])
            copy.agent(_isolated_script(), timeout=max(5.0, timeout_s))

            def sshd() -> tuple[bool, str]:
                return tcp_open("127.0.0.1", port, timeout=0.5), "no answer on the forward"

            poll_until(
                sshd,
                timeout_s=max(0.0, timeout_s - (self._clock() - started)),
                poll_s=0.2,
                what=f"{server.name}: restored copy",
            )
            output = self._check_copy(server.name, port)
            rto = round(self._clock() - started, 3)
            ok = True
            detail = (
                f"copy of {record.ids[0]} started from its saved state, isolated (user-mode"
                f" network, one loopback forward to port {port}), host key of {server.name}"
                f" verified, check passed in {rto:.1f}s: {output}"
            )
        except (SnapshotError, RemoteError, SandboxError) as exc:
            detail = f"restore test failed: {exc}"
        finally:
            if copy is not None:
                copy.stop()
                if copy.pid is not None:
                    problems.append(f"QEMU process of the copy in {run_dir}")
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

    @staticmethod
    def _copy_disk(vm: vm_mod.Vm, run_dir: Path) -> None:
        """Copy the VM's qcow2 (with its saved states) while the VM is paused."""
        with vm.paused():
            run(["cp", "--reflink=auto", str(vm.disk), str(run_dir / "disk.qcow2")])

    def _start_copy(self, copy: vm_mod.Vm, tag: str) -> int:
        """Start the copy from ``tag`` on a restricted user-mode network; the forward's port."""
        image, _ = vm_mod.ensure_checkpoint()
        copy.start(
            vm_mod.qemu_command(
                image,
                copy.folder,
                accel=vm_mod.accelerator(image),
                netdev="user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:0-10.0.2.15:22",
                mac=vm_mod.mac_for(copy.folder.name, "isolated"),
                loadvm=tag,
            )
        )
        with copy.qmp() as qmp:
            usernet = qmp.execute("human-monitor-command", **{"command-line": "info usernet"})
        match = _FORWARD.search(usernet)
        if match is None:
            raise SnapshotError(f"no port forward to the restored copy: {usernet!r}")
        return int(match.group(1))

    def _check_copy(self, name: str, port: int) -> str:
        """Run the check on the copy over SSH, trusting only the original's host key."""
        original = self.estate.host(name).address
        identity = SshIdentity(
            username="root",
            private_key=SecretStr(self.estate.key_path.read_text()),
            known_hosts=known_hosts_for(
                self.estate.known_hosts_path.read_text(), original, f"[127.0.0.1]:{port}"
            ),
        )
        target = SshTarget(
            name=f"{name}-restore-test", address="127.0.0.1", port=port, user="root", sudo=False
        )
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


def _isolated_script() -> str:
    """What the copy runs first: the clock of now, and the address user-mode networking
    forwards to instead of the original's (the copy must never answer at that address)."""
    return vm_mod.clock_script() + (
        "dev=$(ls /sys/class/net | grep '^en' | head -n1)\n"
        'ip addr flush dev "$dev"\n'
        'ip addr add 10.0.2.15/24 dev "$dev"\n'
    )
