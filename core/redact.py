"""Masking credentials in every text that leaves the process.

Defence in depth: details come from command output and provider errors, and they reach
the Prefect UI, the history store and stakeholders. Credentials in URLs, key=value
secrets and private keys are masked by this one function at each way out: the run's
logs (:mod:`core.logs`, a filter on the log handlers), the final state's message
(``flows/server_maintenance.py``), the stored change record (``history/records.py``,
:func:`redact_json`), artifacts (``tasks/record_markdown.py``), notices and their errors
(``tasks/notify.py``). Every layer may need it, so it lives in core.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact", "redact_json"]

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(?P<key>[a-z0-9_-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
    r"[a-z0-9_-]*)(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)


def redact(text: str) -> str:
    """Mask credentials in ``text``: URL user info, ``password=...``-like pairs, private keys.

    Args:
        text: any text bound for a person (artifact, notice).

    Returns:
        The text with secrets replaced by ``***``.
    """
    text = _PRIVATE_KEY.sub("***private key***", text)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m['key']}{m['sep']}***", text)


def redact_json(value: Any) -> Any:
    """:func:`redact` every string inside a JSON-like value (dicts, lists, strings).

    Keys are kept (they are field names); numbers, booleans and None pass unchanged.

    Args:
        value: e.g. a pydantic model's ``model_dump(mode="json")``.

    Returns:
        A copy with every string value redacted.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(item) for item in value]
    return value
