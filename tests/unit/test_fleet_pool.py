"""The fleet's work pool: what every run gets from it, and what is refused (pure parts)."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from deployments.fleet import base_job_template, main, pool_env

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


def test_the_template_keeps_prefects_default_and_only_sets_the_env_default() -> None:
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    template = base_job_template({"A": "1"}, default)

    assert template["variables"]["properties"]["env"]["default"] == {"A": "1"}
    assert template["job_configuration"] == default["job_configuration"]
    assert "default" not in default["variables"]["properties"]["env"]  # not changed in place


def test_the_command_refuses_a_sqlite_store_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pool", "--store-url", "sqlite:////tmp/caretaker.db"]) == 2
    assert "one machine's" in capsys.readouterr().err
