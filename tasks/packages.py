"""Package maintenance: the exact plan of what an upgrade would change, and applying it.

The plan is computed by pure functions from facts collected on the host (apt's
own simulation of the upgrade, the held packages, the pending reboot) and the
client's patch policy, so that a dry run says precisely what would change.

``apply_updates`` then applies exactly an approved plan: every upgrade pinned to its
planned version (``name=version``), nothing else named, removals only when the plan
lists them. It checks first (a rerun of an applied plan is a recorded no-op), reads
the installed versions before and after, and returns the diff of what changed. A
failure is classified (``lock``, ``postinst``, ``network``, ``unknown``) and raised as
``PatchFailed`` carrying the diff of what did change. The command builders, the
``dpkg-query`` parser, the diff and the classifier are pure and tested from output
recorded on sandbox hosts (``tests/fixtures/patching/``). See docs/patching.md.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError, PatchFailed, RemoteError
from tasks.facts import (
    REBOOT_REQUIRED,
    FactParseError,
    HostFacts,
    PackageChange,
    RebootRequired,
    parse_reboot_required,
)
from tasks.remote import CommandResult, RemoteHost, sh_join

log = logging.getLogger(__name__)

# Packages whose upgrade needs a reboot to take effect on Debian-family hosts.
# Debian announces most of these through /var/run/reboot-required only after the
# upgrade, so the plan predicts from names and says so.
REBOOT_PACKAGES = re.compile(
    r"^(linux-image-.*|linux-modules-.*|linux-firmware|intel-microcode|amd64-microcode"
    r"|libc6|systemd|dbus|libssl3|openssl)$"
)

# Refresh the package lists first (what Patch Manager's "Scan" also does): lists
# only, no package changes. Wait for a held dpkg/apt lock rather than fail at once.
APT_REFRESH = "apt-get -q -o DPkg::Lock::Timeout=120 update"


class HostPlan(BaseModel):
    """What maintenance would do on one host."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    role: Literal["staging", "production"]
    address: str
    reachable: bool = Field(description="Facts were collected over SSH with a verified key.")
    error: str | None = Field(default=None, description="Why the host could not be planned.")
    os: str | None = None
    kernel: str | None = None
    changes: list[PackageChange] = Field(default_factory=list)
    skipped_held: list[str] = Field(
        default_factory=list, description="Upgradable packages held by the inventory or apt-mark."
    )
    skipped_policy: list[str] = Field(
        default_factory=list, description="Upgradable packages left out by a security-only policy."
    )
    removals: list[str] = Field(default_factory=list)
    reboot_expected: bool = False
    reboot_reason: str = ""


class MaintenancePlan(BaseModel):
    """The plan of one maintenance run for one client: the dry run's result."""

    model_config = ConfigDict(frozen=True)

    client: str
    change_ref: str
    dry_run: bool
    policy: Literal["all", "security"]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    hosts: list[HostPlan]
    hygiene: list[str] = Field(
        default_factory=list, description="Hygiene steps planned (tasks.hygiene.steps)."
    )
    warnings: list[str] = Field(
        default_factory=list, description="Providers' scheduled events in the window."
    )
    order: list[str] = Field(
        default_factory=list, description="Production servers in rollout order."
    )

    @property
    def unreachable(self) -> list[HostPlan]:
        """Hosts that could not be planned."""
        return [h for h in self.hosts if not h.reachable]

    @property
    def change_count(self) -> int:
        """Number of package changes over all hosts."""
        return sum(len(h.changes) for h in self.hosts)


