"""prefect.yaml, checked offline: what `prefect deploy --all` would register, and why it is right.

No Prefect API is involved: the file is parsed with Prefect's own models, every
entrypoint is imported the way `prefect deploy` imports it, parameters are validated
against the flow's signature and parameter schema, and schedules are expanded with
Prefect's cron schedule to check that runs start when the client's window opens.
"""

from __future__ import annotations

import asyncio
import inspect
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.generate import (
    HEARTBEAT_FREQUENCY_S,
    MAINTENANCE_ENTRYPOINT,
    MAINTENANCE_FLOW,
    REPORT_ENTRYPOINT,
    SCHEDULE_SLUG,
    WORK_POOL,
    main,
    render,
)
from inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
CLIENTS = REPO / "clients"

DOCUMENT: dict[str, Any] = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
DEPLOYMENTS: list[dict[str, Any]] = DOCUMENT["deployments"]


MAINTENANCE: list[dict[str, Any]] = [
    d for d in DEPLOYMENTS if d["entrypoint"] == MAINTENANCE_ENTRYPOINT
]


def each_deployment() -> Any:
    """Parametrize a test over prefect.yaml's deployments, named after them."""
    return pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])


def each_maintenance_deployment() -> Any:
    """Parametrize a test over the per-client server-maintenance deployments."""
    return pytest.mark.parametrize("deployment", MAINTENANCE, ids=[d["name"] for d in MAINTENANCE])


