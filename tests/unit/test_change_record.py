"""The change record model and its markdown rendering, on a hand-made record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from core.redact import redact
from history.change import (
    Approval,
    ChangeRecord,
    ChangeWindow,
    Finding,
    GateDecision,
    HostResult,
    Outcome,
    PackageChange,
    PlanSummary,
    Reboot,
    RestoreTestResult,
    Rollback,
    SnapshotRecord,
    Verification,
)
from tasks.record_markdown import render_markdown

T0 = datetime(2026, 1, 3, 2, 0, tzinfo=UTC)


def full_record() -> ChangeRecord:
    """A record of a run that patched two hosts, rolled one back and ran a restore test."""
    return ChangeRecord(
        client="acme",
        change_ref="CHG-1042",
        flow_run_id="5f0c8a1e-0000-4000-8000-000000000001",
        requester="schedule",
        window=ChangeWindow(start=T0, end=T0 + timedelta(hours=4), inside=True),
        plan=PlanSummary(
            policy="all",
            staging=("acme-stg-1",),
            production=("acme-web-1", "acme-web-2"),
            package_changes=3,
            reboots_expected=("acme-web-1",),
            not_planned=("acme-db-1: unreachable (connection refused)",),
        ),
        backout_plan="Restore each changed server from its pre-change snapshot.",
        test_plan="Health checks and package versions on each server after patching.",
        snapshots=[
            SnapshotRecord(
                server="acme-web-1",
                provider="aws",
                ids=("snap-0a1", "snap-0a2"),
                encrypted=True,
                state="completed",
            ),
            SnapshotRecord(
                server="acme-legacy",
                provider="none",
                state="skipped",
                accepted_risk="bare-metal host, nightly backups only (ticket OPS-7)",
            ),
        ],
        package_changes=[
            PackageChange(
                server="acme-web-1",
                name="openssl",
                from_version="3.0.11-1",
                to_version="3.0.13-1",
                security=True,
            ),
            PackageChange(server="acme-web-1", name="linux-image-amd64", to_version="6.1.90-1"),
            PackageChange(server="acme-web-2", name="caretaker-legacy", from_version="1.0"),
        ],
        reboots=[
            Reboot(server="acme-web-1", old_boot_id="aaaa-1", new_boot_id="bbbb-2", seconds=41.6)
        ],
        verifications=[
            Verification(
                server="acme-stg-1",
                phase="staging",
                checks=("tcp:22",),
                expectations=("versions as planned",),
                passed=True,
            ),
            Verification(
                server="acme-web-2",
                phase="production",
                checks=("tcp:22", "systemd caretaker-agent.service"),
                passed=False,
                failures=("systemd caretaker-agent.service: failed",),
            ),
        ],
        approvals=[
            Approval(
                approver="mallory",
                decision="approve",
                at=T0 + timedelta(minutes=20),
                counted=False,
                not_counted_reason="not a listed approver",
            ),
            Approval(
                approver="alice",
                decision="approve",
                at=T0 + timedelta(minutes=30),
                comment="go | ahead",
                ticket="CAB-77",
                counted=True,
            ),
        ],
        rollbacks=[
            Rollback(
                server="acme-web-2",
                snapshot_ids=("snap-0b1",),
                restored_ok=True,
                verified_ok=True,
                detail="agent healthy after restore",
            )
        ],
        restore_test=RestoreTestResult(
            server="acme-web-1", snapshot_id="snap-0a1", ok=True, rto_s=312.4, rto_bound_s=900
        ),
        hygiene_findings=[Finding(server="acme-web-1", severity="info", summary="2 old kernels")],
        security_findings=[
            Finding(server="acme-web-2", severity="critical", summary="port 6379 open to all")
        ],
        gates=[
            GateDecision(
                gate="window",
                batch=2,
                decision="override",
                at=T0 + timedelta(minutes=40),
                by="user: alice",
                detail="the window closes at 06:00 GMT: 3m00s left, the batch needs about 5m00s;"
                " going ahead on override: CAB-9 emergency fix",
            )
        ],
        production_results={"acme-web-1": HostResult.PATCHED, "acme-web-2": HostResult.RESTORED},
        outcome=Outcome.COMPLETED_WITH_ROLLBACKS,
        outcome_detail="acme-web-2 failed verification and was restored.",
        review="The agent unit needs a restart hook after libc upgrades.",
        started=T0 + timedelta(minutes=1),
        ended=T0 + timedelta(hours=1, minutes=2, seconds=3),
    )


def test_the_rendered_record_has_every_itil_section_in_order() -> None:
    text = render_markdown(full_record())

    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Summary",
        "## Window",
        "## Plan",
        "## Backout plan",
        "## Test plan",
        "## Snapshots",
        "## Changes per host",
        "## Verification",
        "## Approvals",
        "## Gates",
        "## Rollbacks",
        "## Restore test",
        "## Findings",
        "## Outcome and post-implementation review",
    ]
    assert text.startswith("# Change CHG-1042 — acme: completed-with-rollbacks\n")


def test_the_rendered_record_shows_what_happened_to_each_host() -> None:
    text = render_markdown(full_record())

    assert "| Duration | 1h 01m 03s |" in text
    assert "| Approvals | 1 of 1 required |" in text
    assert "| acme-web-1 | aws | completed | snap-0a1, snap-0a2 | yes | - |" in text
    assert "bare-metal host, nightly backups only (ticket OPS-7)" in text
    assert "### acme-web-1" in text and "### acme-web-2" in text
    assert "| openssl | 3.0.11-1 | 3.0.13-1 | yes |" in text
    assert "| linux-image-amd64 | (new) | 6.1.90-1 | no |" in text
    assert "| caretaker-legacy | 1.0 | (removed) | no |" in text
    assert "Rebooted in 42 s: boot id aaaa-1 → bbbb-2." in text
    assert "| acme-web-2 | production | **FAILED** |" in text
    mallory = "| mallory | approve | 2026-01-03 02:20 UTC | - | no: not a listed approver | - | - |"
    assert mallory in text
    # A pipe in free text must not break the table.
    assert "| alice | approve | 2026-01-03 02:30 UTC | CAB-77 | yes | - | go \\| ahead |" in text
    assert "| acme-web-2 | snap-0b1 | yes | yes | agent healthy after restore |" in text
    assert "| acme-web-1 | snap-0a1 | passed | 312 s (bound 900 s) | - |" in text
    # Critical findings come first.
    assert text.index("port 6379") > text.index("### Security")
    assert "**completed-with-rollbacks**: The change was applied, but some servers" in text
    assert "| Production | patched: acme-web-1; restored: acme-web-2 |" in text
    assert (
        "| window | 2 | override | 2026-01-03 02:40 UTC | user: alice | the window closes at"
        in text
    )
    assert "The agent unit needs a restart hook after libc upgrades." in text


def test_times_are_shown_in_the_clients_time_zone_when_asked() -> None:
    text = render_markdown(full_record(), tz="America/New_York")

    assert "2026-01-02 21:00 EST to 2026-01-03 01:00 EST." in text


def test_a_record_of_a_run_still_going_renders_as_in_progress() -> None:
    record = ChangeRecord(
        client="acme",
        change_ref="CHG-1",
        flow_run_id="run-1",
        requester="alice",
        window=ChangeWindow(
            start=T0, end=T0 + timedelta(hours=4), inside=False, override="urgent CVE fix"
        ),
        started=T0 - timedelta(hours=1),
    )

    text = render_markdown(record)

    assert text.startswith("# Change CHG-1 — acme: in progress\n")
    assert "started **outside** the window. Override: urgent CVE fix" in text
    assert "_No plan was made._" in text
    assert "_No snapshots were taken._" in text
    assert "## Restore test\n\n_Not run._" in text
    assert "**in progress**: The run has not finished." in text


def test_secrets_in_free_text_are_masked_in_the_artifact() -> None:
    record = full_record()
    record.outcome_detail = (
        "apt failed: fetching https://deploy:hunter2@apt.internal/debian with password=s3cr3t"
    )

    text = render_markdown(record)

    assert "hunter2" not in text and "s3cr3t" not in text
    assert "https://***@apt.internal/debian" in text
    assert "password=***" in text


def test_redact_masks_tokens_keys_and_private_keys() -> None:
    text = redact(
        'api_key: "abc123" token=xyz AWS_SECRET_ACCESS_KEY=wJalr\n'
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\n-----END OPENSSH PRIVATE KEY-----"
    )

    assert "abc123" not in text and "xyz" not in text and "wJalr" not in text
    assert "b3BlbnNzaC1r" not in text


def test_the_record_survives_a_json_round_trip() -> None:
    record = full_record()

    again = ChangeRecord.model_validate_json(record.model_dump_json())

    assert again == record


def test_timestamps_are_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=1))

    window = ChangeWindow(
        start=datetime(2026, 1, 3, 3, 0, tzinfo=paris),
        end=datetime(2026, 1, 3, 7, 0, tzinfo=paris),
        inside=True,
    )

    assert window.start == T0 and window.start.tzinfo == UTC


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ChangeWindow(start=datetime(2026, 1, 3, 2), end=datetime(2026, 1, 3, 6), inside=True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: SnapshotRecord(server="s", provider="none", state="skipped"),
            "accepted_risk",
        ),
        (
            lambda: SnapshotRecord(server="s", provider="aws", state="completed"),
            "needs its ids",
        ),
        (
            lambda: Verification(server="s", phase="staging", passed=False),
            "no failure says why",
        ),
        (
            lambda: Verification(server="s", phase="staging", passed=True, failures=("x",)),
            "yet failures are listed",
        ),
        (
            lambda: Approval(approver="eve", decision="approve", at=T0, counted=False),
            "no reason given",
        ),
        (
            lambda: PackageChange(server="s", name="p"),
            "neither a from nor a to version",
        ),
        (
            lambda: ChangeWindow(start=T0, end=T0, inside=True),
            "not after its start",
        ),
    ],
)
def test_inconsistent_evidence_is_refused(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(ValidationError, match=message):
        build()


def test_a_record_cannot_end_before_it_started() -> None:
    record = full_record()

    with pytest.raises(ValidationError, match="before started"):
        record.ended = record.started - timedelta(seconds=1)