def plan_host(
    *,
    server: str,
    role: Literal["staging", "production"],
    address: str,
    facts: HostFacts,
    policy: Literal["all", "security"],
    hold: list[str],
    reboot_policy: Literal["if-required", "always", "never"],
) -> HostPlan:
    """Turn one host's facts into its plan (pure).

    Args:
        server: server name.
        role: staging or production.
        address: the address planned against.
        facts: facts collected on the host, including apt's simulation of the upgrade.
        policy: ``all`` updates or ``security`` only.
        hold: packages the inventory holds (never upgraded).
        reboot_policy: the client's reboot policy.

    Returns:
        The host's plan: the changes apt would make, minus held and out-of-policy ones.
    """
    simulation = facts.apt_simulation
    if simulation is None:
        reason = facts.errors.get("apt_simulation", "apt's simulation is missing")
        return HostPlan(
            server=server,
            role=role,
            address=address,
            reachable=True,
            error=f"cannot plan packages: {reason}",
            os=facts.os.pretty_name if facts.os else None,
            kernel=facts.kernel,
        )
    held = set(hold) | set(facts.held_packages or [])
    changes: list[PackageChange] = []
    skipped_held: list[str] = []
    skipped_policy: list[str] = []
    for change in simulation.installs:
        if change.name in held:
            skipped_held.append(change.name)
        elif policy == "security" and not change.security:
            skipped_policy.append(change.name)
        else:
            changes.append(change)
    # apt itself already keeps back packages held with apt-mark; name them too.
    for name in simulation.kept_back:
        if name in held and name not in skipped_held:
            skipped_held.append(name)
    pending = facts.reboot_required
    reason = ""
    if reboot_policy == "never":
        expected = False
        reason = "reboot policy: never"
    elif reboot_policy == "always" and changes:
        expected, reason = True, "reboot policy: always"
    elif pending is not None and pending.required:
        expected = True
        reason = "reboot already pending" + (
            f" ({', '.join(pending.packages)})" if pending.packages else ""
        )
    else:
        needing = [c.name for c in changes if REBOOT_PACKAGES.match(c.name)]
        expected = bool(needing)
        reason = f"upgrades {', '.join(needing)}" if needing else ""
    return HostPlan(
        server=server,
        role=role,
        address=address,
        reachable=True,
        os=facts.os.pretty_name if facts.os else None,
        kernel=facts.kernel,
        changes=sorted(changes, key=lambda c: c.name),
        skipped_held=sorted(skipped_held),
        skipped_policy=sorted(skipped_policy),
        removals=sorted(simulation.removals),
        reboot_expected=expected,
        reboot_reason=reason,
    )


def unreachable_host(
    *, server: str, role: Literal["staging", "production"], address: str, error: str
) -> HostPlan:
    """The plan entry of a host that could not be reached (pure)."""
    return HostPlan(server=server, role=role, address=address, reachable=False, error=error)


# --------------------------------------------------------------------- applying a plan

#: What went wrong when apt failed (see ``classify_apt_failure``).
AptFailure = Literal["lock", "postinst", "network", "unknown"]

# Every package dpkg knows, one per line: name, version and dpkg's status abbreviation
# (desired action, current state, error flag; "ii " is installed and configured).
# dpkg-query expands the \t and \n escapes itself; nothing here comes from the inventory.
DPKG_INSTALLED = "dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'"

# dpkg states whose files are on disk ("n" not-installed and "c" config-files are not).
_PRESENT_STATES = frozenset("iUFHWt")


class InstalledPackage(BaseModel):
    """One package as dpkg's database has it (a line of ``DPKG_INSTALLED``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str = Field(description="The version on disk (empty for a purged package).")
    status: str = Field(description="dpkg's status abbreviation, e.g. 'ii ', 'iF ', 'rc '.")

    @property
    def installed(self) -> bool:
        """The package's files are on disk (configured or not)."""
        return len(self.status) >= 2 and self.status[1] in _PRESENT_STATES

    @property
    def configured(self) -> bool:
        """Installed, configured and without dpkg's reinstall-required flag."""
        return self.status[1:2] == "i" and self.status[2:3] in ("", " ")