def load_flow(entrypoint: str) -> Any:
    """The flow an entrypoint names, loaded the way `prefect deploy` and workers load it."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, function = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{REPO / path}:{function}")


def parameter_problems(flow: Any, parameters: dict[str, Any]) -> list[str]:
    """What is wrong with a deployment's ``parameters`` for ``flow``, one line per problem.

    Prefect drops unknown keys without a word, so a typo (``dryrun: true``) would silently
    run with the default; here it is an error. Required parameters must be present, and
    the values must pass both the flow's own pydantic validation (what the flow run does)
    and its JSON parameter schema (what the server enforces).
    """
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    signature = inspect.signature(flow.fn)
    problems = [
        f"unknown parameter {name!r} (the flow takes: {', '.join(signature.parameters)})"
        for name in sorted(set(parameters) - set(signature.parameters))
    ]
    problems += [
        f"required parameter {name!r} is missing"
        for name, parameter in signature.parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in parameters
    ]
    if problems:
        return problems
    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as exc:
        problems.append(f"invalid for the flow's signature: {exc}")
    schema = parameter_schema(flow).model_dump_for_openapi()
    problems += [
        f"invalid for the parameter schema: {error.message}"
        for error in validate(parameters, schema)
    ]
    return problems


# --------------------------------------------------------------------------- the file


def test_prefect_yaml_is_exactly_what_the_generator_writes_from_clients() -> None:
    assert PREFECT_YAML.read_text(encoding="utf-8") == render(CLIENTS), (
        "prefect.yaml is stale: run `python -m deployments.generate`"
    )


def test_the_check_command_agrees_that_prefect_yaml_is_current() -> None:
    assert main(["--check", "--inventory", str(CLIENTS), "-o", str(PREFECT_YAML)]) == 0


def test_prefect_yaml_is_a_valid_prefect_project_file() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig

    model = PrefectYamlModel.model_validate(DOCUMENT)
    assert len(model.deployments) == len(DEPLOYMENTS)
    for deployment in DEPLOYMENTS:
        for schedule in deployment["schedules"]:
            # extra="forbid": a misspelt schedule key fails here, not silently at deploy.
            RawScheduleConfig.model_validate(schedule)


def test_every_client_has_exactly_one_maintenance_deployment_and_each_one_a_client() -> None:
    clients = sorted(p.stem for p in CLIENTS.glob("*.yaml"))
    maintenance = [d["name"] for d in DEPLOYMENTS if d["entrypoint"] == MAINTENANCE_ENTRYPOINT]
    assert sorted(maintenance) == clients
    assert len(set(maintenance)) == len(maintenance)
    names = [(d["entrypoint"], d["name"]) for d in DEPLOYMENTS]
    assert len(set(names)) == len(names), "two deployments of one flow share a name"


# --------------------------------------------------------------------------- each deployment


@each_deployment()
def test_the_entrypoint_imports_the_flow_users_name(deployment: dict[str, Any]) -> None:
    flow = load_flow(deployment["entrypoint"])
    if deployment["entrypoint"] == MAINTENANCE_ENTRYPOINT:
        assert f"{flow.name}/{deployment['name']}" == f"{MAINTENANCE_FLOW}/{deployment['name']}"


@each_deployment()
def test_the_parameters_fit_the_flows_signature(deployment: dict[str, Any]) -> None:
    flow = load_flow(deployment["entrypoint"])
    assert parameter_problems(flow, deployment["parameters"]) == []
    assert deployment["enforce_parameter_schema"] is True


@each_maintenance_deployment()
def test_the_parameters_name_the_client_and_leave_dry_run_to_the_flow(
    deployment: dict[str, Any],
) -> None:
    assert deployment["parameters"] == {"client": deployment["name"]}


@each_maintenance_deployment()
def test_the_schedule_opens_the_clients_window_in_its_own_time_zone(
    deployment: dict[str, Any],
) -> None:
    from prefect.client.schemas.schedules import CronSchedule as ClientCronSchedule
    from prefect.server.schemas.schedules import CronSchedule

    inventory = load_inventory(CLIENTS)[deployment["name"]]
    (item,) = deployment["schedules"]
    assert item["timezone"] == inventory.client.timezone
    assert item["timezone"] in zoneinfo.available_timezones(), "not an IANA time zone"
    assert (item["cron"], item["day_or"]) == inventory.schedule.cron_expression()
    assert item["active"] is True
    ClientCronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item["day_or"])

    schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item["day_or"])
    runs = asyncio.run(schedule.get_dates(n=8, start=datetime(2026, 1, 1, tzinfo=UTC)))
    tz, window = inventory.tz, inventory.schedule.window
    for run in runs:
        # A stdlib datetime: Prefect's DateTime subclass loses its zone in arithmetic.
        local = datetime.fromtimestamp(run.timestamp(), tz)
        assert local.time() == window.start, f"{run} is not {window.start} in {tz}"
        assert window.contains(local, tz)
        if inventory.schedule.cadence == "quarterly" and window.weekday is None:
            assert local.month in (1, 4, 7, 10) and local.day == 1


@each_maintenance_deployment()
def test_the_deployment_runs_on_the_process_pool_from_a_clone_of_the_deployed_commit(
    deployment: dict[str, Any],
) -> None:
    assert deployment["work_pool"]["name"] == WORK_POOL
    assert deployment["tags"] == ["caretaker", f"client:{deployment['name']}"]
    inventory = load_inventory(CLIENTS)[deployment["name"]]
    assert inventory.client.name in deployment["description"]
    repository, commit = (
        b["prefect.deployments.steps.run_shell_script"] for b in DOCUMENT["build"]
    )
    (pull,) = DOCUMENT["pull"]
    clone = pull["prefect.deployments.steps.git_clone"]
    assert clone == {
        "repository": "{{ " + repository["id"] + ".stdout }}",
        "commit_sha": "{{ " + commit["id"] + ".stdout }}",
    }
    # Worker mode is the fleet's: a run refuses a per-machine store.
    assert deployment["work_pool"]["job_variables"]["env"]["CARETAKER_HISTORY_STORE_SHARED"] == (
        "true"
    )


def test_no_path_of_the_deploying_machine_is_in_prefect_yaml() -> None:
    text = (REPO / "prefect.yaml").read_text()
    assert str(REPO) not in text and "set_working_directory" not in text


@pytest.mark.parametrize(
    ("env", "origin", "expected"),
    [
        ({}, "file:///srv/git/caretaker.git", "file:///srv/git/caretaker.git"),
        (
            {"CARETAKER_GIT_REPOSITORY": "ssh://git@git.msp.example/caretaker.git"},
            "file:///srv/git/caretaker.git",
            "ssh://git@git.msp.example/caretaker.git",
        ),
        (
            {"CARETAKER_GIT_REPOSITORY": "file:///srv/git/caretaker.git"},
            None,
            "file:///srv/git/caretaker.git",
        ),
        ({}, None, None),  # nothing to name: `prefect deploy` fails
    ],
)
def test_the_build_steps_name_the_repository_and_commit_or_fail(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    origin: str | None,
    expected: str | None,
) -> None:
    import subprocess

    from prefect.deployments.steps.utility import run_shell_script

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    if origin:
        git("remote", "add", "origin", origin)
    monkeypatch.delenv("CARETAKER_GIT_REPOSITORY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outputs = {}
    for build in DOCUMENT["build"]:
        step = dict(build["prefect.deployments.steps.run_shell_script"])
        step_id = step.pop("id")
        if expected is None and step_id == "caretaker-repository":
            with pytest.raises(RuntimeError, match="origin"):
                asyncio.run(run_shell_script(**step, directory=str(tmp_path)))
            return
        outputs[step_id] = asyncio.run(run_shell_script(**step, directory=str(tmp_path)))
    assert outputs["caretaker-repository"]["stdout"] == expected
    assert outputs["caretaker-commit"]["stdout"] == git("rev-parse", "HEAD")


@each_maintenance_deployment()
def test_a_maintenance_run_sends_heartbeats_often_enough_for_the_zombie_bound(
    deployment: dict[str, Any],
) -> None:
    from prefect.settings.models.flows import FlowsSettings

    from deployments.automations import ZOMBIE_AFTER

    env = deployment["work_pool"]["job_variables"]["env"]
    frequency = int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
    assert frequency == HEARTBEAT_FREQUENCY_S and frequency >= 30  # Prefect's floor
    # Three heartbeats may go missing, even at Prefect's own default (a run without our
    # setting), before a live run could be taken for dead.
    prefect_default = FlowsSettings.model_fields["heartbeat_frequency"].default
    assert ZOMBIE_AFTER.total_seconds() >= 3 * max(frequency, prefect_default)


def test_a_maintenance_run_gone_silent_is_marked_crashed_and_no_other_flows_run_is() -> None:
    from prefect.automations import ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    from deployments.automations import ZOMBIE_AFTER, zombie_run_automation

    automation = zombie_run_automation()
    trigger = automation.trigger

    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
    # Armed by each heartbeat and by each move into a state its process lives in.
    assert trigger.after == {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Running",
        "prefect.flow-run.Paused",
    }
    assert trigger.expect == {"prefect.flow-run.*"}  # a heartbeat or any state change
    assert trigger.for_each == {"prefect.resource.id"}  # each run on its own
    assert trigger.within == ZOMBIE_AFTER and trigger.threshold == 1
    related = trigger.match_related
    assert not isinstance(related, list)
    assert related.root == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": MAINTENANCE_FLOW,
    }
    (action,) = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.state == StateType.CRASHED
    assert not action.force  # a run that reached a final state stays as it ended


# --------------------------------------------------------------------------- the checker


def test_the_parameter_check_refuses_what_prefect_would_silently_ignore() -> None:
    flow = load_flow(MAINTENANCE_ENTRYPOINT)
    assert parameter_problems(flow, {"client": "acme", "dryrun": True}) == [
        "unknown parameter 'dryrun' (the flow takes: "
        + ", ".join(inspect.signature(flow.fn).parameters)
        + ")"
    ]
    assert parameter_problems(flow, {"dry_run": True}) == ["required parameter 'client' is missing"]
    assert parameter_problems(flow, {"client": "acme", "dry_run": "perhaps"})
    assert parameter_problems(flow, {"client": ["acme"]})


# --------------------------------------------------------------------------- the generator

CLIENT = """\
client:
  slug: {slug}
  name: {name}
  timezone: {timezone}
  contact: {{name: Ops, email: ops@example.com}}
  approvers: [{{name: alice, email: alice@example.com}}]
