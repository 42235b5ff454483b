"""The sandbox estate: real Debian hosts with real sshd, each in its own network namespace.

One estate is a bridge ``ctkbr<N>`` with address ``10.213.<N>.1/24`` in the root
namespace, and per host: a network namespace ``ctk<N>-<host>`` joined to the bridge by
a veth pair, an overlay root (cached base image + estate layer + the host's own
upper dir), its own host key, hostname and boot id, and an OpenSSH ``sshd`` as its
only service. Each host namespace has ``unreachable`` routes for every private
range and no default route, so nothing a host does can leave the machine.

State lives in ``<cache>/estates/<name>/``; ``up`` and ``down`` are idempotent, and
``down`` leaves no namespace, link, mount or process behind.

The throwaway hosts a restore test boots live in ``sandbox.isolated``; the commands,
process and namespace helpers both use in ``sandbox.system``.

A host of kind ``vm`` is a QEMU virtual machine instead (``sandbox.vm``: systemd,
journal, nftables, a real kernel and reboot) on the same bridge, through a tap device
``ctk<N>v<octet>``; its disk, sockets and host key live in ``<estate>/vms/<host>/``, and
it reads the estate's repository over HTTP on the bridge's address.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import SandboxError
from sandbox import image as image_mod
from sandbox import isolated
from sandbox import vm as vm_mod
from sandbox.isolated import IsolatedHost
from sandbox.paths import estates_dir
from sandbox.repo import INITIAL, SUITES, PackageSpec, Repository
from sandbox.system import (
    alive,
    configure_inside,
    first_child,
    pid_namespace_members,
    read_pid,
    run,
    tcp_open,
    wait_gone,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "host-init.sh"
SUPERVISE_SCRIPT = HERE / "host-supervise.sh"


class HostSpec(BaseModel):
    """One sandbox host."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="Host name.")
    address: str = Field(description="IPv4 address inside the estate's /24.")
    kind: Literal["namespace", "vm"] = Field(
        default="namespace",
        description="namespace: sshd in a network namespace; vm: a QEMU VM (sandbox.vm).",
    )


class AwsInstanceSpec(BaseModel):
    """A host that the AWS endpoint (moto) knows as an EC2 instance."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Name tag, equal to the host name.")
    region: str = Field(description="AWS region.")
    client: str = Field(description="Client slug, tagged on the instance.")
    data_volumes: int = Field(default=1, ge=0, le=4, description="Extra EBS volumes.")


class EstateSpec(BaseModel):
    """What an estate holds."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z0-9-]{1,20}$", description="Estate name.")
    net: int = Field(ge=1, le=254, description="N in 10.213.N.0/24.")
    hosts: list[HostSpec]
    aws: list[AwsInstanceSpec] = Field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"ctkbr{self.net}"

    @property
    def gateway(self) -> str:
        return f"10.213.{self.net}.1"

    def netns(self, host: str) -> str:
        return f"ctk{self.net}-{host}"

    def veth(self, host: HostSpec) -> str:
        # Interface names are limited to 15 characters: use the address's last octet.
        return f"ctk{self.net}h{host.address.rsplit('.', 1)[1]}"

    def tap(self, host: HostSpec) -> str:
        """The tap device of a VM host on the bridge."""
        return f"ctk{self.net}v{host.address.rsplit('.', 1)[1]}"

    @property
    def namespace_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts if h.kind == "namespace"]

    @property
    def vm_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts if h.kind == "vm"]


def numbered_hosts(name: str, net: int, count: int, prefix: str = "h") -> EstateSpec:
    """An estate of ``count`` plain hosts ``<prefix>01..``, addresses from .11 upward."""
    if not 1 <= count <= 200:
        raise SandboxError(f"an estate holds 1..200 hosts, not {count}")
    hosts = [
        HostSpec(name=f"{prefix}{i + 1:02d}", address=f"10.213.{net}.{11 + i}")
        for i in range(count)
    ]
    return EstateSpec(name=name, net=net, hosts=hosts)