def parse_dpkg_installed(text: str) -> dict[str, InstalledPackage]:
    """Parse ``DPKG_INSTALLED`` into packages by name (pure).

    A name listed twice (a ``Multi-Arch: same`` package installed for two
    architectures) keeps the less settled entry, so a half-done upgrade of one
    architecture is never taken for done.

    Args:
        text: dpkg-query's output.

    Returns:
        Every listed package by name, ``rc`` (config files only) entries included;
        use ``InstalledPackage.installed`` to tell them apart.

    Raises:
        FactParseError: a line is not ``name<TAB>version<TAB>status``.
    """
    packages: dict[str, InstalledPackage] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0] or len(parts[2]) != 3:
            raise FactParseError("dpkg_installed", line, "expected 'name<TAB>version<TAB>status'")
        entry = InstalledPackage(name=parts[0], version=parts[1], status=parts[2])
        seen = packages.get(entry.name)
        if seen is None or (seen.configured and not entry.configured):
            packages[entry.name] = entry
    return packages


class PackageVersionChange(BaseModel):
    """One package whose installed version changed on a host."""

    model_config = ConfigDict(frozen=True)

    name: str
    from_version: str | None = Field(description="None: the package was not installed before.")
    to_version: str | None = Field(description="None: the package was removed.")
    configured: bool = Field(
        default=True,
        description="False: the new version is unpacked but failed to configure (postinst).",
    )


def package_diff(
    before: Mapping[str, InstalledPackage], after: Mapping[str, InstalledPackage]
) -> list[PackageVersionChange]:
    """What changed between two readings of ``DPKG_INSTALLED`` (pure).

    Args:
        before: the packages before the change, by name.
        after: the packages after it, by name.

    Returns:
        One entry per package whose installed version differs, sorted by name:
        upgrades and downgrades, new packages (``from_version`` None) and removed
        ones (``to_version`` None). ``configured`` is False for a new version that
        is on disk but not configured.
    """
    changes: list[PackageVersionChange] = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        old_version = old.version if old is not None and old.installed else None
        new_version = new.version if new is not None and new.installed else None
        if old_version == new_version:
            continue
        changes.append(
            PackageVersionChange(
                name=name,
                from_version=old_version,
                to_version=new_version,
                configured=new is None or not new.installed or new.configured,
            )
        )
    return changes


def pending_changes(
    plan: HostPlan, installed: Mapping[str, InstalledPackage]
) -> list[PackageChange]:
    """The planned changes not yet in place on the host (pure).

    A planned package counts as in place only at its target version and configured:
    a version left unconfigured by a failed postinst is still pending, so a rerun
    tries again rather than reporting a no-op.

    Args:
        plan: the approved plan.
        installed: the host's packages (``parse_dpkg_installed``).

    Returns:
        The plan's changes that are not done, in plan order.
    """
    pending: list[PackageChange] = []
    for change in plan.changes:
        # apt names a foreign-architecture package "libc6:i386"; dpkg's ${Package} does not.
        entry = installed.get(change.name.split(":", 1)[0])
        done = (
            entry is not None
            and entry.installed
            and entry.configured
            and entry.version == change.to_version
        )
        if not done:
            pending.append(change)
    return pending


def apt_refresh_command(lock_timeout_s: int) -> str:
    """``apt-get update`` waiting up to ``lock_timeout_s`` for dpkg's lock (pure)."""
    return sh_join(["apt-get", "-q", "-o", f"DPkg::Lock::Timeout={lock_timeout_s}", "update"])


