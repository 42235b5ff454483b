"""Verification of hosts after patching: their facts, checked by a great-expectations suite.

- ``tasks.verify.frame``: ``facts_frame``, hosts' facts as one row per server;
- ``tasks.verify.suite``: the settings, the suite (``build_suite``), ``verify_facts`` and
  the ``validate_host_facts`` task, and the report models.

The public names are re-exported here (``from tasks.verify import validate_host_facts``).
Every expectation, its threshold and what its failure means are in
``docs/verification.md``.
"""

from __future__ import annotations

from tasks.verify.frame import FRAME_COLUMNS, facts_frame
from tasks.verify.suite import (
    EXPECTATION_NAMES,
    ExpectationOutcome,
    HostVerificationSettings,
    ServerVerification,
    VerificationReport,
    build_suite,
    validate_host_facts,
    verification_settings,
    verify_facts,
)

__all__ = [
    "EXPECTATION_NAMES",
    "FRAME_COLUMNS",
    "ExpectationOutcome",
    "HostVerificationSettings",
    "ServerVerification",
    "VerificationReport",
    "build_suite",
    "facts_frame",
    "validate_host_facts",
    "verification_settings",
    "verify_facts",
]
