"""The hygiene policy of a client: malware scan, unnecessary software, unused services, log
review and stress test settings (the policy's software-maintenance, testing, monitoring and
security clauses the package plan does not cover).

Every part has defaults, so an inventory that says nothing about hygiene stays valid: the
malware scan and the log review run read-only, nothing is removed or disabled unless the
inventory names it, and no server is stress-tested unless ``stress.enabled`` is set.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, StrictBool, StrictInt, model_validator

from inventory.base import Model, duplicates, fail
from inventory.types import Duration, PackageName


def _no_parent(path: str) -> str:
    if ".." in path.split("/"):
        raise fail(f"path {path!r} has a '..' part", "an absolute path without '..'")
    return path


#: An absolute path the malware scan reads (passed to clamscan quoted; no '..').
ScanPath = Annotated[
    str,
    Field(
        pattern=r"^/[A-Za-z0-9._@+/-]*$",
        max_length=255,
        description="An absolute path: letters, digits, '.', '_', '@', '+', '-' and '/'.",
    ),
    AfterValidator(_no_parent),
]
ScanTime = Annotated[timedelta, Duration(timedelta(hours=6))]
SignatureAge = Annotated[timedelta, Duration(timedelta(days=90))]
LogLookback = Annotated[timedelta, Duration(timedelta(days=366))]

#: How critical a server is to the client's business; the rollout patches the least
#: critical production servers first.
Criticality = Literal["low", "medium", "high", "critical"]
CRITICALITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}


class MalwareScan(Model):
    """ClamAV over the given paths, niced and bounded in time."""

    enabled: StrictBool = Field(
        default=True, description="Scan in every maintenance run and every security audit."
    )
    paths: tuple[ScanPath, ...] = Field(
        default=("/home", "/root", "/tmp", "/srv", "/var/www", "/opt"),
        min_length=1,
        description="Absolute paths scanned recursively (missing ones are skipped).",
    )
    max_time: ScanTime = Field(
        default=timedelta(minutes=10),
        json_schema_extra={"default": "10m"},
        description="The scan is stopped after this long (a finding), at most 6h.",
    )
    signatures_max_age: SignatureAge = Field(
        default=timedelta(days=7),
        json_schema_extra={"default": "7d"},
        description="Signatures older than this (freshclam not updating) are a finding.",
    )
    database: ScanPath | None = Field(
        default=None,
        description=(
            "Signature folder or file to scan with; default: the distribution's"
            " (/var/lib/clamav, kept current by freshclam)."
        ),
    )

    @model_validator(mode="after")
    def _paths_are_unique(self) -> Self:
        for index, path in duplicates(self.paths):
            raise fail(
                f"path {path!r} is listed more than once", "each path once", ("paths", index)
            )
        return self


class SoftwarePolicy(Model):
    """Unnecessary software: removed only in an approved change, after the plan showed it."""

    autoremove: StrictBool = Field(
        default=True,
        description="Remove what apt-get autoremove would (packages nothing needs any more).",
    )
    unwanted: tuple[PackageName, ...] = Field(
        default=(), description="Packages that must not be installed (removed when found)."
    )

    @model_validator(mode="after")
    def _unwanted_are_unique(self) -> Self:
        for index, name in duplicates(self.unwanted):
            raise fail(
                f"package {name!r} is listed more than once",
                "each package once",
                ("unwanted", index),
            )
        return self


class ServicePolicy(Model):
    """Enabled services outside a server's ``allowed_services``."""

    disable_unused: StrictBool = Field(
        default=False,
        description=(
            "Disable (systemctl disable --now) enabled services not in the server's"
            " allowed_services, in the approved change; otherwise they are findings only."
        ),
    )


class LogReviewPolicy(Model):
    """What in the journal since the last maintenance is a finding."""

    max_unit_errors: StrictInt = Field(
        default=50, ge=0, le=1_000_000, description="Error lines (priority err and worse) per unit."
    )
    max_kernel_errors: StrictInt = Field(
        default=0, ge=0, le=1_000_000, description="Kernel OOM kills and I/O errors."
    )
    max_auth_failures: StrictInt = Field(
        default=20, ge=0, le=1_000_000, description="Failed SSH logins."
    )
    lookback: LogLookback = Field(
        default=timedelta(days=31),
        json_schema_extra={"default": "31d"},
        description="Read at most this far back (when the last maintenance is older or unknown).",
    )


class StressTest(Model):
    """stress-ng after patching, bounded; on staging, and on production only if allowed."""

    enabled: StrictBool = Field(
        default=False, description="Stress-test staging servers after they are patched."
    )
    seconds: StrictInt = Field(default=60, ge=1, le=3600, description="Length of the test.")
    cpu: StrictInt = Field(default=1, ge=0, le=256, description="CPU workers (0: none).")
    vm: StrictInt = Field(default=1, ge=0, le=256, description="Memory workers (0: none).")
    vm_percent: StrictInt = Field(
        default=25, ge=1, le=90, description="Memory the memory workers use together, % of RAM."
    )
    io: StrictInt = Field(default=1, ge=0, le=256, description="I/O (sync) workers (0: none).")
    allow_production: StrictBool = Field(
        default=False, description="Also stress production servers after their batch is patched."
    )
    max_load_per_cpu: float = Field(
        default=4.0, gt=0, le=100, description="Load average per CPU after the test; above fails."
    )

    @model_validator(mode="after")
    def _some_workers(self) -> Self:
        if self.cpu + self.vm + self.io == 0:
            raise fail(
                "stress test with no workers", "at least one of cpu, vm, io above 0", ("cpu",)
            )
        return self


class Hygiene(Model):
    """The hygiene steps of each maintenance run and security audit."""

    malware: MalwareScan = Field(default_factory=MalwareScan, description="Malware scan.")
    software: SoftwarePolicy = Field(
        default_factory=SoftwarePolicy, description="Unnecessary software."
    )
    services: ServicePolicy = Field(default_factory=ServicePolicy, description="Unused services.")
    log_review: LogReviewPolicy = Field(
        default_factory=LogReviewPolicy, description="Log review thresholds."
    )
    stress: StressTest = Field(default_factory=StressTest, description="Stress test.")
