"""Notices to stakeholders, sent through Prefect notification blocks.

The inventory names the blocks in ``client.notify``. Any Prefect notification block works
(Slack, Teams, email through Apprise, or a ``CustomWebhookNotificationBlock``); caretaker
only calls ``block.notify(body, subject)``.

* Pure builders make each notice's ``(subject, body)``: :func:`notice_before_change`,
  :func:`notice_approval_requested` and :func:`notice_end`. Bodies are plain text, hold no
  secrets (free text is passed through :func:`core.redact.redact`), and name the
  change, the window, the servers and where to look.
* :func:`notify` is the thin task that loads each block and sends. A notice that cannot
  be sent is logged and returned as a problem line, never raised: a broken chat webhook
  must not stop (or fail) a maintenance half-way through. The flow records the problems
  in the change record (``notification_failures``).
* :func:`save_demo_webhook` registers the webhook block the example inventory names.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

from core.errors import ConfigError
from core.redact import redact
from history.change import (
    OUTCOME_MEANING,
    ChangeRecord,
    ChangeWindow,
    PlanSummary,
    Verification,
)
from tasks.record_markdown import format_time, results_line

__all__ = [
    "DEMO_WEBHOOK_BLOCK",
    "Notice",
    "load_notification_block",
    "notice_approval_requested",
    "notice_audit",
    "notice_before_change",
    "notice_end",
    "notice_report",
    "notify",
    "save_demo_webhook",
]

#: A notice: (subject, body).
Notice = tuple[str, str]

#: The notification block the example inventory (clients/*.yaml) names.
DEMO_WEBHOOK_BLOCK = "caretaker-demo-webhook"

_PREFIX = "[caretaker]"


def _zone(tz: tzinfo | str) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _window_lines(window: ChangeWindow, zone: tzinfo) -> list[str]:
    lines = [f"Window: {format_time(window.start, zone)} to {format_time(window.end, zone)}"]
    if zone is not UTC and window.start.astimezone(zone).utcoffset():
        lines.append(f"        ({format_time(window.start)} to {format_time(window.end)})")
    return lines


def _servers(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _finish(subject: str, lines: Sequence[str]) -> Notice:
    # Subjects become e-mail subjects and chat titles: one line, bounded.
    one_line = " ".join(redact(subject).split())
    return one_line[:200], redact("\n".join(lines).rstrip() + "\n")


def notice_before_change(
    client_name: str,
    change_ref: str,
    window: ChangeWindow,
    plan: PlanSummary,
    *,
    tz: tzinfo | str = UTC,
    run_url: str | None = None,
) -> Notice:
    """The notice sent when a maintenance run starts, before anything is changed.

    Args:
        client_name: the client's display name.
        change_ref: the change reference.
        window: the maintenance window.
        plan: what will change.
        tz: the client's time zone (times are shown in it, and in UTC beside).
        run_url: link to the flow run in the Prefect UI.

    Returns:
        (subject, body).
    """
    zone = _zone(tz)
    subject = (
        f"{_PREFIX} {client_name}: maintenance {change_ref} starts"
        f" {format_time(window.start, zone)}"
    )
    lines = [
        f"Scheduled maintenance for {client_name} is starting.",
        "",
        f"Change: {change_ref}",
        *_window_lines(window, zone),
        f"Staging servers: {_servers(plan.staging)}",
        f"Production servers: {_servers(plan.production)}",
        f"Planned package changes: {plan.package_changes}"
        f" ({'security updates only' if plan.policy == 'security' else 'all updates'})",
        f"Reboots expected: {_servers(plan.reboots_expected)}",
    ]
    if plan.not_planned:
        lines.append(f"Left out: {'; '.join(plan.not_planned)}")
    if not window.inside:
        lines.append(f"Outside the maintenance window: {window.override or 'no override recorded'}")
    lines += [
        "",
        "Every server is snapshotted before it is changed. Staging is patched and verified"
        " first; production is changed only after approval, in batches, and each batch is"
        " verified.",
    ]
    if run_url:
        lines += ["", f"Follow the run: {run_url}"]
    return _finish(subject, lines)


def notice_approval_requested(
    client_name: str,
    change_ref: str,
    plan: PlanSummary,
    staging: Sequence[Verification],
    approvers: Sequence[str],
    ui_url: str,
    *,
    approvals_required: int = 1,
    deadline: datetime | None = None,
    tz: tzinfo | str = UTC,
    plan_digest: str | None = None,
    flow_run_id: str | None = None,
    keyless: Sequence[str] = (),
) -> Notice:
    """The notice asking the client's approvers to approve the production change.

    Args:
        client_name: the client's display name.
        change_ref: the change reference.
        plan: the planned change (production part is what approval unlocks).
        staging: the staging verification results.
        approvers: names of the people whose answer counts.
        ui_url: where to answer (the paused flow run in the Prefect UI).
        approvals_required: how many distinct approvals are needed.
        deadline: when the wait ends without approval (production is then left alone).
        tz: the client's time zone.
        plan_digest: the digest of the production plan an answer must be signed for.
        flow_run_id: the paused run (for the signing command).
        keyless: listed approvers without an ssh_key, whose answers cannot count.

    Returns:
        (subject, body).
    """
    zone = _zone(tz)
    passed = all(v.passed for v in staging)
    subject = f"{_PREFIX} Approval needed: {client_name} change {change_ref}"
    lines = [
        f"Change {change_ref} for {client_name} is waiting for approval before production"
        " is touched.",
        "",
        "Staging result: "
        + ("passed" if passed and staging else "FAILED" if staging else "no staging servers"),
    ]
    for result in staging:
        status = "passed" if result.passed else "FAILED: " + "; ".join(result.failures)
        lines.append(f"  - {result.server}: {status}")
    lines += [
        "",
        f"Production change: {plan.package_changes} planned package change(s) over all"
        f" servers; production servers: {_servers(plan.production)};"
        f" reboots expected: {_servers(plan.reboots_expected)}.",
        "",
        f"Who may approve: {_servers(approvers)} ({approvals_required} approval(s) needed).",
    ]
    if keyless:
        lines.append(
            f"No ssh_key in the inventory, so their answers cannot count: {_servers(keyless)}."
        )
    if plan_digest:
        lines += [
            f"Plan digest: {plan_digest}. An answer counts only when signed with your own SSH key:",
            f"  python -m deployments.approve {flow_run_id or '<flow-run-id>'} --approver <name>"
            " --key ~/.ssh/id_ed25519 [--reject]",
            "or in the form, with the message and signing command it shows.",
        ]
    if deadline is not None:
        lines.append(
            f"Answer before {format_time(deadline, zone)}; without approval by then,"
            " production is left untouched."
        )
    lines += ["", f"Approve or reject here: {ui_url}"]
    return _finish(subject, lines)


def notice_end(
    record: ChangeRecord,
    *,
    client_name: str | None = None,
    tz: tzinfo | str = UTC,
    run_url: str | None = None,
) -> Notice:
    """The notice sent when a maintenance run ends, whatever the outcome.

    Args:
        record: the run's change record (outcome set).
        client_name: the client's display name; default the slug.
        tz: the client's time zone.
        run_url: link to the run (its change record artifact) in the Prefect UI.

    Returns:
        (subject, body).
    """
    zone = _zone(tz)
    name = client_name or record.client
    outcome = record.outcome.value if record.outcome else "in progress"
    subject = f"{_PREFIX} {name}: maintenance {record.change_ref} {outcome}"
    hosts = sorted({c.server for c in record.package_changes})
    counted = record.counted_approvals
    lines = [
        f"Maintenance {record.change_ref} for {name} ended: {outcome}.",
        OUTCOME_MEANING[record.outcome] if record.outcome else "The run has not finished.",
    ]
    if record.outcome_detail:
        lines.append(record.outcome_detail)
    lines += [
        "",
        f"Started: {format_time(record.started, zone)}",
        f"Ended: {format_time(record.ended, zone)}",
        f"Packages changed: {len(record.package_changes)} on {len(hosts)} server(s)"
        + (f" ({', '.join(hosts)})" if hosts else ""),
        f"Reboots: {len(record.reboots)}",
        f"Approvals: {len(counted)} of {record.approvals_required}"
        + (f" ({', '.join(a.approver for a in counted)})" if counted else ""),
    ]
    if record.production_results:
        lines.append("Production: " + results_line(record.production_results))
    failed = [v for v in record.verifications if not v.passed]
    if failed:
        lines.append("Failed verification: " + "; ".join(f"{v.server} ({v.phase})" for v in failed))
    if record.rollbacks:
        rolled = [
            f"{r.server} ("
            + (
                "not restored: nothing changed"
                if not r.changed
                else "restored"
                if r.restored_ok and r.verified_ok
                else "restored, FAILED its checks"
                if r.restored_ok
                else "restore FAILED"
                if r.snapshot_ids
                else "left as it is"
            )
            + ")"
            for r in record.rollbacks
        ]
        lines.append(f"Rolled back: {', '.join(rolled)}")
    if record.restore_test is not None:
        test = record.restore_test
        rto = f", RTO {test.rto_s:.0f} s" if test.rto_s is not None else ""
        lines.append(f"Restore test: {'passed' if test.ok else 'FAILED'} on {test.server}{rto}")
    findings = record.hygiene_findings + record.security_findings
    critical = [f for f in findings if f.severity == "critical"]
    if findings:
        lines.append(f"Findings: {len(findings)} ({len(critical)} critical)")
        lines += [f"  - {f.server or 'all'}: {f.summary}" for f in critical]
    if run_url:
        lines += ["", f"Full change record: {run_url}"]
    return _finish(subject, lines)


def notice_report(
    client_name: str,
    contact: str,
    period: str,
    start: datetime,
    end: datetime,
    links: Mapping[str, str],
    *,
    headline: Sequence[str] = (),
    expires: datetime | None = None,
    tz: tzinfo | str = UTC,
) -> Notice:
    """The notice telling the client's contact that their report is ready, with its links.

    Args:
        client_name: the client's display name.
        contact: who it is for (``name <email>``).
        period: the period's label (``2026-10``).
        start: the period's start.
        end: the period's end (exclusive; shown as the last day).
        links: the report's files by name and the link that opens each (report.html first).
        headline: a few summary lines (uptime, incidents).
        expires: when the links stop working (S3 presigned URLs); None: they do not.
        tz: the client's time zone.

    Returns:
        (subject, body).
    """
    zone = _zone(tz)
    first, last = (
        start.astimezone(zone).date(),
        (end.astimezone(zone) - timedelta(seconds=1)).date(),
    )
    subject = f"{_PREFIX} {client_name}: maintenance report {period}"
    lines = [
        f"For {contact}.",
        "",
        f"The maintenance report of {client_name} for {period} ({first} to {last}) is ready.",
        *headline,
        "",
        *[f"{name}: {link}" for name, link in links.items()],
    ]
    if expires is not None:
        lines += ["", f"The links work until {format_time(expires, zone)}."]
    lines += ["", "report.html opens offline: save it to keep it."]
    return _finish(subject, lines)


# --------------------------------------------------------------------------- sending

_URL = re.compile(r"https?://\S+")


def notice_audit(
    client_name: str,
    findings: Mapping[str, Sequence[str]],
    *,
    audited_at: datetime,
    tz: tzinfo | str = UTC,
    run_url: str | None = None,
) -> Notice:
    """The notice of a security audit that found something.

    Args:
        client_name: the client's display name.
        findings: per server with findings (or unreachable), what was found, in order.
        audited_at: when the audit read the hosts.
        tz: the client's time zone.
        run_url: link to the run in the Prefect UI.

    Returns:
        (subject, body).
    """
    subject = f"{_PREFIX} {client_name}: security audit, {len(findings)} server(s) with findings"
    lines = [
        f"The security audit of {client_name} at {format_time(audited_at, _zone(tz))} found:",
        "",
    ]
    for server, items in findings.items():
        lines.append(f"{server}:")
        lines += [f"  - {item}" for item in items]
    if run_url:
        lines += ["", f"Run: {run_url}"]
    return _finish(subject, lines)


def _describe(exc: BaseException) -> str:
    """A one-line description of a send failure without the endpoint's URL.

    Webhook URLs are often credentials themselves (Slack, Teams), and HTTP errors quote
    them; only the host is kept.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__

    def host_only(match: re.Match[str]) -> str:
        host = re.sub(r"^https?://(?:[^/@]*@)?", "", match.group(0)).split("/", 1)[0]
        return f"<{host}>"

    return f"{type(exc).__name__}: {redact(_URL.sub(host_only, text))}"[:500]


