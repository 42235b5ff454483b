"""Verification of hosts after patching: their facts, checked by a great-expectations suite.

After staging is patched, and after each production batch, the maintenance flow collects
every host's facts (``tasks/facts/``) and asks one question: *is each host healthy
enough to go on?* This module (with ``tasks.verify.frame``) answers it in three pure
steps and one thin task:

1. :func:`facts_frame` (``tasks.verify.frame``) turns ``{server: HostFacts}`` and the
   inventory's allowed ports into a pandas frame, one row per server, one column per
   thing we check (failed units, the fullest disk, a pending reboot, pending security
   updates, unexpected listening ports, facts that could not be read).
2. :func:`build_suite` turns :class:`HostVerificationSettings` into a great-expectations
   ``ExpectationSuite``: one named expectation per check, thresholds from the settings.
3. :func:`verify_facts` validates the frame with that suite in an *ephemeral* GX context
   (``core.gx``: nothing written to disk, nothing sent anywhere) and converts GX's result
   into our own :class:`VerificationReport`: per server, human sentences for what failed
   (``"disk use 94.0% over 90% on /"``) and what could not be checked (warnings).
4. :func:`validate_host_facts` is the Prefect task the flow calls; it does 1-3 and logs.

A missing answer is never a healthy one. A host without systemd (the sandbox hosts, many
containers) has an *unknown* failed-unit count: with the default settings that is a
warning line, and with ``require_systemd_known`` a failure; it is never reported as "no
failed units". A fact that was not collected at all leaves its column empty (NA), which the
suite does not count against the host but the report names as a warning; a fact that was
asked for and could not be read fails ``facts_read``.

great-expectations is imported lazily (it takes seconds): importing this module, building
frames and settings stays cheap for flows and deployments that never validate.

Every expectation, its threshold and what its failure means are in ``docs/verification.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, ConfigDict, Field

from core.gx import run_suite
from inventory.types import RebootPolicy
from tasks.facts.script import HostFacts
from tasks.verify.frame import FRAME_COLUMNS, facts_frame

if TYPE_CHECKING:  # pandas is imported when a row is read: 0.35 s off every flow's import
    import great_expectations as gx
    import pandas as pd
    from great_expectations.expectations import Expectation

__all__ = [
    "EXPECTATION_NAMES",
    "ExpectationOutcome",
    "HostVerificationSettings",
    "ServerVerification",
    "VerificationReport",
    "build_suite",
    "validate_host_facts",
    "verification_settings",
    "verify_facts",
]


# --------------------------------------------------------------------------- settings


class HostVerificationSettings(BaseModel):
    """Thresholds of the host verification; the defaults are the strict, safe ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    disk_used_max_pct: float = Field(
        default=90,
        ge=1,
        le=100,
        description="Fail a host whose fullest filesystem is used more than this (percent).",
    )
    allow_pending_reboot: bool = Field(
        default=False,
        description="Accept a host that still asks for a reboot (reported as a warning).",
    )
    require_systemd_known: bool = Field(
        default=False,
        description=(
            "Fail a host whose failed systemd units cannot be known (no systemd). When false,"
            " unknown is a warning, never 'healthy'."
        ),
    )
    max_pending_security: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Security updates a host may still have pending after patching.",
    )
    max_auth_failures: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description=(
            "Failed SSH logins the logs may hold (when the audit reads them); more is a"
            " finding (someone is trying), fewer a line to review."
        ),
    )
    require_firewall_known: bool = Field(
        default=False,
        description=(
            "Fail a host whose inbound firewall cannot be known (no nft or iptables, or it"
            " could not answer) when the firewall fact was read. When false, a warning."
        ),
    )


def verification_settings(
    reboot: RebootPolicy, *, after_restore: bool = False
) -> HostVerificationSettings:
    """The verification thresholds for a client's reboot policy (pure).

    With ``reboot: never`` a host is never rebooted, so a reboot the OS asks for stays
    pending by policy: it is reported as a warning, not a failure. After a restore the
    host is back at its pre-change versions, so its pending security updates and a
    pending reboot are expected there too.

    Args:
        reboot: the inventory's ``patch.reboot``.
        after_restore: verifying a host just restored from its snapshot.
    """
    if after_restore:
        return HostVerificationSettings(max_pending_security=10_000, allow_pending_reboot=True)
    return HostVerificationSettings(allow_pending_reboot=reboot == "never")


