"""Records of what caretaker planned and did, shown as Prefect artifacts.

Rendering is pure (plan in, rows or markdown out); publishing is a thin task.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_UI_URL

from core.artifacts import artifact_key
from history.change import ChangeRecord, ChangeWindow, render_markdown
from history.change import SnapshotRecord as RecordedSnapshot
from inventory import ClientInventory, Server
from tasks.packages import MaintenancePlan
from tasks.snapshots.base import SnapshotRecord


def plan_rows(plan: MaintenancePlan) -> list[dict[str, str]]:
    """One row per package change, plus one per host without changes (pure)."""
    rows: list[dict[str, str]] = []
    for host in plan.hosts:
        base = {"server": host.server, "role": host.role}
        if not host.reachable or host.error:
            rows.append(
                {
                    **base,
                    "package": "",
                    "from": "",
                    "to": "",
                    "security": "",
                    "reboot": "",
                    "status": f"NOT PLANNED: {host.error}",
                }
            )
            continue
        reboot = "yes" if host.reboot_expected else "no"
        if not host.changes:
            rows.append(
                {
                    **base,
                    "package": "",
                    "from": "",
                    "to": "",
                    "security": "",
                    "reboot": reboot,
                    "status": "up to date",
                }
            )
        for change in host.changes:
            rows.append(
                {
                    **base,
                    "package": change.name,
                    "from": change.from_version or "(new)",
                    "to": change.to_version,
                    "security": "yes" if change.security else "no",
                    "reboot": reboot,
                    "status": "would upgrade" if plan.dry_run else "planned",
                }
            )
    return rows


def plan_markdown(plan: MaintenancePlan) -> str:
    """The plan as markdown for the Prefect UI (pure)."""
    mode = "Dry run: nothing was changed" if plan.dry_run else "Plan"
    lines = [
        f"# {mode} — {plan.client}, change {plan.change_ref}",
        "",
        f"Patch policy: **{plan.policy}**. Hosts: {len(plan.hosts)}, "
        f"package changes: **{plan.change_count}**, "
        f"unreachable: **{len(plan.unreachable)}**.",
        "",
    ]
    if plan.unreachable:
        lines += ["## Not planned", ""]
        lines += [f"- **{h.server}** ({h.address}): {h.error}" for h in plan.unreachable]
        lines.append("")
    for role in ("staging", "production"):
        hosts = [h for h in plan.hosts if h.role == role and h.reachable]
        if not hosts:
            continue
        lines += [f"## {role.capitalize()}", ""]
        for host in hosts:
            reboot = (
                f"reboot expected ({host.reboot_reason})" if host.reboot_expected else "no reboot"
            )
            lines.append(f"### {host.server} — {len(host.changes)} change(s), {reboot}")
            if host.os:
                lines.append(f"{host.os}, kernel {host.kernel}")
            if host.error:
                lines.append(f"**{host.error}**")
            lines.append("")
            if host.changes:
                lines += ["| package | from | to | security |", "|---|---|---|---|"]
                lines += [
                    f"| {c.name} | {c.from_version or '(new)'} | {c.to_version} | "
                    f"{'yes' if c.security else 'no'} |"
                    for c in host.changes
                ]
                lines.append("")
            if host.removals:
                lines.append(f"Would remove: {', '.join(host.removals)}")
            if host.skipped_held:
                lines.append(f"Held, not upgraded: {', '.join(host.skipped_held)}")
            if host.skipped_policy:
                lines.append(
                    f"Not security updates, left for a full run: {', '.join(host.skipped_policy)}"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


@task(name="publish-plan", cache_policy=NO_CACHE)
def publish_plan(plan: MaintenancePlan) -> None:
    """Show the plan in the Prefect UI as a table artifact and a markdown artifact.

    Args:
        plan: the plan to publish.
    """
    key = artifact_key("plan", plan.client)
    create_table_artifact(
        key=key,
        table=plan_rows(plan),
        description=f"Package plan for {plan.client}, change {plan.change_ref}",
    )
    create_markdown_artifact(
        key=key + "-summary",
        markdown=plan_markdown(plan),
        description=f"Maintenance plan for {plan.client}, change {plan.change_ref}",
    )


def run_url(flow_run_id: str) -> str:
    """The Prefect UI page of a flow run (the API URL's UI when no UI URL is set)."""
    base = PREFECT_UI_URL.value() or ""
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else f"flow run {flow_run_id}"


def change_window(inventory: ClientInventory, now: datetime, override: str | None) -> ChangeWindow:
    """The window this run belongs to: the one it is in, else the next one (pure).

    Args:
        inventory: the client.
        now: when the run started (aware).
        override: the reason given for running outside the window, if any.
    """
    inside = inventory.in_window(now)
    if inside:
        slots = inventory.windows_between(now - timedelta(days=2), now + timedelta(seconds=1))
        start, end = next((a, b) for a, b in slots if a <= now < b)
    else:
        start = inventory.next_window_start(now)
        end = start + inventory.schedule.window.duration
    return ChangeWindow(start=start, end=end, inside=inside, override=None if inside else override)


def backout_plan(inventory: ClientInventory, servers: Sequence[Server]) -> str:
    """How this change is undone, per server (pure)."""
    on_failure = inventory.rollout.on_failure
    after = (
        "restored from its snapshot automatically"
        if on_failure == "restore"
        else f"left for an operator (on_failure: {on_failure})"
    )
    lines = [
        "Every server is snapshotted before any change; a production server that fails "
        f"verification is {after} and verified again. By hand: see docs/rollback.md.",
        "",
    ]
    for server in servers:
        provider = server.provider
        if provider.type == "none":
            how = (
                f"no snapshot (accepted risk: {provider.reason}); "
                "downgrade with apt-get install <package>=<from version>"
            )
        elif provider.type == "aws":
            how = f"restore the EBS snapshot set tagged caretaker:change-ref in {provider.region}"
        elif provider.type == "rackspace":
            how = (
                f"rebuild server {provider.server_id} from its caretaker image ({provider.region})"
            )
        else:
            how = "restore the sandbox disk snapshot (python -m sandbox)"
        lines.append(f"- {server.name}: {how}")
    return "\n".join(lines)


def test_plan(inventory: ClientInventory, servers: Sequence[Server]) -> str:
    """How the change is verified (pure)."""
    staging = [s.name for s in servers if s.role == "staging"]
    lines = [
        f"1. Staging ({', '.join(staging) or 'none'}) is patched first and verified: health "
        "checks (tcp, http, ssh, systemd) and the expectation suite over its facts (no failed "
        "units, disk under the threshold, no pending reboot or security update, only allowed "
        "ports listening). A failure stops the run before approval.",
        f"2. Production is patched in batches of {inventory.rollout.batch_size}, each batch "
        "verified the same way before the next starts.",
    ]
    if inventory.restore_test.enabled:
        lines.append(
            "3. One fresh snapshot is restored to an isolated copy and checked (restore test, "
            f"bound {inventory.restore_test.timeout})."
        )
    return "\n".join(lines)


def recorded_snapshot(
    server: Server, snapshot: SnapshotRecord | None, error: str | None
) -> RecordedSnapshot:
    """The change record's entry for one server's snapshot (pure)."""
    provider = server.provider.type
    if snapshot is None:
        return RecordedSnapshot(
            server=server.name, provider=provider, state="failed", detail=error or "no snapshot"
        )
    if snapshot.state == "accepted-risk":
        return RecordedSnapshot(
            server=server.name,
            provider=provider,
            state="skipped",
            accepted_risk=snapshot.detail or "provider none",
        )
    state = {"completed": "completed", "pending": "pending"}.get(snapshot.state, "failed")
    copies = ", ".join(f"{a} -> {b}" for a, b in snapshot.encrypted_copies.items())
    detail = "; ".join(
        x
        for x in (
            snapshot.detail,
            "reused from an earlier run" if snapshot.reused else "",
            f"encrypted copies: {copies}" if copies else "",
        )
        if x
    )
    return RecordedSnapshot(
        server=server.name,
        provider=provider,
        ids=tuple(snapshot.ids),
        encrypted=snapshot.encrypted,
        state=state,
        detail=detail,
    )


@task(name="describe-requester", cache_policy=NO_CACHE)
def requester(flow_run_id: str) -> str:
    """Who asked for this run: the user or automation that created it, or its deployment."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    if run.created_by and run.created_by.display_value:
        return f"{(run.created_by.type or 'user').lower()}: {run.created_by.display_value}"
    if run.deployment_id:
        return f"deployment {run.deployment_id} (schedule or API)"
    return "direct call (API or Python)"


@task(name="publish-change-record", cache_policy=NO_CACHE)
def publish_change_record(record: ChangeRecord) -> None:
    """Show the change record in the Prefect UI as a markdown artifact."""
    create_markdown_artifact(
        key=artifact_key("change", record.client, record.change_ref),
        markdown=render_markdown(record),
        description=f"Change record {record.change_ref} for {record.client}",
    )


class RolloutProgress:
    """A Prefect progress artifact showing how far the production rollout is."""

    def __init__(self, client: str, change_ref: str, servers: int) -> None:
        self.servers = max(servers, 1)
        self.done = 0
        # The sync call returns the id (the stub also admits the async form).
        self.id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0,
            key=artifact_key("rollout", client),
            description=f"Production rollout of {change_ref}: 0/{servers} servers",
        )

    def advance(self, count: int, note: str) -> None:
        """Mark ``count`` more servers as done (patched, restored or failed)."""
        self.done += count
        update_progress_artifact(  # type: ignore[call-overload,unused-ignore]
            self.id,
            progress=round(100.0 * self.done / self.servers, 1),
            description=f"{self.done}/{self.servers} servers: {note}",
        )