def load_notification_block(name: str) -> NotificationBlock:
    """Load a notification block by its name as the inventory writes it.

    The inventory gives bare names (``caretaker-demo-webhook``); Prefect loads blocks by
    ``<type slug>/<name>``, so a bare name is looked up among the notification blocks on
    the Prefect API. ``<type slug>/<name>`` is accepted as well.

    Args:
        name: the block's name.

    Returns:
        The block.

    Raises:
        ConfigError: no notification block has that name, several do, or the block
            named is not a notification block.
    """
    reference = name
    if "/" not in name:
        with get_client(sync_client=True) as client:
            response = client.request(
                "POST",
                "/block_documents/filter",
                json={
                    "block_documents": {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}},
                    "block_schemas": {"block_capabilities": {"all_": ["notify"]}},
                    "include_secrets": False,
                    "limit": 10,
                },
            )
            response.raise_for_status()
            documents: list[dict[str, Any]] = response.json()
        slugs = sorted({doc["block_type"]["slug"] for doc in documents})
        if not slugs:
            raise ConfigError(f"notification block {name!r} does not exist on the Prefect API")
        if len(slugs) > 1:
            raise ConfigError(
                f"notification block name {name!r} is ambiguous (types: {', '.join(slugs)});"
                " write it as <type>/<name>"
            )
        reference = f"{slugs[0]}/{name}"
    block = Block.load(reference)
    if not isinstance(block, NotificationBlock):
        raise ConfigError(f"block {reference!r} is a {type(block).__name__}, not a notification")
    return block