# ----------------------------------------------------------------------------- report


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerVerification(_Frozen):
    """What the suite found on one server."""

    passed: bool = Field(description="True when no expectation failed on this server.")
    failures: list[str] = Field(
        default_factory=list, description="Why it failed, one human sentence each."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What could not be checked or was accepted by the settings; never a failure.",
    )
    failed_checks: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Each failure's sentence by the name of the expectation it broke (a stable key"
            " to follow a finding from one audit to the next)."
        ),
    )


class ExpectationOutcome(_Frozen):
    """One expectation of the suite and how it went."""

    name: str = Field(description="Stable name, e.g. disk_used_pct_max (see EXPECTATION_NAMES).")
    description: str = Field(default="", description="What it expects, with its threshold.")
    success: bool
    unexpected_servers: list[str] = Field(
        default_factory=list, description="Servers (rows) that broke it, in frame order."
    )
    error: str | None = Field(
        default=None, description="GX could not evaluate it (then success is False)."
    )


class VerificationReport(_Frozen):
    """Our own, GX-free account of one validation of hosts' facts."""

    passed: bool = Field(description="Every expectation held and no server failed.")
    per_server: dict[str, ServerVerification] = Field(default_factory=dict)
    expectations: list[ExpectationOutcome] = Field(default_factory=list)
    gx_statistics: dict[str, float] = Field(
        default_factory=dict,
        description="GX's suite statistics (evaluated/successful/unsuccessful, success_percent).",
    )

    @property
    def failed_servers(self) -> list[str]:
        """Servers with at least one failure, in frame order."""
        return [name for name, result in self.per_server.items() if not result.passed]


# ------------------------------------------------------------------------------ suite


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _text(row: Mapping[str, Any], column: str, default: str = "") -> str:
    """A row's text value, or ``default`` when the column is absent or NA."""
    value = row.get(column)
    import pandas as pd

    return default if value is None or pd.isna(value) else str(value)


@dataclass(frozen=True)
class _Check:
    """One expectation of the suite: how to build it and how to say it failed."""

    name: str
    describe: Callable[[HostVerificationSettings], str]
    # Given great_expectations.expectations (imported lazily), the settings and the common
    # keyword arguments (meta, description); None: the settings leave the check out.
    build: Callable[[ModuleType, HostVerificationSettings, dict[str, Any]], Expectation | None]
    sentence: Callable[[Mapping[str, Any], HostVerificationSettings], str]


def _failed_units_sentence(row: Mapping[str, Any], _: HostVerificationSettings) -> str:
    count = int(row["failed_units"])
    names = _text(row, "failed_unit_names")
    return f"{_plural(count, 'failed systemd unit')}" + (f": {names}" if names else "")


def _disk_sentence(row: Mapping[str, Any], settings: HostVerificationSettings) -> str:
    mount = _text(row, "fullest_mount")
    return (
        f"disk use {float(row['max_disk_used_pct']):.1f}% over {settings.disk_used_max_pct:g}%"
        + (f" on {mount}" if mount else "")
    )


def _security_sentence(row: Mapping[str, Any], settings: HostVerificationSettings) -> str:
    count = int(row["pending_security_updates"])
    limit = settings.max_pending_security
    return _plural(count, "pending security update") + (
        f" (at most {limit} allowed)" if limit else ""
    )


def _facts_sentence(row: Mapping[str, Any], _: HostVerificationSettings) -> str:
    detail = _text(row, "facts_error_detail")
    return f"{_plural(int(row['facts_errors']), 'fact')} could not be read" + (
        f": {detail}" if detail else ""
    )


