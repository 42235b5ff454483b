"""Limits, logs and the operator path, the pure parts: which limits the settings want and
what applying them does, which deployments a gone client leaves, the console filter, the
console scripts, and the approve command when the Prefect API does not answer."""

from __future__ import annotations

import io
import logging
import socket
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.logs import QuietTaskRuns, quiet_console
from core.settings import CaretakerSettings
from deployments.approve import for_client
from deployments.generate import _yaml_entry, deployment_specs, health_check_spec
from deployments.limits import aws_regions, describe
from deployments.prune import Deployed, stale
from inventory import load_inventory
from tasks.limits import (
    SSH_SESSIONS,
    LimitSpec,
    aws_limit_spec,
    desired_limits,
    limit_actions,
    ssh_session_limit,
    ssh_sessions,
)

REPO = Path(__file__).resolve().parents[2]


def test_health_check_all_cannot_pile_up() -> None:
    entry = _yaml_entry(health_check_spec())
    assert entry["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    # Maintenance has none: Prefect releases it while a run is paused for approval.
    others = [s for s in deployment_specs(load_inventory(REPO / "clients")) if s.name != "all"]
    assert others and all("concurrency_limit" not in _yaml_entry(s) for s in others)


def test_settings_name_the_numbers() -> None:
    config = CaretakerSettings(ssh_sessions_limit=12, aws_api_calls_per_s=2.5)
    assert desired_limits(["us-east-1", "eu-west-1", "us-east-1"], config) == [
        LimitSpec(name=SSH_SESSIONS, limit=12),
        LimitSpec(name="caretaker-aws-api-eu-west-1", limit=3, slot_decay_per_second=2.5),
        LimitSpec(name="caretaker-aws-api-us-east-1", limit=3, slot_decay_per_second=2.5),
    ]
    # A rate below one a second still lets one call through at a time.
    slow = aws_limit_spec("eu-west-1", CaretakerSettings(aws_api_calls_per_s=0.2))
    assert (slow.limit, slow.slot_decay_per_second) == (1, 0.2)
    assert describe(slow) == "rate 0.2/s (burst 1)"
    assert describe(LimitSpec(name=SSH_SESSIONS, limit=64)) == "64 at once"


@pytest.mark.parametrize("bad", [{"ssh_sessions_limit": 0}, {"aws_api_calls_per_s": 0}])
def test_a_limit_of_nothing_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CaretakerSettings(**bad)


SSH = LimitSpec(name=SSH_SESSIONS, limit=64)
RATE = LimitSpec(name="caretaker-aws-api-eu-west-1", limit=5, slot_decay_per_second=5)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ({}, ["create", "create"]),  # a fresh server
        ({SSH.name: SSH, RATE.name: RATE}, ["keep", "keep"]),  # applied twice: nothing
        ({SSH.name: SSH.model_copy(update={"limit": 8})}, ["update", "create"]),  # new number
        # A rate limit made a plain limit by hand is set back to a rate.
        ({RATE.name: RATE.model_copy(update={"slot_decay_per_second": 0.0})}, ["create", "update"]),
    ],
)
def test_applying_limits(existing: dict[str, LimitSpec], expected: list[str]) -> None:
    assert [a for a, _ in limit_actions([SSH, RATE], existing)] == expected


def test_outside_a_run_no_slot_is_taken() -> None:
    """A function called directly (a unit test, a script) has no run to count against."""
    assert ssh_session_limit() is None
    with ssh_sessions(1000):
        pass


def test_the_inventory_names_the_aws_regions() -> None:
    inventories = load_inventory(REPO / "clients")
    regions = aws_regions(inventories)
    expected = {
        s.provider.region
        for inv in inventories.values()
        for s in inv.servers
        if s.provider.type == "aws"
    }
    assert regions == sorted(expected) and regions  # acme is on AWS


def _d(name: str, *tags: str) -> Deployed:
    return Deployed(id=name, name=name, tags=tags)


def test_only_the_deployments_of_gone_clients_are_stale() -> None:
    deployed = [
        _d("server-maintenance/acme", "caretaker", "client:acme"),
        _d("server-maintenance/initech", "caretaker", "client:initech"),
        _d("maintenance-report/initech-monthly", "caretaker", "report", "client:initech"),
        _d("health-check/all", "caretaker", "health"),  # no client: never
        _d("other/initech", "client:initech"),  # not ours: never
        _d("shared/both", "caretaker", "client:acme", "client:initech"),  # acme is left
    ]
    assert [d.name for d in stale(deployed, {"acme", "globex"})] == [
        "maintenance-report/initech-monthly",
        "server-maintenance/initech",
    ]
    # A typed slug is not a prefix match: "acme" is not "acme-eu".
    assert [d.name for d in stale([_d("x/acme-eu", "caretaker", "client:acme-eu")], {"acme"})]