@task(name="notify", cache_policy=NO_CACHE)
def notify(block_names: Sequence[str], subject: str, body: str) -> list[str]:
    """Send one notice through each named notification block.

    Never raises for a failed send: each failure is logged as a warning and returned, so
    the flow can record it in the change record and carry on.

    Args:
        block_names: notification block names (the inventory's ``client.notify``).
        subject: the notice's subject (see the ``notice_*`` builders).
        body: its text.

    Returns:
        One line per block that could not be used, ``"<block>: <what went wrong>"``;
        empty when every notice was sent.
    """
    logger = get_run_logger()
    problems: list[str] = []
    for name in block_names:
        try:
            block = load_notification_block(name)
            # Apprise-based blocks swallow failures unless asked to raise.
            with block.raise_on_failure():
                # Prefect's own blocks send synchronously here; a block that only has an
                # async notify hands back a coroutine, which is run to completion.
                sent: object = block.notify(body, subject)
                if inspect.iscoroutine(sent):
                    run_coro_as_sync(sent)
        except Exception as exc:  # a notice must never stop (or fail) a maintenance
            problem = f"{name}: {_describe(exc)}"
            logger.warning("notice %r not sent through %s", subject, problem)
            problems.append(problem)
        else:
            logger.info("notice %r sent through %s", subject, name)
    return problems


def save_demo_webhook(
    url: str, name: str = DEMO_WEBHOOK_BLOCK, *, overwrite: bool = True
) -> CustomWebhookNotificationBlock:
    """Register a webhook notification block that POSTs each notice as JSON.

    The payload is ``{"subject": ..., "body": ..., "source": "caretaker", "block": <name>}``.

    Args:
        url: where to POST (the demo's local receiver).
        name: the block document name; default the one the example inventory names.
        overwrite: replace a block of that name.

    Returns:
        The saved block.
    """
    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={
            "subject": "{{subject}}",
            "body": "{{body}}",
            "source": "caretaker",
            "block": "{{name}}",
        },
        timeout=10,
    )
    block.save(name, overwrite=overwrite)
    return block