# The suite's expectations, in the order the report lists them.
_CHECKS: tuple[_Check, ...] = (
    _Check(
        "failed_units_zero",
        lambda s: "no failed systemd units",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeBetween(
            column="failed_units", min_value=0, max_value=0, mostly=1.0, **kw
        ),
        _failed_units_sentence,
    ),
    _Check(
        # column map expectations skip NA; this one is what refuses NA when asked to.
        "systemd_state_known",
        lambda s: "failed systemd units can be known (systemd answers)",
        lambda gxe, s, kw: (
            gxe.ExpectColumnValuesToNotBeNull(column="failed_units", mostly=1.0, **kw)
            if s.require_systemd_known
            else None
        ),
        lambda row, s: (
            "systemd state unknown: " + _text(row, "systemd_reason", "systemd did not answer")
        ),
    ),
    _Check(
        "disk_used_pct_max",
        lambda s: f"every filesystem at most {s.disk_used_max_pct:g}% used",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeBetween(
            column="max_disk_used_pct", max_value=s.disk_used_max_pct, mostly=1.0, **kw
        ),
        _disk_sentence,
    ),
    _Check(
        "no_pending_reboot",
        lambda s: "no reboot pending",
        lambda gxe, s, kw: (
            None
            if s.allow_pending_reboot
            else gxe.ExpectColumnValuesToBeInSet(
                column="reboot_pending", value_set=[False], mostly=1.0, **kw
            )
        ),
        lambda row, s: "reboot pending",
    ),
    _Check(
        "pending_security_max",
        lambda s: f"at most {_plural(s.max_pending_security, 'pending security update')}",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeBetween(
            column="pending_security_updates",
            min_value=0,
            max_value=s.max_pending_security,
            mostly=1.0,
            **kw,
        ),
        _security_sentence,
    ),
    _Check(
        "no_unexpected_ports",
        lambda s: "no listening TCP port outside allowed_ports",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeInSet(
            column="unexpected_ports", value_set=[""], mostly=1.0, **kw
        ),
        lambda row, s: f"unexpected listening ports: {_text(row, 'unexpected_ports')}",
    ),
    _Check(
        "ssh_no_password_login",
        lambda s: "sshd lets no password (and no root by password) in",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeInSet(
            column="ssh_weaknesses", value_set=[""], mostly=1.0, **kw
        ),
        lambda row, s: f"sshd allows {_text(row, 'ssh_weaknesses')}",
    ),
    _Check(
        "firewall_default_deny",
        lambda s: "inbound traffic no rule accepts is dropped (nft or iptables)",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeInSet(
            column="firewall_default_deny", value_set=[True], mostly=1.0, **kw
        ),
        lambda row, s: (
            "inbound traffic is not denied by default"
            + (f" ({_text(row, 'firewall_detail')})" if _text(row, "firewall_detail") else "")
        ),
    ),
    _Check(
        # NA is also "not read": only the audit, which reads the fact, asks for this.
        "firewall_state_known",
        lambda s: "the inbound firewall can be known",
        lambda gxe, s, kw: (
            gxe.ExpectColumnValuesToNotBeNull(column="firewall_default_deny", mostly=1.0, **kw)
            if s.require_firewall_known
            else None
        ),
        lambda row, s: "firewall unknown: " + _text(row, "firewall_detail", "not read"),
    ),
    _Check(
        "auth_failures_max",
        lambda s: f"at most {s.max_auth_failures} failed SSH logins in the logs",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeBetween(
            column="auth_failures", min_value=0, max_value=s.max_auth_failures, mostly=1.0, **kw
        ),
        lambda row, s: (
            f"{_plural(int(row['auth_failures']), 'failed SSH login')} in the logs"
            f" ({_text(row, 'log_source')}), more than {s.max_auth_failures}"
        ),
    ),
    _Check(
        "server_present",
        lambda s: "every row names its server",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToNotBeNull(column="server", mostly=1.0, **kw),
        lambda row, s: "the row has no server name",
    ),
    _Check(
        "server_unique",
        lambda s: "each server appears once",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeUnique(column="server", mostly=1.0, **kw),
        lambda row, s: "the server appears more than once in the facts",
    ),
    _Check(
        "facts_read",
        lambda s: "every fact asked for was read",
        lambda gxe, s, kw: gxe.ExpectColumnValuesToBeBetween(
            column="facts_errors", min_value=0, max_value=0, mostly=1.0, **kw
        ),
        _facts_sentence,
    ),
)


# Every name an ExpectationOutcome can carry, whatever the settings.
EXPECTATION_NAMES: tuple[str, ...] = tuple(check.name for check in _CHECKS)

SUITE_NAME = "caretaker-host-facts"