schedule:
  cadence: {cadence}
  window: {window}
defaults: {{ssh_block: test-ssh, os_family: debian}}
servers:
  - {{name: stg-1, role: staging, address: 10.0.0.1, provider: {{type: sandbox}}}}
"""


@pytest.fixture()
def two_clients(tmp_path: Path) -> Path:
    """An inventory of two clients: one quarterly, one on the first Saturday of each month."""
    directory = tmp_path / "clients"
    directory.mkdir()
    (directory / "initech.yaml").write_text(
        CLIENT.format(
            slug="initech",
            name="Initech LLC",
            timezone="America/Chicago",
            cadence="monthly",
            window='{start: "23:30", duration: 2h, weekday: sat}',
        )
    )
    (directory / "hooli.yaml").write_text(
        CLIENT.format(
            slug="hooli",
            name="Hooli Inc",
            timezone="Asia/Tokyo",
            cadence="quarterly",
            window='{start: "03:15", duration: 90m}',
        )
    )
    return directory


def test_the_generator_writes_one_deployment_per_client_with_its_schedule(
    two_clients: Path,
) -> None:
    document = yaml.safe_load(render(two_clients))
    by_name = {
        d["name"]: d for d in document["deployments"] if d["entrypoint"] == MAINTENANCE_ENTRYPOINT
    }
    assert list(by_name) == ["hooli", "initech"]
    assert by_name["hooli"]["parameters"] == {"client": "hooli"}
    assert by_name["hooli"]["schedules"] == [
        {
            "cron": "15 3 1 1,4,7,10 *",
            "timezone": "Asia/Tokyo",
            "day_or": True,
            "active": True,
            "slug": SCHEDULE_SLUG,
        }
    ]
    # The first Saturday: days 1-7 AND Saturday, which only day_or=false expresses.
    first_saturday = by_name["initech"]["schedules"][0]
    assert (first_saturday["cron"], first_saturday["day_or"]) == ("30 23 1-7 * 6", False)
    assert first_saturday["timezone"] == "America/Chicago"
    assert "Initech LLC" in by_name["initech"]["description"]
    assert by_name["initech"]["tags"] == ["caretaker", "client:initech"]


def test_the_check_fails_on_a_stale_file_and_passes_once_regenerated(
    two_clients: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "prefect.yaml"
    args = ["--inventory", str(two_clients), "-o", str(output)]
    assert main(["--check", *args]) == 1 and not output.exists()
    assert main(args) == 0
    assert main(["--check", *args]) == 0

    (two_clients / "hooli.yaml").write_text(
        (two_clients / "hooli.yaml").read_text().replace('"03:15"', '"04:00"')
    )
    capsys.readouterr()
    assert main(["--check", *args]) == 1
    diff = capsys.readouterr().out
    assert "-      - cron: 15 3 1 1,4,7,10 *" in diff
    assert "+      - cron: 0 4 1 1,4,7,10 *" in diff


def test_the_generator_refuses_an_invalid_inventory_and_writes_nothing(
    two_clients: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (two_clients / "hooli.yaml").write_text(
        (two_clients / "hooli.yaml").read_text().replace("Asia/Tokyo", "Asia/Tokio")
    )
    output = tmp_path / "prefect.yaml"
    assert main(["--inventory", str(two_clients), "-o", str(output)]) == 2
    assert not output.exists()
    assert "Asia/Tokio" in capsys.readouterr().err


def test_health_checks_run_every_five_minutes_for_every_client() -> None:
    (health,) = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/health_check.py:health_check"]
    assert health["name"] == "all" and health["parameters"] == {}
    (item,) = health["schedules"]
    assert (item["cron"], item["timezone"]) == ("*/5 * * * *", "UTC")


def test_every_client_gets_a_monthly_and_a_quarterly_report_in_its_own_time_zone() -> None:
    from prefect.server.schemas.schedules import CronSchedule

    from reports.periods import resolve_period

    inventories = load_inventory(CLIENTS)
    reports = {d["name"]: d for d in DEPLOYMENTS if d["entrypoint"] == REPORT_ENTRYPOINT}
    assert sorted(reports) == sorted(
        f"{slug}-{kind}" for slug in inventories for kind in ("monthly", "quarterly")
    )
    for slug, inventory in inventories.items():
        monthly, quarterly = reports[f"{slug}-monthly"], reports[f"{slug}-quarterly"]
        assert monthly["parameters"] == {"client": slug}
        assert quarterly["parameters"] == {"client": slug, "period": "last-quarter"}
        assert monthly["schedules"][0]["slug"] == "monthly-report"
        assert quarterly["schedules"][0]["slug"] == "quarterly-report"
        for deployment, months in ((monthly, set(range(1, 13))), (quarterly, {1, 4, 7, 10})):
            (item,) = deployment["schedules"]
            assert item["timezone"] == inventory.client.timezone
            schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"])
            runs = asyncio.run(schedule.get_dates(n=12, start=datetime(2026, 1, 1, tzinfo=UTC)))
            for run in runs:
                local = datetime.fromtimestamp(run.timestamp(), inventory.tz)
                assert local.day == 1 and local.month in months and local.hour == 6
        # What the runs report: the period that has just ended, in the client's clock.
        first_of_april = datetime(2026, 4, 1, 6, 0, tzinfo=inventory.tz)
        assert resolve_period(None, inventory.tz, first_of_april).label == "2026-03"
        assert resolve_period("last-quarter", inventory.tz, first_of_april).label == "2026-Q1"


def test_every_client_gets_a_monthly_security_audit_in_its_own_time_zone() -> None:
    from prefect.server.schemas.schedules import CronSchedule

    inventories = load_inventory(CLIENTS)
    audits = {
        d["name"]: d
        for d in DEPLOYMENTS
        if d["entrypoint"] == "flows/security_audit.py:security_audit"
    }
    assert sorted(audits) == sorted(inventories)
    for slug, inventory in inventories.items():
        audit = audits[slug]
        assert audit["parameters"] == {"client": slug}
        assert "security" in audit["tags"] and f"client:{slug}" in audit["tags"]
        (item,) = audit["schedules"]
        assert (item["slug"], item["timezone"]) == (
            "monthly-security-audit",
            inventory.client.timezone,
        )
        schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"])
        runs = asyncio.run(schedule.get_dates(n=3, start=datetime(2026, 1, 1, tzinfo=UTC)))
        for run in runs:
            local = datetime.fromtimestamp(run.timestamp(), inventory.tz)
            assert (local.day, local.hour, local.minute) == (15, 5, 0)
