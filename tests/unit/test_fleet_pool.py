"""The fleet's work pool: what every run gets from it, and what is refused (pure parts)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from core.errors import ConfigError
from deployments.fleet import RUN_COMMAND, base_job_template, main, pool_env

PG = "postgresql+psycopg://caretaker@db.internal:5432/caretaker"


def test_the_pool_env_names_the_store_and_turns_telemetry_off() -> None:
    assert pool_env(PG, ["CARETAKER_APPROVAL_POLL_S=5", "PREFECT_LOGGING_LEVEL=DEBUG"]) == {
        "CARETAKER_HISTORY_STORE_URL": PG,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "CARETAKER_APPROVAL_POLL_S": "5",
        "PREFECT_LOGGING_LEVEL": "DEBUG",
    }


def test_a_value_may_hold_an_equals_sign() -> None:
    assert pool_env(PG, ["CARETAKER_X=a=b"])["CARETAKER_X"] == "a=b"


@pytest.mark.parametrize(
    ("url", "sets", "match"),
    [
        ("sqlite:////var/lib/caretaker/caretaker.db", [], "one machine's"),
        ("sqlite+pysqlite:///caretaker.db", [], "one machine's"),
        ("postgresql+psycopg://caretaker:s3cret@db/caretaker", [], "holds a password"),
        ("not a url", [], "not a database URL"),
        (PG, ["CARETAKER_APPROVAL_POLL_S"], "NAME=value"),
        (PG, ["lower_case=1"], "NAME=value"),
        (PG, ["=1"], "NAME=value"),
    ],
)
def test_what_the_pool_refuses(url: str, sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        pool_env(url, sets)
    assert "s3cret" not in str(caught.value)


def test_the_template_keeps_prefects_default_and_sets_the_env_and_command_defaults() -> None:
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    template = base_job_template({"A": "1"}, default)

    assert template["variables"]["properties"]["env"]["default"] == {"A": "1"}
    assert template["variables"]["properties"]["command"]["default"] == RUN_COMMAND
    assert template["job_configuration"] == default["job_configuration"]
    assert "default" not in default["variables"]["properties"]["env"]  # not changed in place
    assert default["variables"]["properties"]["command"]["default"] is None
    prefects = base_job_template({"A": "1"}, default, command=None)
    assert (
        prefects["variables"]["properties"]["command"]
        == default["variables"]["properties"]["command"]
    )


def test_the_run_command_is_what_prefects_process_worker_will_run() -> None:
    """A configured command replaces ``python -m prefect.engine`` (Prefect 3.9's
    ``ProcessJobConfiguration``): the client module, started as the worker starts it."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    template = base_job_template({}, ProcessWorker.get_default_base_job_template())
    config = ProcessJobConfiguration(
        command=template["variables"]["properties"]["command"]["default"]
    )
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4()))
    assert config.command == RUN_COMMAND and config._command_configured


def test_the_command_refuses_a_sqlite_store_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pool", "--store-url", "sqlite:////tmp/caretaker.db"]) == 2
    assert "one machine's" in capsys.readouterr().err