def apt_install_command(plan: HostPlan, lock_timeout_s: int) -> str:
    """The one apt command that applies ``plan`` and nothing else (pure).

    Each upgrade is pinned to its planned version (``name=version``) so what runs is
    what was approved even if a newer version was published since. Packages new in
    the plan are not named: they arrive as dependencies of the upgrades, which
    ``--only-upgrade`` still allows. Removals happen only when the plan lists them
    (``name-``); otherwise ``--no-remove`` makes apt stop rather than remove
    anything. Held and out-of-policy packages are not in the plan, so never named.
    Configuration files the admin changed are kept (``--force-confold``); new ones
    the admin did not touch are taken (``--force-confdef``).

    Args:
        plan: the approved plan of one host.
        lock_timeout_s: seconds apt waits for a held dpkg lock before failing.

    Returns:
        ``DEBIAN_FRONTEND=noninteractive apt-get ... install --only-upgrade ...``.
    """
    args = [
        "apt-get",
        "-q",
        "-y",
        "-o",
        f"DPkg::Lock::Timeout={lock_timeout_s}",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    if not plan.removals:
        args.append("--no-remove")
    args += ["install", "--only-upgrade", "--no-install-recommends"]
    args += [f"{c.name}={c.to_version}" for c in plan.changes if c.from_version is not None]
    args += [f"{name}-" for name in plan.removals]
    return "DEBIAN_FRONTEND=noninteractive " + sh_join(args)


_LOCK_MARKERS = (
    "Could not get lock",
    "Unable to acquire the dpkg frontend lock",
    "Unable to lock the administration directory",
    "Unable to lock directory",
)
# dpkg ran and a package's maintainer script (or dpkg itself) failed. dpkg prints its
# errors on the output apt hands it, so callers pass stdout too.
_POSTINST_MARKERS = (
    "installation script subprocess returned error",
    "removal script subprocess returned error",
    "dpkg: error processing",
    "Sub-process /usr/bin/dpkg returned an error code",
    "dpkg was interrupted",
)
_NETWORK_MARKERS = (
    "Failed to fetch",
    "Temporary failure resolving",
    "Could not resolve",
    "Could not connect to",
    "Cannot initiate the connection",
    "Unable to connect to",
    "Connection timed out",
    "Connection failed",
    "No route to host",
    "Network is unreachable",
    "Unable to fetch some archives",
    "Some index files failed to download",
)


def classify_apt_failure(stderr: str) -> AptFailure:
    """What kind of failure apt's error output shows (pure).

    Checked in this order, because an earlier kind explains the later symptoms: a
    held lock (apt gave up before changing anything), a dpkg or maintainer-script
    failure (packages were being changed), the repository out of reach, else unknown.

    Args:
        stderr: apt-get's standard error; append its standard output, where dpkg
            prints which package failed and how.

    Returns:
        ``lock``, ``postinst``, ``network`` or ``unknown``.
    """
    for kind, markers in (
        ("lock", _LOCK_MARKERS),
        ("postinst", _POSTINST_MARKERS),
        ("network", _NETWORK_MARKERS),
    ):
        if any(marker in stderr for marker in markers):
            return kind  # type: ignore[return-value]
    return "unknown"


_LOCK_PATH = re.compile(r"Could not get lock (/\S+?)\.?(?:\s|$)")
_DPKG_ERROR = re.compile(r"^dpkg: error processing (?:package|archive) (\S+)")


def failure_summary(kind: AptFailure, output: str, lock_timeout_s: int) -> str:
    """One sentence saying what went wrong, for the error and the change record (pure).

    Args:
        kind: ``classify_apt_failure``'s verdict.
        output: apt-get's stderr and stdout.
        lock_timeout_s: how long apt was told to wait for the lock.

    Returns:
        e.g. ``the dpkg lock (/var/lib/dpkg/lock-frontend) was held by another
        process for more than 120 s``.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if kind == "lock":
        match = _LOCK_PATH.search(output)
        path = match.group(1) if match else None
        what = "apt lists lock" if path and path.startswith("/var/lib/apt/lists") else "dpkg lock"
        where = f" ({path})" if path else ""
        return (
            f"the {what}{where} was held by another process for more than {lock_timeout_s} s;"
            " apt gave up waiting"
        )
    if kind == "postinst":
        failed: list[str] = []
        for i, line in enumerate(lines):
            match = _DPKG_ERROR.match(line)
            if match:
                reason = lines[i + 1] if i + 1 < len(lines) else ""
                failed.append(f"{match.group(1)} ({reason})" if reason else match.group(1))
        if failed:
            return "dpkg failed to install or configure: " + "; ".join(dict.fromkeys(failed))
        return "dpkg failed: " + next((ln for ln in lines if "dpkg" in ln), "see the output")
    if kind == "network":
        evidence = next((ln for ln in lines if any(m in ln for m in _NETWORK_MARKERS)), "")
        return "the package repository could not be reached: " + evidence
    errors = [ln for ln in lines if ln.startswith("E:")]
    return "apt-get failed: " + (errors[-1] if errors else lines[-1] if lines else "no output")


class PackageDiff(BaseModel):
    """What applying a plan did on one host."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    changes: list[PackageVersionChange] = Field(
        default_factory=list, description="Every package whose installed version changed."
    )
    noop: bool = Field(
        description="True: every planned change was already in place, apt did not run."
    )
    reboot_required_after: bool = Field(
        description="/var/run/reboot-required exists after the run."
    )
    reboot_packages: list[str] = Field(
        default_factory=list, description="Packages that asked for the reboot (if listed)."
    )
    command: str | None = Field(default=None, description="The apt command that ran, if any.")
    duration_s: float = Field(ge=0, description="Wall time of the whole task.")

    @property
    def unconfigured(self) -> list[str]:
        """Packages whose new version is on disk but failed to configure."""
        return [c.name for c in self.changes if not c.configured]


