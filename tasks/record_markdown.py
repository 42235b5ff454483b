"""Markdown for people: the change record and the maintenance plan as Prefect shows them.

Pure: the same record (or plan) gives the same text; credentials in free text are masked
(:func:`core.redact.redact`). Publishing the text as an artifact is
:mod:`tasks.records`' job; the record's model is :mod:`history.change`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from core.redact import redact
from history.change import OUTCOME_MEANING, ChangeRecord, Finding, HostResult
from tasks.packages import MaintenancePlan

__all__ = ["format_time", "plan_markdown", "plan_rows", "render_markdown", "results_line"]


def format_time(value: datetime | None, tz: tzinfo = UTC) -> str:
    """``2026-01-01 02:00 UTC`` (or ``... GMT`` etc. in ``tz``); ``-`` for None."""
    if value is None:
        return "-"
    local = value.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def results_line(results: Mapping[str, HostResult]) -> str:
    """``patched: a, b; restored: c; untouched: d, e`` (pure; empty without production)."""
    parts = []
    for result in HostResult:
        names = [n for n, r in results.items() if r is result]
        if names:
            parts.append(f"{result.value}: {', '.join(names)}")
    return "; ".join(parts)


def _duration(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = round(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _cell(value: object) -> str:
    """Text fit for one markdown table cell."""
    text = redact("" if value is None else str(value))
    return " ".join(text.split()).replace("|", "\\|") or " "


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _text_block(text: str, empty: str) -> list[str]:
    return [redact(text).strip() or f"_{empty}_"]


def _bullets(title: str, items: Sequence[str]) -> list[str]:
    return [f"**{title}:**", "", *(f"- {redact(x)}" for x in items), ""] if items else []


def _findings(title: str, findings: Sequence[Finding]) -> list[str]:
    lines = [f"### {title}", ""]
    if not findings:
        return [*lines, "_None._", ""]
    order = {"critical": 0, "warning": 1, "info": 2}
    rows = sorted(findings, key=lambda f: (order[f.severity], f.server or ""))
    return [
        *lines,
        *_table(
            ["severity", "server", "finding", "detail"],
            [(f.severity, f.server or "(all)", f.summary, f.detail or "-") for f in rows],
        ),
        "",
    ]


def render_markdown(record: ChangeRecord, tz: tzinfo | str = UTC) -> str:
    """The change record as a markdown document (ITIL-style sections), for the Prefect UI.

    Pure: the same record gives the same text. Credentials in free text are masked.

    Args:
        record: the change record.
        tz: time zone to show times in (an IANA name or a tzinfo); default UTC.

    Returns:
        Markdown text ending in a newline.
    """
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz

    def when(value: datetime | None) -> str:
        return format_time(value, zone)

    outcome = record.outcome.value if record.outcome else "in progress"
    counted = record.counted_approvals
    changed_hosts = sorted({c.server for c in record.package_changes})
    lines = [f"# Change {_cell(record.change_ref)} — {_cell(record.client)}: {outcome}", ""]

    lines += ["## Summary", ""]
    lines += _table(
        ["", ""],
        [
            ("Client", record.client),
            ("Change ref", record.change_ref),
            ("Flow run", record.flow_run_id),
            ("Requester", record.requester),
            ("Started", when(record.started)),
            ("Ended", when(record.ended)),
            ("Duration", _duration(record.duration)),
            ("Outcome", outcome),
            (
                "Changes",
                f"{len(record.package_changes)} package change(s) on {len(changed_hosts)} host(s),"
                f" {len(record.reboots)} reboot(s), {len(record.rollbacks)} rollback(s)",
            ),
            ("Approvals", f"{len(counted)} of {record.approvals_required} required"),
            ("Production", results_line(record.production_results) or "-"),
        ],
    )
    lines.append("")

    window = record.window
    lines += ["## Window", ""]
    lines.append(f"{when(window.start)} to {when(window.end)}.")
    if window.inside:
        lines.append("The run started inside the window.")
    elif window.override:
        lines.append(f"The run started **outside** the window. Override: {_cell(window.override)}")
    else:
        lines.append("The run started **outside** the window, and no override was recorded.")
    lines.append("")

    lines += ["## Plan", ""]
    plan = record.plan
    if plan is None:
        lines += ["_No plan was made._", ""]
    else:
        lines += _table(
            ["", ""],
            [
                ("Scope", plan.scope),
                ("Patch policy", plan.policy),
                ("Staging", ", ".join(plan.staging) or "none"),
                ("Production", ", ".join(plan.production) or "none"),
                ("Package changes planned", plan.package_changes),
                ("Reboots expected", ", ".join(plan.reboots_expected) or "none"),
                ("Not planned", "; ".join(plan.not_planned) or "none"),
                ("Rollout order", ", ".join(plan.order) or "-"),
            ],
        )
        lines.append("")
        lines += _bullets("Hygiene planned", plan.hygiene)
        lines += _bullets("Warnings the approvers saw", plan.warnings)
        if plan.summary:
            lines += [*_text_block(plan.summary, ""), ""]

    lines += ["## Backout plan", "", *_text_block(record.backout_plan, "None recorded."), ""]
    lines += ["## Test plan", "", *_text_block(record.test_plan, "None recorded."), ""]

    lines += ["## Snapshots", ""]
    if record.snapshots:
        lines += _table(
            ["server", "provider", "state", "ids", "encrypted", "accepted risk / detail"],
            [
                (
                    s.server,
                    s.provider,
                    s.state,
                    ", ".join(s.ids) or "-",
                    "-" if s.state == "skipped" else _yes_no(s.encrypted),
                    "; ".join(x for x in (s.accepted_risk, s.detail) if x) or "-",
                )
                for s in record.snapshots
            ],
        )
    else:
        lines.append("_No snapshots were taken._")
    lines.append("")

    lines += ["## Changes per host", ""]
    hosts = sorted(set(changed_hosts) | {r.server for r in record.reboots})
    if not hosts:
        lines += ["_No package was changed and no host was rebooted._", ""]
    for host in hosts:
        changes = [c for c in record.package_changes if c.server == host]
        lines += [f"### {_cell(host)}", ""]
        if changes:
            lines += _table(
                ["package", "from", "to", "security"],
                [
                    (
                        c.name,
                        c.from_version or "(new)",
                        c.to_version or "(removed)",
                        "yes" if c.security else "no",
                    )
                    for c in changes
                ],
            )
            lines.append("")
        for reboot in (r for r in record.reboots if r.server == host):
            took = f" in {reboot.seconds:.0f} s" if reboot.seconds is not None else ""
            if reboot.came_back:
                lines.append(
                    f"Rebooted{took}: boot id {_cell(reboot.old_boot_id)}"
                    f" → {_cell(reboot.new_boot_id)}."
                )
            else:
                lines.append(
                    f"Rebooted, but **did not come back** with a new boot id"
                    f" (was {_cell(reboot.old_boot_id)})."
                )
            lines.append("")

    lines += ["## Verification", ""]
    if record.verifications:
        lines += _table(
            ["server", "phase", "result", "checks", "expectations", "failures", "warnings"],
            [
                (
                    v.server,
                    v.phase,
                    "passed" if v.passed else "**FAILED**",
                    ", ".join(v.checks) or "-",
                    ", ".join(v.expectations) or "-",
                    "; ".join(v.failures) or "-",
                    "; ".join(v.warnings) or "-",
                )
                for v in record.verifications
            ],
        )
    else:
        lines.append("_Nothing was verified._")
    lines.append("")

    lines += ["## Approvals", ""]
    lines.append(f"Counted approvals: **{len(counted)} of {record.approvals_required}** required.")
    lines.append("")
    if record.approvals:
        lines += _table(
            ["approver", "decision", "at", "ticket", "counted", "proof", "comment"],
            [
                (
                    a.approver,
                    a.decision,
                    when(a.at),
                    a.ticket or "-",
                    "yes" if a.counted else f"no: {a.not_counted_reason}",
                    a.proof or "-",
                    a.comment or "-",
                )
                for a in record.approvals
            ],
        )
        lines.append("")

    lines += ["## Gates", ""]
    if record.gates:
        lines += _table(
            ["gate", "batch", "decision", "at", "by", "detail"],
            [
                (g.gate, g.batch or "-", g.decision, when(g.at), g.by or "-", g.detail or "-")
                for g in record.gates
            ],
        )
    else:
        lines.append("_No gate was reached._")
    lines.append("")

    lines += ["## Rollbacks", ""]
    if record.rollbacks:
        lines += _table(
            ["server", "snapshots", "restored", "verified", "detail"],
            [
                (
                    r.server,
                    ", ".join(r.snapshot_ids) or "-",
                    _yes_no(r.restored_ok),
                    _yes_no(r.verified_ok),
                    r.detail or "-",
                )
                for r in record.rollbacks
            ],
        )
    else:
        lines.append("_None._")
    lines.append("")

    lines += ["## Restore test", ""]
    test = record.restore_test
    if test is None:
        lines.append("_Not run._")
    else:
        rto = f"{test.rto_s:.0f} s" if test.rto_s is not None else "-"
        bound = f" (bound {test.rto_bound_s:.0f} s)" if test.rto_bound_s is not None else ""
        lines += _table(
            ["server", "snapshot", "result", "RTO", "detail"],
            [
                (
                    test.server,
                    test.snapshot_id or "-",
                    "passed" if test.ok else "**FAILED**",
                    rto + bound,
                    test.detail or "-",
                )
            ],
        )
    lines.append("")

    lines += ["## Findings", ""]
    lines += _findings("Hygiene", record.hygiene_findings)
    lines += _findings("Security", record.security_findings)

    lines += ["## Outcome and post-implementation review", ""]
    meaning = OUTCOME_MEANING[record.outcome] if record.outcome else "The run has not finished."
    lines.append(f"**{outcome}**: {meaning}")
    if record.outcome_detail:
        lines += ["", *_text_block(record.outcome_detail, "")]
    if record.notification_failures:
        lines += ["", "Notices that could not be sent:", ""]
        lines += [f"- {_cell(f)}" for f in record.notification_failures]
    lines += ["", "### Review", "", *_text_block(record.review, "No review written yet.")]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the plan


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
    if plan.order:
        lines += ["## Rollout order (least critical first)", "", ", ".join(plan.order), ""]
    if plan.hygiene:
        lines += ["## Hygiene", "", *(f"- {x}" for x in plan.hygiene), ""]
    if plan.warnings:
        lines += ["## Warnings", "", *(f"- **{x}**" for x in plan.warnings), ""]
    return "\n".join(lines).rstrip() + "\n"