def test_list_filters_by_client() -> None:
    runs = [
        SimpleNamespace(parameters={"client": "acme"}),
        SimpleNamespace(parameters={"client": "globex"}),
        SimpleNamespace(parameters=None),
    ]
    assert for_client(runs, "acme") == runs[:1]
    assert for_client(runs, None) == runs
    assert for_client(runs, "initech") == []


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_the_console_drops_completed_task_lines_only() -> None:
    quiet = QuietTaskRuns()
    assert not quiet.filter(
        _record("prefect.task_runs", logging.INFO, "Finished in state Completed()")
    )
    for kept in (
        _record("prefect.task_runs", logging.INFO, "Finished in state Failed('boom')"),
        _record("prefect.task_runs", logging.ERROR, "Finished in state Completed()"),
        _record("prefect.flow_runs", logging.INFO, "Finished in state Completed()"),
        _record("tasks.packages", logging.INFO, "h01: 3 package(s) changed"),
    ):
        assert quiet.filter(kept), kept.getMessage()


def test_quiet_console_leaves_the_api_handler_alone() -> None:
    """The console (a root handler) loses the line; a handler on prefect.task_runs itself
    (where Prefect's API handler is) still gets it."""
    console_text, api_text = io.StringIO(), io.StringIO()
    console, api = logging.StreamHandler(console_text), logging.StreamHandler(api_text)
    root, task_runs = logging.getLogger(), logging.getLogger("prefect.task_runs")
    old = task_runs.level
    root.addHandler(console)
    task_runs.addHandler(api)
    task_runs.setLevel(logging.INFO)
    try:
        assert quiet_console() >= 1
        assert quiet_console() == 0  # idempotent
        task_runs.info("Finished in state Completed()")
        task_runs.error("Finished in state Crashed()")
    finally:
        root.removeHandler(console)
        task_runs.removeHandler(api)
        task_runs.setLevel(old)
        for h in root.handlers:
            for f in [f for f in h.filters if isinstance(f, QuietTaskRuns)]:
                h.removeFilter(f)
    assert "Completed" not in console_text.getvalue() and "Crashed" in console_text.getvalue()
    assert "Completed" in api_text.getvalue()


def test_every_console_script_is_installed_and_answers_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {
        "caretaker-approve",
        "caretaker-inventory",
        "caretaker-limits",
        "caretaker-prune",
    } <= set(declared)
    installed = {ep.name: ep for ep in entry_points(group="console_scripts")}
    for name, target in declared.items():
        assert name in installed, f"{name}: run ./run setup (pip install -e .)"
        assert installed[name].value == target
        with pytest.raises(SystemExit) as done:
            installed[name].load()(["--help"])
        assert done.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_approve_list_says_the_api_is_down_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    from deployments.approve import main

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with temporary_settings(
        {PREFECT_API_URL: f"http://127.0.0.1:{port}/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    ):
        assert main(["list", "--client", "acme"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Prefect API did not answer: ConnectError")
    assert "Traceback" not in err and err.count("\n") == 1


class _Answers:
    """A slot API answering from a script: a lease, "busy" (423) or "error" (5xx)."""

    name = "caretaker-ssh-sessions"

    def __init__(self, answers: list[str]) -> None:
        self.answers = iter(answers)
        self.asked: list[int] = []
        self.last_error: str | None = None

    def take(self, slots: int = 1) -> str | None:
        self.asked.append(slots)
        answer = next(self.answers)
        self.last_error = "the Prefect API answered 503" if answer == "error" else None
        return answer if answer.startswith("lease") else None


@pytest.mark.parametrize(
    ("answers", "timeout_s", "outcome"),
    [
        (["lease-1"], 5, "lease-1"),
        (["error", "error", "lease-2"], 5, "lease-2"),  # a server error: asked again soon
        (["busy", "lease-3"], 5, "lease-3"),  # every slot held: asked again at the poll
        (["busy"] * 50, 0.05, "not free"),
        (["error"] * 50, 0.12, "answered 503"),
    ],
)
def test_a_batch_asks_for_its_slots_in_one_lease_until_granted_or_its_wait_is_over(
    answers: list[str], timeout_s: float, outcome: str
) -> None:
    from core.errors import LimitUnavailable
    from tasks.limits import _take_slots

    api = _Answers(answers)
    if outcome.startswith("lease"):
        assert _take_slots(api, 7, timeout_s, poll_s=0.02) == outcome  # type: ignore[arg-type]
    else:
        with pytest.raises(LimitUnavailable, match=f"7 SSH session slot.*{outcome}"):
            _take_slots(api, 7, timeout_s, poll_s=0.02)  # type: ignore[arg-type]
    assert set(api.asked) == {7}  # always the batch's whole count, in one request