def _changes_before_failure(changes: list[PackageVersionChange]) -> str:
    """``name from -> to`` for each change, for messages (pure)."""
    if not changes:
        return "no package was changed"
    return "changed before it stopped: " + ", ".join(
        f"{c.name} {c.from_version} -> {c.to_version}"
        + ("" if c.configured else " (not configured)")
        for c in changes
    )


def _read_installed(host: RemoteHost) -> dict[str, InstalledPackage]:
    # Reading dpkg's database needs no root; LC_ALL=C keeps the output stable.
    result = host.run("LC_ALL=C " + DPKG_INSTALLED, timeout=120, check=True)
    return parse_dpkg_installed(result.stdout)


def _read_reboot(host: RemoteHost) -> RebootRequired:
    return parse_reboot_required(host.run(REBOOT_REQUIRED, timeout=60, check=True).stdout)


def _output(result: CommandResult) -> str:
    return result.stderr + "\n" + result.stdout


def _refresh(host: RemoteHost, lock_timeout_s: int, timeout_s: float) -> CommandResult:
    """``apt-get update`` that waits up to ``lock_timeout_s`` for a held lock.

    apt (2.6) honours ``DPkg::Lock::Timeout`` for dpkg's lock only; the lists lock
    ``update`` takes fails at once. Refreshing the lists changes no package, so it is
    safe to try again until the same bound has passed.
    """
    deadline = time.monotonic() + lock_timeout_s
    command = apt_refresh_command(lock_timeout_s)
    while True:
        result = host.run(command, sudo=True, timeout=timeout_s)
        if result.ok or classify_apt_failure(_output(result)) != "lock":
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result
        time.sleep(min(2.0, remaining))


def _check_plan(host: RemoteHost, plan: HostPlan, lock_timeout_s: int, timeout_s: int) -> None:
    if plan.server != host.name:
        raise ConfigError(f"the plan of {plan.server!r} was handed to host {host.name!r}")
    if not plan.reachable or plan.error:
        raise ConfigError(
            f"{plan.server}: the host has no package plan ({plan.error or 'unreachable'});"
            " refusing to patch a host that was not planned"
        )
    if lock_timeout_s < 0 or timeout_s <= lock_timeout_s:
        raise ConfigError(
            f"{plan.server}: timeout_s ({timeout_s}) must exceed lock_timeout_s"
            f" ({lock_timeout_s}) so apt can wait for the lock and still finish"
        )


