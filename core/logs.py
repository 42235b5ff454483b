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
"""

from __future__ import annotations

import logging

from core.redact import redact

__all__ = ["RedactingFilter", "redact_logs"]


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


def redact_logs() -> int:
    """Put the redacting filter on every handler of the root logger and Prefect's loggers.

    Idempotent: a handler that has it is left alone. Call it after Prefect has set up its
    logging (at the start of a flow run).

    Returns:
        How many handlers were given the filter now.
    """
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and (name == "prefect" or name.startswith("prefect."))
    ]
    added = 0
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_FILTER)
                added += 1
    return added
