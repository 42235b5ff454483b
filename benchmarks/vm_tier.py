"""Benchmark: what the sandbox's VM tier costs (image, checkpoint, VMs, rollback, reboot).

Prints, for an estate of N VM hosts (default 3, as the test suite's ``vm_estate``): the
VM image (built now or cached), the template checkpoint (its cold boot and save, or
cached), bringing N VMs up from the checkpoint (identity and initial packages included),
each VM's RSS and CPU when idle, a rollback to ``ready`` (snapshot-load + clock), a saved
state's save and load, and a real ``systemctl reboot`` until SSH answers with a new boot
id. Removes the estate afterwards (the image and checkpoint stay cached).

    .venv/bin/python benchmarks/vm_tier.py [--vms 3] [--net 92]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.errors import SandboxError
from core.settings import telemetry_off
from sandbox import vm as vm_mod
from sandbox.estate import Estate, EstateSpec, HostSpec
from sandbox.system import run
from sandbox.vm_image import ensure_vm_image, image_dir


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ssh(estate: Estate, address: str, command: str) -> str:
    return run(
        [
            "ssh", "-i", str(estate.key_path), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={estate.known_hosts_path}", "-o", "ConnectTimeout=5",
            f"root@{address}", command,
        ]
    ).stdout.strip()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--net", type=int, default=92)
    args = parser.parse_args(argv)
    telemetry_off()

    cached = (image_dir() / ".caretaker-image").exists()
    started = time.monotonic()
    image = ensure_vm_image()
    print(
        f"VM image: {'cached' if cached else 'built'} in {time.monotonic() - started:.1f} s,"
        f" {image.disk.stat().st_size / 2**20:.0f} MB qcow2"
    )
    cached = (image.folder / "checkpoint" / ".caretaker-checkpoint").exists()
    started = time.monotonic()
    _, template = vm_mod.ensure_checkpoint()
    marker = (template.parent / ".caretaker-checkpoint").read_text().strip()
    print(
        f"checkpoint: {'cached' if cached else 'made'} in {time.monotonic() - started:.1f} s"
        f" ({marker}), {template.stat().st_size / 2**20:.0f} MB, accelerator"
        f" {vm_mod.accelerator(image)}"
    )

    hosts = [
        HostSpec(name=f"bvm{i}", address=f"10.213.{args.net}.{20 + i}", kind="vm")
        for i in range(1, args.vms + 1)
    ]
    estate = Estate(EstateSpec(name="bench-vm", net=args.net, hosts=hosts))
    try:
        started = time.monotonic()
        estate.up(fresh=True, wait=180)
        took = time.monotonic() - started
        print(f"{args.vms} VMs up from the checkpoint (SSH answering): {took:.1f} s")

        pids = [estate.vm(h.name).pid or 0 for h in hosts]
        before = [_cpu_ticks(p) for p in pids]
        time.sleep(10)
        ticks = os.sysconf("SC_CLK_TCK")
        idle = [(_cpu_ticks(p) - b) / ticks / 10 * 100 for p, b in zip(pids, before, strict=True)]
        print(
            "per VM: RSS " + ", ".join(f"{_rss_mb(p):.0f}" for p in pids) + " MB; CPU when idle "
            + ", ".join(f"{c:.1f}" for c in idle) + " % of a core"
        )  # fmt: skip

        machine = estate.vm(hosts[0].name)
        started = time.monotonic()
        machine.load(vm_mod.READY_TAG)
        loaded = time.monotonic() - started
        machine.agent(vm_mod.clock_script())
        print(
            f"rollback to ready: {time.monotonic() - started:.2f} s"
            f" (snapshot-load {loaded:.2f} s, then the clock through the agent)"
        )
        started = time.monotonic()
        machine.save("bench")
        saved = time.monotonic() - started
        size = machine.state_size("bench") or 0
        started = time.monotonic()
        machine.load("bench")
        print(
            f"saved state: save {saved:.2f} s ({size / 2**20:.0f} MB RAM),"
            f" load {time.monotonic() - started:.2f} s"
        )

        address = hosts[0].address
        old = _ssh(estate, address, "cat /proc/sys/kernel/random/boot_id")
        started = time.monotonic()
        _ssh(estate, address, "systemctl --no-block reboot")
        new = old
        while new == old and time.monotonic() - started < 300:
            time.sleep(1)
            try:
                new = _ssh(estate, address, "cat /proc/sys/kernel/random/boot_id")
            except SandboxError:
                continue  # down while it reboots
        failed = _ssh(estate, address, "systemctl --failed --no-legend --plain | wc -l")
        print(
            f"systemctl reboot: back with a new boot id in {time.monotonic() - started:.1f} s"
            f" ({failed} failed units)"
        )
    finally:
        estate.down(purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
