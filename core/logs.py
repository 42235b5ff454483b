"""The run's logs pass the same redaction as every other text that leaves the process.

A log line reaches the Prefect API (``APILogHandler``), the console and any other
handler Prefect's logging configuration set up; a command's output or a provider's
error quoted in it may carry a password. :func:`redact_logs` puts one
:class:`RedactingFilter` on every handler of the root logger and of Prefect's loggers,
so each record is masked (:func:`core.redact.redact`: message, traceback, stack) once,
before any handler formats it. A filter on a *handler* sees the records that propagate
to it from every logger (caretaker's modules, ``get_run_logger()``, Prefect's engine);
a filter on a logger would only see that logger's own records.

Why at flow start and not a logging file (``PREFECT_LOGGING_SETTINGS_PATH``): the file
would have to be copied from Prefect's and set in every worker's environment, and a
process without it would log in clear. The flow installs the filter itself, after
Prefect configured its logging, so wherever the flow runs its logs are masked.

The same call sends caretaker's **module loggers** (``logging.getLogger(__name__)`` in
``tasks``, ``history``...: package changes, reboots, snapshot waits) to the flow run's logs
in the UI (:func:`logs_to_run`): what ``PREFECT_LOGGING_EXTRA_LOGGERS`` does, plus the
level (an extra logger keeps the root's WARNING, so its INFO lines would never be sent),
and without a setting each worker's environment must carry.

:func:`quiet_console` drops Prefect's per-task "Finished in state Completed()" lines from
a console (the demo's); they still reach the API: the filter is on the console handlers.
"""

from __future__ import annotations

import logging

from core.redact import redact

__all__ = [
    "CARETAKER_LOGGERS",
    "QuietTaskRuns",
    "RedactingFilter",
    "logs_to_run",
    "quiet_console",
    "redact_logs",
]

#: caretaker's packages whose module loggers reach the run's logs (the API).
CARETAKER_LOGGERS = ("core", "inventory", "blocks", "history", "tasks", "reports", "flows")


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's message, traceback and stack; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place (every handler after this one sees the masked text)."""
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        # Formatters print exc_text when it is set; the exception itself (whose message
        # may hold the secret) is dropped, so none can format it again in clear.
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


class _InRun(logging.Filter):
    """Passes a record only inside a flow or task run (where the API handler can place
    it); elsewhere Prefect's handler would warn about a log without a flow run id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_run_id", None):
            return True
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def logs_to_run(level: int = logging.INFO) -> list[logging.Handler]:
    """Send caretaker's module loggers' records, ``level`` and above, to the run's logs.

    Each of :data:`CARETAKER_LOGGERS` gets one Prefect ``APILogHandler`` (records outside
    a run are not sent) and at least ``level``. Idempotent.

    Returns:
        The API handlers added now.
    """
    from prefect.logging.handlers import APILogHandler

    added: list[logging.Handler] = []
    for name in CARETAKER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            handler = APILogHandler()
            handler.addFilter(_InRun())
            logger.addHandler(handler)
            added.append(handler)
    return added


class QuietTaskRuns(logging.Filter):
    """Drops Prefect's per-task "Finished in state Completed()" line (INFO, from
    ``prefect.task_runs``); every other line, and every other state, passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "prefect.task_runs"
            and record.levelno <= logging.INFO
            and str(record.msg).startswith("Finished in state Completed(")
        )


def quiet_console() -> int:
    """Put :class:`QuietTaskRuns` on the root logger's handlers (the console): the lines
    still reach the API, whose handler sits on ``prefect.task_runs`` itself. Idempotent.

    Returns:
        How many handlers were given the filter now.
    """
    added = 0
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, QuietTaskRuns) for f in handler.filters):
            handler.addFilter(QuietTaskRuns())
            added += 1
    return added


def redact_logs() -> int:
    """Put the redacting filter on every handler of the root logger, Prefect's loggers and
    caretaker's, after sending caretaker's module loggers to the run (:func:`logs_to_run`).

    Idempotent: a handler that has it is left alone. Call it after Prefect has set up its
    logging (at the start of a flow run).

    Returns:
        How many handlers were given the filter now.
    """
    logs_to_run()
    loggers = (
        [logging.getLogger()]
        + [logging.getLogger(n) for n in CARETAKER_LOGGERS]
        + [
            logger
            for name, logger in list(logging.root.manager.loggerDict.items())
            if isinstance(logger, logging.Logger)
            and (name == "prefect" or name.startswith("prefect."))
        ]
    )
    added = 0
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_FILTER)
                added += 1
    return added
