"""Masking credentials in text bound for a person (artifacts, notices, change records).

Defence in depth: details come from command output and provider errors, and the record
goes to the Prefect UI and to stakeholders. Credentials in URLs and key=value secrets
are masked wherever such text is rendered. Every layer may need it, so it lives in core.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

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