def build_suite(settings: HostVerificationSettings | None = None) -> gx.ExpectationSuite:
    """The host-verification suite for ``settings``.

    Each expectation carries its stable name in ``meta["name"]`` (one of
    :data:`EXPECTATION_NAMES`) and a ``description`` with its threshold. Checks the settings
    switch off (a pending reboot when ``allow_pending_reboot``; systemd state unless
    ``require_systemd_known``) are left out rather than made vacuous, so the suite says
    exactly what was checked.

    Args:
        settings: thresholds; default :class:`HostVerificationSettings`.

    Returns:
        A new suite, not registered with any context.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    settings = settings or HostVerificationSettings()
    expectations = [
        check.build(
            gxe,
            settings,
            {"meta": {"name": check.name}, "description": check.describe(settings)},
        )
        for check in _CHECKS
    ]
    # Given to the constructor rather than add_expectation(), which looks the suite up in
    # GX's *current* context's store (and fails when there is none): this suite belongs to
    # no context and is never saved.
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=[e for e in expectations if e])


# ------------------------------------------------------------------------- validation


def _exception_message(info: Any) -> str | None:
    """GX's exception message for a result, or None when it did not raise.

    GX reports either one ``{"raised_exception": ...}`` mapping or, when a metric failed,
    one such mapping per metric.
    """
    if not isinstance(info, Mapping):
        return None
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, Mapping) and item.get("raised_exception"):
            return str(item.get("exception_message") or "GX raised an exception")
    return None


def _warnings(row: Mapping[str, Any], settings: HostVerificationSettings) -> list[str]:
    """What the suite could not check on this row, or accepted because of the settings."""
    import pandas as pd

    out: list[str] = []
    if not bool(row["systemd_known"]) and not settings.require_systemd_known:
        reason = _text(row, "systemd_reason", "systemd did not answer")
        out.append(f"systemd state unknown ({reason}): failed units not checked")
    if pd.isna(row["max_disk_used_pct"]):
        out.append("disk use unknown (no disks in the facts): not checked")
    reboot = row["reboot_pending"]
    if pd.isna(reboot):
        out.append("reboot state unknown (not in the facts): not checked")
    elif bool(reboot) and settings.allow_pending_reboot:
        out.append("reboot pending (allowed by the settings)")
    security = row["pending_security_updates"]
    if pd.isna(security):
        out.append("pending security updates unknown (not in the facts): not checked")
    elif 0 < int(security) <= settings.max_pending_security:
        out.append(
            f"{_plural(int(security), 'pending security update')}"
            f" (up to {settings.max_pending_security} allowed)"
        )
    if pd.isna(row["unexpected_ports"]):
        out.append("listening ports unknown (not in the facts): not checked")
    missing = _text(row, "missing_ports")
    if missing:
        out.append(f"allowed ports not listening: {missing}")
    source = row.get("log_source")
    if source is not None and not pd.isna(source):  # the logs were read
        errors, logins = int(row["log_errors"]), int(row["auth_failures"])
        if errors or 0 < logins <= settings.max_auth_failures:
            counts = f"{_plural(errors, 'error line')}, {_plural(logins, 'failed SSH login')}"
            out.append(f"logs to review ({source}): {counts}")
    detail = row.get("firewall_detail")
    firewall_read = detail is not None and not pd.isna(detail)
    if (
        firewall_read
        and pd.isna(row["firewall_default_deny"])
        and not settings.require_firewall_known
    ):
        out.append(f"firewall unknown ({detail}): not checked")
    return out


def verify_facts(
    frame: pd.DataFrame, settings: HostVerificationSettings | None = None
) -> VerificationReport:
    """Validate a :func:`facts_frame` with :func:`build_suite` and report per server.

    The validation runs in an ephemeral GX context (in memory: no files, no network),
    created once per process and reused (``core.gx``). GX's result is converted into
    our own models: each unexpected row becomes a failure sentence on its server; an
    expectation GX could not evaluate fails every server, so an error is never mistaken
    for a pass.

    Args:
        frame: one row per server with at least the columns of :data:`FRAME_COLUMNS`.
        settings: thresholds; default :class:`HostVerificationSettings`.

    Returns:
        The report; ``passed`` is False if any expectation failed.

    Raises:
        ValueError: ``frame`` lacks a column of :data:`FRAME_COLUMNS`.
    """
    settings = settings or HostVerificationSettings()
    missing_columns = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing_columns:
        raise ValueError(f"facts frame lacks columns: {', '.join(missing_columns)}")
    # GX names unexpected rows by index label; a fresh RangeIndex makes a label a row number.
    data = frame.reset_index(drop=True)
    rows: list[dict[str, Any]] = data.to_dict("records")
    labels = [_text(row, "server") or f"<row {i}>" for i, row in enumerate(rows)]
    suite = build_suite(settings)
    checks = {check.name: check for check in _CHECKS}

    result = run_suite(data, suite)

    failures: list[list[str]] = [[] for _ in rows]
    named: list[dict[str, str]] = [{} for _ in rows]
    by_name: dict[str, ExpectationOutcome] = {}
    for item in result.results:
        config = item.expectation_config
        name = str((config.meta or {}).get("name", config.type)) if config else "unknown"
        check = checks.get(name)
        error = _exception_message(item.exception_info)
        indices = [int(i) for i in (item.result or {}).get("unexpected_index_list") or []]
        success = bool(item.success) and error is None
        if error is not None or (not success and not indices):
            # Not attributable to a row: fail every server rather than pass them silently.
            indices = list(range(len(rows)))
            sentence = (
                f"expectation {name} could not be evaluated: {error}"
                if error is not None
                else f"expectation {name} failed without naming a server"
            )
            for row_failures, row_named in zip(failures, named, strict=True):
                row_failures.append(sentence)
                row_named[name] = sentence
        elif check is not None:
            for i in indices:
                failures[i].append(check.sentence(rows[i], settings))
                named[i][name] = failures[i][-1]
        by_name[name] = ExpectationOutcome(
            name=name,
            description=(config.description or "") if config else "",
            success=success,
            unexpected_servers=list(dict.fromkeys(labels[i] for i in indices)),
            error=error,
        )

    per_server: dict[str, ServerVerification] = {}
    for i, row in enumerate(rows):
        previous = per_server.get(labels[i])
        # A duplicated server name collapses into one entry holding both rows' findings.
        row_failures = (previous.failures if previous else []) + failures[i]
        row_warnings = (previous.warnings if previous else []) + _warnings(row, settings)
        per_server[labels[i]] = ServerVerification(
            passed=not row_failures,
            failures=list(dict.fromkeys(row_failures)),
            warnings=list(dict.fromkeys(row_warnings)),
            failed_checks=(previous.failed_checks if previous else {}) | named[i],
        )

    outcomes = [by_name[n] for n in EXPECTATION_NAMES if n in by_name]
    outcomes += [o for n, o in by_name.items() if n not in EXPECTATION_NAMES]
    statistics = {
        key: float(value)
        for key, value in (result.statistics or {}).items()
        if isinstance(value, int | float)
    }
    return VerificationReport(
        passed=all(o.success for o in outcomes) and all(s.passed for s in per_server.values()),
        per_server=per_server,
        expectations=outcomes,
        gx_statistics=statistics,
    )


# ------------------------------------------------------------------------------- task


@task(name="validate-host-facts", cache_policy=NO_CACHE)
def validate_host_facts(
    facts: Mapping[str, HostFacts],
    allowed_ports: Mapping[str, Sequence[int]],
    settings: HostVerificationSettings | None = None,
) -> VerificationReport:
    """Verify hosts' facts after patching with the great-expectations suite.

    Called by the maintenance flow for staging and for each production batch. It only
    computes: what to do with a failed host (halt, restore, hand back) is the flow's call.

    Args:
        facts: facts by server name, collected after the change (``collect_facts``).
        allowed_ports: each server's allowed listening TCP ports (``Server.allowed_ports``).
        settings: thresholds; default :class:`HostVerificationSettings`.

    Returns:
        The verification report: passed, per-server failures and warnings, and each
        expectation's outcome.
    """
    report = verify_facts(facts_frame(facts, allowed_ports), settings)
    try:
        logger = get_run_logger()
    except MissingContextError:
        # Run through .fn() or outside Prefect: the report says it all.
        return report
    for name, result in report.per_server.items():
        for line in result.failures:
            logger.warning("%s: FAILED: %s", name, line)
        for line in result.warnings:
            logger.info("%s: warning: %s", name, line)
    logger.info(
        "host verification %s: %d server(s), %d failed",
        "passed" if report.passed else "FAILED",
        len(report.per_server),
        len(report.failed_servers),
    )
    return report
