"""Records of what caretaker planned and did, shown as Prefect artifacts.

Rendering is pure (plan in, rows or markdown out); publishing is a thin task.
"""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.packages import MaintenancePlan


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


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