def make_host_key(key: Path, host_name: str) -> None:
    """A new ed25519 host key at ``key`` (and ``key.pub``), commented ``root@<host>``."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host_name}", "-f", str(key)])


class Estate:
    """A running (or stoppable) sandbox estate, driven from its on-disk state."""

    def __init__(self, spec: EstateSpec, root: Path | None = None) -> None:
        self.spec = spec
        self.dir = root or estates_dir() / spec.name
        self.repo = Repository(self.dir / "repo")

    # ----- locations -------------------------------------------------------------
    @property
    def key_path(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def layer_dir(self) -> Path:
        return self.dir / "layer"

    def host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def host(self, name: str) -> HostSpec:
        for host in self.spec.hosts:
            if host.name == name:
                return host
        raise SandboxError(f"no host {name!r} in estate {self.spec.name!r}")

    def vm(self, name: str) -> vm_mod.Vm:
        """The QEMU machine of a VM host (running or not)."""
        if self.host(name).kind != "vm":
            raise SandboxError(f"{name} is not a VM host of estate {self.spec.name!r}")
        return vm_mod.Vm(self.dir / "vms" / name)

    @property
    def repo_server(self) -> vm_mod.RepoServer:
        """The repository over HTTP, for the VM hosts."""
        return vm_mod.RepoServer(self.dir, self.repo.root, self.spec.gateway)

    def init_pid(self, name: str) -> int | None:
        """The PID (in the root namespace) of the host's init, or None when down (or a VM)."""
        unshare = read_pid(self.host_dir(name) / "unshare.pid")
        if unshare is None or not alive(unshare):
            return None
        return first_child(unshare)

    # ----- lifecycle -------------------------------------------------------------
    def up(self, fresh: bool = False, wait: float = 20.0) -> None:
        """Bring the estate up; already-running hosts are left as they are.

        Args:
            fresh: throw away host disks, the repository and the estate layer first.
            wait: seconds to wait for every sshd to accept connections.
        """
        for tool in ("ip", "unshare", "ssh-keygen", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise SandboxError(f"{tool} is not installed: run `make setup` first")
        if fresh:
            self.down(purge=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spec.json").write_text(self.spec.model_dump_json(indent=2))
        if not self.key_path.exists():
            run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"caretaker-{self.spec.name}",
                    "-f",
                    str(self.key_path),
                ]
            )
        if not (self.repo.root / "dists").exists():
            self.repo.reset()
        self._ensure_bridge()
        if self.spec.namespace_hosts:
            image = image_mod.ensure_image()
            self._ensure_layer(image)
            lower = f"{self.layer_dir}:{image}"
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda h: self._start_host(h, lower), self.spec.namespace_hosts))
        if self.spec.vm_hosts:
            self._start_vms(self.spec.vm_hosts)
        self._write_known_hosts()
        self._wait_ssh(self.spec.hosts, wait)

    def down(self, purge: bool = False) -> None:
        """Stop every host, then remove namespaces, links and the bridge.

        Args:
            purge: also delete the estate's files (disks, repository, keys).
        """
        from sandbox import faults, moto

        faults.release_all(self)
        moto.stop(self)
        for host in self.spec.vm_hosts:
            self.vm(host.name).stop()
            run(["ip", "link", "del", self.spec.tap(host)], check=False)
        self.repo_server.stop()
        for host in self.spec.namespace_hosts:
            self._stop_host(host)
        for host in self.spec.namespace_hosts:
            # Delete the veth explicitly: a namespace whose last process is still dying
            # outlives `ip netns del` for a moment, and its veth pair with it.
            run(["ip", "link", "del", self.spec.veth(host)], check=False)
            run(["ip", "netns", "del", self.spec.netns(host.name)], check=False)
        run(["ip", "link", "del", self.spec.bridge], check=False)
        if purge and self.dir.exists():
            shutil.rmtree(self.dir)

    def status(self) -> list[dict[str, object]]:
        """One row per host: name, address, init pid, sshd reachable, boot id."""
        rows = []
        for host in self.spec.hosts:
            pid = self.vm(host.name).pid if host.kind == "vm" else self.init_pid(host.name)
            boot = self.host_dir(host.name) / "boot_id"
            rows.append(
                {
                    "host": host.name,
                    "address": host.address,
                    "running": pid is not None,
                    "ssh": pid is not None and tcp_open(host.address, 22),
                    "boot_id": boot.read_text().strip() if boot.exists() else None,
                }
            )
        return rows

    def publish(self, spec: PackageSpec) -> None:
        """Publish one package version in the estate's repository."""
        self.repo.publish(spec)

    # ----- pieces ----------------------------------------------------------------
    def _ensure_layer(self, image: Path) -> None:
        """The estate layer: the initial packages installed once, shared by all hosts."""
        marker = self.layer_dir / ".caretaker-layer"
        if marker.exists():
            return
        shutil.rmtree(self.layer_dir, ignore_errors=True)
        work = self.dir / "layer-work"
        shutil.rmtree(work, ignore_errors=True)
        self.layer_dir.mkdir(parents=True)
        work.mkdir()
        names = " ".join(p.name for p in INITIAL)
        script = f"""
set -eu
M={self.dir}/layer-mnt; mkdir -p $M
mount -t overlay overlay -o lowerdir={image},upperdir={self.layer_dir},workdir={work} $M
mount --bind -o ro {self.repo.root} $M/srv/caretaker-repo
mount -t proc proc $M/proc
mount --rbind /dev $M/dev
mount -t tmpfs tmpfs $M/tmp
printf '%s' '{Repository.sources_list()}' > $M/etc/apt/sources.list
chroot $M apt-get -q update
DEBIAN_FRONTEND=noninteractive chroot $M apt-get -q install -y --no-install-recommends {names}
chroot $M apt-get clean
"""
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
            capture_output=True,
            text=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(self.dir / "layer-mnt", ignore_errors=True)
        if proc.returncode != 0:
            raise SandboxError(
                f"estate layer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        marker.write_text("ok\n")

    def _ensure_bridge(self) -> None:
        br = self.spec.bridge
        if run(["ip", "link", "show", br], check=False).returncode != 0:
            run(["ip", "link", "add", br, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.spec.gateway}/24", "dev", br])
        run(["ip", "link", "set", br, "up"])

    def _prepare_disk(self, host: HostSpec) -> Path:
        hdir = self.host_dir(host.name)
        upper = hdir / "upper"
        if (hdir / ".prepared").exists():
            return hdir
        for sub in ("upper", "work", "root"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        ssh = upper / "etc/ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        key = ssh / "ssh_host_ed25519_key"
        make_host_key(key, host.name)
        (upper / "etc/hostname").write_text(host.name + "\n")
        (upper / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.address} {host.name}\n")
        (upper / "etc/apt").mkdir(parents=True, exist_ok=True)
        (upper / "etc/apt/sources.list").write_text(Repository.sources_list())
        pub = self.key_path.with_suffix(".pub").read_text()
        for home, owner in (("root", (0, 0)), ("home/ops", self._ops_ids())):
            sshdir = upper / home / ".ssh"
            sshdir.mkdir(parents=True, exist_ok=True)
            (sshdir / "authorized_keys").write_text(pub)
            os.chmod(sshdir, 0o700)
            for path in (sshdir, sshdir / "authorized_keys"):
                os.chown(path, *owner)
            os.chown(upper / home, *owner)
        (upper / "root").chmod(0o700)
        (hdir / ".prepared").write_text("ok\n")
        return hdir

    def _ops_ids(self) -> tuple[int, int]:
        passwd = (image_mod.image_path() / "etc/passwd").read_text()
        for line in passwd.splitlines():
            parts = line.split(":")
            if parts[0] == "ops":
                return int(parts[2]), int(parts[3])
        raise SandboxError("the base image has no ops user")

    def _start_host(self, host: HostSpec, lower: str) -> None:
        if self.init_pid(host.name) is not None:
            return
        hdir = self._prepare_disk(host)
        for flag in ("stop", "no-boot"):
            (hdir / flag).unlink(missing_ok=True)
        self._plumb(host)
        with open(hdir / "supervisor.log", "a") as out:
            proc = subprocess.Popen(
                [
                    "bash",
                    str(SUPERVISE_SCRIPT),
                    str(hdir),
                    self.spec.netns(host.name),
                    host.name,
                    lower,
                    str(self.repo.root),
                    str(INIT_SCRIPT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        (hdir / "supervisor.pid").write_text(f"{proc.pid}\n")

    def _plumb(self, host: HostSpec) -> None:
        ns = self.spec.netns(host.name)
        veth = self.spec.veth(host)
        pids = run(["ip", "netns", "pids", ns], check=False)
        if pids.returncode != 0:
            run(["ip", "netns", "add", ns])
        elif pids.stdout.split():
            # This estate has no host running there (its init pid is gone), so someone
            # else's is: another estate on the same net, from another cache directory.
            raise SandboxError(
                f"network namespace {ns} already runs processes ({', '.join(pids.stdout.split())})"
                f" that this estate ({self.dir}) did not start: another estate uses net"
                f" {self.spec.net}. Stop it (`CARETAKER_CACHE=<its cache> python -m sandbox"
                " down`) or kill those processes, then try again"
            )
        if run(["ip", "link", "show", veth], check=False).returncode != 0:
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", veth, "master", self.spec.bridge])
        run(["ip", "link", "set", veth, "up"])
        configure_inside(ns, f"{host.address}/24")

    def _stop_host(self, host: HostSpec) -> None:
        hdir = self.host_dir(host.name)
        if not hdir.exists():
            return
        (hdir / "stop").write_text("")
        sup = read_pid(hdir / "supervisor.pid")
        unshare = read_pid(hdir / "unshare.pid")
        # unshare ignores SIGTERM; SIGKILL on it kills the host's init (--kill-child),
        # and the PID namespace, its mounts and processes go with it.
        for pid in (sup, unshare):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (alive(sup) or alive(unshare)):
            time.sleep(0.05)
        for name in ("supervisor.pid", "unshare.pid"):
            (hdir / name).unlink(missing_ok=True)

    def host_key_pub(self, host: HostSpec) -> Path:
        """Where the host's public host key is (made by the estate, per host)."""
        if host.kind == "vm":
            return self.vm(host.name).folder / "ssh_host_ed25519_key.pub"
        return self.host_dir(host.name) / "upper/etc/ssh/ssh_host_ed25519_key.pub"

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.spec.hosts:
            pub = self.host_key_pub(host).read_text()
            keytype, key = pub.split()[:2]
            lines.append(f"{host.address} {keytype} {key}\n")
        self.known_hosts_path.write_text("".join(lines))

    def _wait_ssh(self, hosts: Iterable[HostSpec], wait: float) -> None:
        pending = {h.address: h.name for h in hosts}
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            for address in list(pending):
                if tcp_open(address, 22):
                    del pending[address]
            if pending:
                time.sleep(0.1)
        if pending:
            names = ", ".join(sorted(pending.values()))
            raise SandboxError(
                f"sshd did not come up within {wait:g}s on: {names} "
                f"(see {self.dir}/hosts/<host>/console.log)"
            )

    # ----- VM hosts ------------------------------------------------------------------
    def _start_vms(self, hosts: list[HostSpec]) -> None:
        """Start the VM hosts that are not running, in parallel (see ``sandbox.vm``)."""
        pending = [h for h in hosts if self.vm(h.name).pid is None]
        if not pending:
            return
        image, template = vm_mod.ensure_checkpoint()
        accel = vm_mod.accelerator(image)
        url = self.repo_server.ensure()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda h: self._start_vm(h, image, template, accel, url), pending))

    def start_vm(self, name: str, loadvm: str | None = None) -> None:
        """Start one stopped VM host: from its saved state ``loadvm``, else boot its disk."""
        host = self.host(name)
        if self.vm(name).pid is not None:
            raise SandboxError(f"{name} is running")
        image, template = vm_mod.ensure_checkpoint()
        url = self.repo_server.ensure()
        self._start_vm(host, image, template, vm_mod.accelerator(image), url, loadvm=loadvm)

    def _start_vm(
        self,
        host: HostSpec,
        image: vm_mod.VmImage,
        template: Path,
        accel: str,
        url: str,
        loadvm: str | None = None,
    ) -> None:
        """A new VM host starts from the template checkpoint and gets its identity, the
        estate's initial packages and a ``ready`` saved state; a known one boots its disk."""
        machine = self.vm(host.name)
        folder = machine.folder
        folder.mkdir(parents=True, exist_ok=True)
        fresh = not (folder / ".ready").exists()
        key = folder / "ssh_host_ed25519_key"
        if fresh:
            for stale in ("disk.qcow2", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
                (folder / stale).unlink(missing_ok=True)
            run(["cp", "--reflink=auto", str(template), str(machine.disk)])
            make_host_key(key, host.name)
        tap = self.spec.tap(host)
        if run(["ip", "link", "show", tap], check=False).returncode != 0:
            run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            run(["ip", "link", "set", tap, "master", self.spec.bridge])
        run(["ip", "link", "set", tap, "up"])
        mac = vm_mod.mac_for(host.name, host.address)
        command = vm_mod.qemu_command(
            image,
            folder,
            accel=accel,
            # No vnet_hdr: a saved state must load on user-mode networking too (restore tests).
            netdev=f"tap,id=n0,ifname={tap},script=no,downscript=no,vnet_hdr=off",
            mac=mac,
            loadvm=vm_mod.TEMPLATE_TAG if fresh else loadvm,
        )
        started = time.monotonic()
        machine.start(command)
        sources = vm_mod.http_sources_list(url, SUITES)
        if not fresh:
            machine.wait_agent(240)
            if loadvm:
                machine.agent(vm_mod.clock_script())
            machine.agent(f"printf '%s' {shlex.quote(sources)} > /etc/apt/sources.list")
            return
        loaded = time.monotonic()
        machine.agent(
            vm_mod.identity_script(
                name=host.name,
                address=host.address,
                prefix=24,
                mac=mac,
                host_key=key.read_text(),
                host_key_pub=key.with_suffix(".pub").read_text(),
                authorized_key=self.key_path.with_suffix(".pub").read_text(),
                sources=sources,
            )
        )
        named = time.monotonic()
        names = " ".join(p.name for p in INITIAL)
        machine.agent(
            "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q install -y"
            f" --no-install-recommends -o Dpkg::Options::=--force-unsafe-io {names}",
            timeout=300,
        )
        installed = time.monotonic()
        machine.save(vm_mod.READY_TAG)
        (folder / ".ready").write_text("ok\n")
        log.info(
            "%s: VM from the checkpoint in %.1fs, identity %.1fs, packages %.1fs, saved %.1fs",
            host.name,
            loaded - started,
            named - loaded,
            installed - named,
            time.monotonic() - installed,
        )

    def reboot(self, name: str) -> None:
        """Reboot a host the way the host itself would (its init exits; a VM's systemd
        reboots its kernel)."""
        if self.host(name).kind == "vm":
            self.vm(name).agent("systemctl --no-block reboot")
            return
        pid = self.init_pid(name)
        if pid is None:
            raise SandboxError(f"{name} is not running")
        os.kill(pid, signal.SIGTERM)

    # ----- one host at a time (snapshot restore) ------------------------------------
    def _lower(self) -> str:
        """The overlay lower dirs every host of this estate shares: estate layer, base image."""
        return f"{self.layer_dir}:{image_mod.image_path()}"

    def stop_host(self, name: str, wait: float = 10.0) -> None:
        """Stop one host (no reboot follows) and wait until every process of it is gone.

        Once this returns, nothing mounts the host's disk any more: its upper dir may be
        replaced (a restore from a snapshot).
        """
        host = self.host(name)
        if host.kind == "vm":
            self.vm(name).stop()
            return
        init = self.init_pid(name)
        members = pid_namespace_members(init) if init else []
        self._stop_host(host)
        wait_gone(members, wait, f"host {name}")

    def start_host(self, name: str, wait: float = 20.0) -> None:
        """Start one stopped host (a no-op if it runs) and wait for its sshd."""
        host = self.host(name)
        if host.kind == "vm":
            self._start_vms([host])
        else:
            self._start_host(host, self._lower())
        self._wait_ssh([host], wait)

    def boot_isolated(
        self, hostname: str, disk: Path, subnet: ipaddress.IPv4Network | None = None
    ) -> IsolatedHost:
        """Boot a throwaway host from ``disk/upper`` that only the root namespace can reach.

        See :func:`sandbox.isolated.boot`: its own network namespace, a veth pair on a
        /30 of ``ISOLATED_NET`` (no bridge), no route anywhere else. It shares the
        estate's lower layers read-only; everything it writes lands in ``disk/upper``.

        Args:
            hostname: Host name inside the copy.
            disk: A folder holding ``upper/`` (e.g. a copy of a snapshot); ``work/``,
                ``root/``, ``boot_id`` and ``console.log`` are created beside it.
            subnet: A /30 to use; default: the first free one of ``ISOLATED_NET``.

        Returns:
            The running host; call ``teardown()`` when done.
        """
        return isolated.boot(
            hostname,
            disk,
            init_script=INIT_SCRIPT,
            lower=self._lower(),
            repo_root=self.repo.root,
            subnet=subnet,
        )


def load(name: str) -> Estate:
    """The estate called ``name``, from its saved spec."""
    spec_file = estates_dir() / name / "spec.json"
    if not spec_file.exists():
        raise SandboxError(f"no estate {name!r}: run `python -m sandbox up` first")
    return Estate(EstateSpec.model_validate_json(spec_file.read_text()))


def check_address(spec: EstateSpec, address: str) -> None:
    """Refuse an address outside the estate's /24 (or the gateway)."""
    net = ipaddress.ip_network(f"10.213.{spec.net}.0/24")
    ip = ipaddress.ip_address(address)
    if ip not in net or str(ip) == spec.gateway or ip == net.broadcast_address:
        raise SandboxError(f"{address} is not a host address of {net}")


__all__ = [
    "AwsInstanceSpec",
    "Estate",
    "EstateSpec",
    "HostSpec",
    "PackageSpec",
    "check_address",
    "load",
    "numbered_hosts",
]