@task(name="apply-updates", cache_policy=NO_CACHE, task_run_name="apply-updates-{plan.server}")
def apply_updates(
    host: RemoteHost, plan: HostPlan, lock_timeout_s: int = 120, timeout_s: int = 1800
) -> PackageDiff:
    """Apply exactly the approved plan of one host with apt, and return what changed.

    State-changing, so never retried: it checks first instead. When every planned
    change is already in place (a rerun), apt does not run and the diff says
    ``noop``. Otherwise it refreshes the package lists, runs the pinned install
    (``apt_install_command``) as root, reads the installed versions again and
    returns the diff. Every root command waits up to ``lock_timeout_s`` for a held
    dpkg lock, then fails.

    Args:
        host: the host the plan is for (its ``name`` must equal ``plan.server``).
        plan: the approved plan (held and out-of-policy packages are not in it).
        lock_timeout_s: seconds apt waits for a held dpkg/apt lock.
        timeout_s: bound of each apt command; must exceed ``lock_timeout_s``.

    Returns:
        The diff: every package whose version changed, whether the host asks for a
        reboot now, the command that ran and how long it all took.

    Raises:
        PatchFailed: apt failed (``kind`` lock, postinst, network or unknown), or it
            succeeded but a planned change is not in place; ``diff`` holds what did
            change (None if the host could not be read afterwards).
        ConfigError: the plan is not for this host, has no package plan, or the
            timeouts are inconsistent.
        RemoteError: the host could not be reached or a command timed out; after
            the install started, packages may have partly changed.
    """
    started = time.monotonic()
    _check_plan(host, plan, lock_timeout_s, timeout_s)
    before = _read_installed(host)
    if not pending_changes(plan, before):
        reboot = _read_reboot(host)
        log.info("%s: every planned change is in place; nothing to do", plan.server)
        return PackageDiff(
            server=plan.server,
            noop=True,
            reboot_required_after=reboot.required,
            reboot_packages=reboot.packages,
            duration_s=time.monotonic() - started,
        )

    def read_after(command: str | None) -> tuple[PackageDiff, dict[str, InstalledPackage]]:
        after = _read_installed(host)
        reboot = _read_reboot(host)
        diff = PackageDiff(
            server=plan.server,
            changes=package_diff(before, after),
            noop=False,
            reboot_required_after=reboot.required,
            reboot_packages=reboot.packages,
            command=command,
            duration_s=time.monotonic() - started,
        )
        return diff, after

    def diff_now(command: str | None) -> PackageDiff | None:
        """The diff as the host is now; None (logged) if it cannot be read after a failure."""
        try:
            return read_after(command)[0]
        except (RemoteError, FactParseError) as exc:
            log.warning("%s: could not read the packages after a failure: %s", plan.server, exc)
            return None

    def failed(result: CommandResult, command: str | None, hint: str = "") -> PatchFailed:
        output = _output(result)
        kind = classify_apt_failure(output)
        diff = diff_now(command)
        summary = failure_summary(kind, output, lock_timeout_s) + hint
        if diff is not None:
            summary += "; " + _changes_before_failure(diff.changes)
        return PatchFailed(
            result.host,
            result.command,
            result.exit_code,
            result.stdout,
            result.stderr,
            kind=kind,
            summary=summary,
            diff=diff,
        )

    refresh = _refresh(host, lock_timeout_s, timeout_s)
    if not refresh.ok:
        raise failed(refresh, None)
    # A failed download during `update` is only a warning (exit 0, stale lists). The
    # pinned versions are in the lists read at planning time, so carry on, but say so
    # if the install then fails.
    hint = ""
    if classify_apt_failure(_output(refresh)) == "network":
        hint = " (apt-get update could not reach the repository before this)"
        log.warning("%s: %s", plan.server, failure_summary("network", _output(refresh), 0))

    command = apt_install_command(plan, lock_timeout_s)
    try:
        result = host.run(command, sudo=True, timeout=timeout_s)
    except RemoteError as exc:
        exc.add_note(f"{plan.server}: packages may have partly changed; read them before retrying")
        raise
    if not result.ok:
        raise failed(result, command, hint)

    diff, after = read_after(command)
    # apt exited 0 but did not do all that was approved (kept a package back, say):
    # the plan was not applied, and saying so beats a silent partial success.
    missing = pending_changes(plan, after)
    if missing:
        raise PatchFailed(
            result.host,
            result.command,
            result.exit_code,
            result.stdout,
            result.stderr,
            kind="unknown",
            summary="apt-get exited 0 but planned changes are not in place: "
            + ", ".join(f"{c.name} {c.to_version}" for c in missing),
            diff=diff,
        )
    log.info("%s: %d package(s) changed", plan.server, len(diff.changes))
    return diff
