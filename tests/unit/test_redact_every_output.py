"""Every text that leaves the process is masked by one function: logs, JSON bodies.

The run's logs are masked by a filter on the log handlers (:mod:`core.logs`); the
stored change record by :func:`core.redact.redact_json`. The end-to-end scan of a
real run's outputs is ``tests/integration/test_redaction.py``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from core.logs import RedactingFilter, redact_logs
from core.redact import redact_json

SECRET = "hunter2-planted"


@pytest.fixture
def handler() -> Iterator[logging.Handler]:
    """A handler on a logger of its own, as Prefect's configuration would attach one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("prefect.caretaker-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def text_of(handler: logging.Handler) -> str:
    assert isinstance(handler, logging.StreamHandler)
    return str(handler.stream.getvalue())


def test_a_secret_in_a_log_line_reaches_no_handler(handler: logging.Handler) -> None:
    redact_logs()
    logger = logging.getLogger("prefect.caretaker-test")

    logger.info("postinst said: DB_PASSWORD=%s", SECRET)
    logger.warning("mirror https://deploy:%s@apt.example/debian failed", SECRET)

    text = text_of(handler)
    assert SECRET not in text
    assert "DB_PASSWORD=***" in text and "https://***@apt.example/debian" in text


def test_a_secret_in_a_traceback_reaches_no_handler(handler: logging.Handler) -> None:
    redact_logs()
    logger = logging.getLogger("prefect.caretaker-test")

    try:
        raise RuntimeError(f"provider said token={SECRET}")
    except RuntimeError:
        logger.exception("snapshot failed")

    text = text_of(handler)
    assert SECRET not in text
    assert "RuntimeError: provider said token=***" in text


def test_a_line_without_secrets_is_left_as_it_was(handler: logging.Handler) -> None:
    redact_logs()

    logging.getLogger("prefect.caretaker-test").info("patched %d host(s)", 2)

    assert text_of(handler) == "patched 2 host(s)\n"


def test_the_filter_is_installed_once_per_handler(handler: logging.Handler) -> None:
    redact_logs()
    redact_logs()

    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_every_string_of_a_json_body_is_masked_and_nothing_else_changes() -> None:
    body = {
        "client": "acme",
        "count": 3,
        "ok": True,
        "none": None,
        "hosts": [{"detail": f"apt said password={SECRET}", "password": "field name kept"}],
        "notice_error": f"https://hooks:{SECRET}@chat.example/hook: 500",
    }

    masked = redact_json(body)

    assert SECRET not in repr(masked)
    assert masked["client"] == "acme" and masked["count"] == 3 and masked["ok"] is True
    assert masked["none"] is None
    assert masked["hosts"][0] == {"detail": "apt said password=***", "password": "field name kept"}


@pytest.mark.parametrize(
    "module",
    [
        "flows.server_maintenance",
        "flows.health_check",
        "flows.security_audit",
        "flows.maintenance_report",
    ],
)
def test_every_flow_masks_its_logs_before_it_does_anything(module: str) -> None:
    import importlib
    import inspect

    from prefect import Flow

    flows = [f for f in vars(importlib.import_module(module)).values() if isinstance(f, Flow)]
    assert flows, f"{module} defines no flow"
    for found in flows:
        body = inspect.getsource(found.fn).split('"""')[2]  # after the docstring
        first_call = body.strip().splitlines()[0]
        assert first_call.startswith("redact_logs()"), (found.name, first_call)
