"""The client inventory: what ``clients/<slug>.yaml`` may say, and how it is read.

One YAML file per client describes who the client is (slug, time zone, approvers,
notification blocks), when maintenance happens (cadence and window), how changes roll
out, the patch, restore-test and snapshot policies, and the servers with their SSH
access, snapshot provider, health checks and allowed listening ports.

This module holds:

* the pydantic models (:class:`ClientInventory` and its parts), frozen and strict about
  unknown keys; every identifier that could ever reach a remote shell (host, user,
  package, systemd unit, block names) is checked against a strict allow-list;
* the loader (:func:`load_client`, :func:`load_inventory`, :func:`load_client_by_slug`)
  which turns any problem into an :class:`~core.errors.InventoryError` whose lines read
  ``<file>:<line>: <field path>: <what is wrong> (allowed: <what is allowed>)``;
* pure helpers used by flows and reports (maintenance windows, cron expressions,
  block references);
* a small CLI: ``python -m inventory check clients/*.yaml`` and
  ``python -m inventory schema -o docs/inventory.schema.json``.

The loader is offline: it never talks to Prefect. Whether the referenced blocks exist
is checked by :func:`check_block_references`, which preflight calls with the block
names it read from the Prefect API.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import ipaddress
import json
import re
import sys
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from uuid import UUID

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.errors import InventoryError

__all__ = [
    "BLOCK_KINDS",
    "Approver",
    "AwsProvider",
    "Check",
    "Client",
    "ClientInventory",
    "Contact",
    "HttpCheck",
    "JumpHost",
    "MaintenanceWindow",
    "NoProvider",
    "PatchPolicy",
    "Provider",
    "RackspaceProvider",
    "RestoreTest",
    "Rollout",
    "SandboxProvider",
    "Schedule",
    "Server",
    "ServerDefaults",
    "SnapshotPolicy",
    "SystemdCheck",
    "TcpCheck",
    "check_block_references",
    "format_duration",
    "inventory_json_schema",
    "load_client",
    "load_client_by_slug",
    "load_inventory",
    "main",
    "parse_duration",
    "schema_json",
    "select_servers",
]

#: Kinds of Prefect blocks an inventory refers to (keys of :meth:`ClientInventory.block_names`).
BLOCK_KINDS: tuple[str, ...] = ("ssh", "aws", "rackspace", "notify")

#: Keys of ``defaults`` that are copied into every server that does not set them itself.
DEFAULTABLE_KEYS: tuple[str, ...] = (
    "ssh_block",
    "user",
    "port",
    "os_family",
    "jump",
    "checks",
    "allowed_ports",
)

#: Inventory files larger than this are refused (they are a few kB in practice).
MAX_FILE_BYTES = 1024 * 1024

_ERROR_TYPE = "caretaker"


# --------------------------------------------------------------------------- errors


def _fail(message: str, allowed: str | None = None, at: tuple[str | int, ...] = ()) -> Exception:
    """Build the validation error our validators raise.

    The message travels in the error context (not in the template) so braces in user
    input cannot break formatting. ``allowed`` becomes the ``(allowed: ...)`` hint and
    ``at`` refines the location below the model that raised it (for cross-field rules).
    """
    context: dict[str, Any] = {"message": message}
    if allowed:
        context["allowed"] = allowed
    if at:
        context["at"] = at
    return PydanticCustomError(_ERROR_TYPE, "{message}", context)


def _char_list(chars: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in chars)


def _identifier(
    what: str, pattern: str, charset: str, allowed: str, max_length: int
) -> Callable[[str], str]:
    """A validator for a shell-safe identifier.

    Args:
        what: what the value is, for messages ("user name").
        pattern: the full regular expression the value must match.
        charset: a regex character class body listing the allowed characters; anything
            else is reported by name (so ``;``, ``$(``, backticks, spaces are called out).
        allowed: the human description of what is allowed.
        max_length: the maximum length.
    """
    regex = re.compile(pattern)
    forbidden = re.compile(f"[^{charset}]")

    def check(value: str) -> str:
        if regex.fullmatch(value) and len(value) <= max_length:
            return value
        bad = sorted(set(forbidden.findall(value)))
        if bad:
            raise _fail(
                f"{what} {value!r} contains characters that are not allowed: {_char_list(bad)}",
                allowed,
            )
        if len(value) > max_length:
            raise _fail(f"{what} {value!r} is longer than {max_length} characters", allowed)
        raise _fail(f"{what} {value!r} is not valid", allowed)

    return check


def _string_schema(pattern: str, max_length: int | None = None) -> WithJsonSchema:
    schema: dict[str, Any] = {"type": "string", "pattern": pattern}
    if max_length is not None:
        schema["maxLength"] = max_length
    return WithJsonSchema(schema)


# --------------------------------------------------------------------------- constrained types

_SLUG_RE = r"^[a-z][a-z0-9-]{1,31}$"
_SLUG_ALLOWED = "2-32 characters: lowercase letters, digits and '-', starting with a letter"
Slug = Annotated[
    str,
    AfterValidator(_identifier("slug", _SLUG_RE, "a-z0-9-", _SLUG_ALLOWED, 32)),
    _string_schema(_SLUG_RE, 32),
]

_BLOCK_RE = r"^[a-z0-9][a-z0-9-]*$"
_BLOCK_ALLOWED = (
    "a Prefect block name: lowercase letters, digits and '-', starting with a letter or digit"
)
BlockName = Annotated[
    str,
    AfterValidator(_identifier("block name", _BLOCK_RE, "a-z0-9-", _BLOCK_ALLOWED, 128)),
    _string_schema(_BLOCK_RE, 128),
]

_SERVER_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
_SERVER_ALLOWED = (
    "1-63 characters: lowercase letters, digits and '-', starting with a letter or digit"
)
ServerName = Annotated[
    str,
    AfterValidator(_identifier("server name", _SERVER_RE, "a-z0-9-", _SERVER_ALLOWED, 63)),
    _string_schema(_SERVER_RE, 63),
]

_APPROVER_RE = r"^[a-z][a-z0-9._-]*$"
_APPROVER_ALLOWED = (
    "lowercase letters, digits, '.', '_' and '-', starting with a letter; at most 64"
)
ApproverName = Annotated[
    str,
    AfterValidator(_identifier("approver name", _APPROVER_RE, "a-z0-9._-", _APPROVER_ALLOWED, 64)),
    _string_schema(_APPROVER_RE, 64),
]

_USER_RE = r"^[a-z_][a-z0-9_-]{0,31}$"
_USER_ALLOWED = (
    "a POSIX user name: lowercase letters, digits, '_' and '-', starting with a letter or '_';"
    " at most 32 characters"
)
UnixUser = Annotated[
    str,
    AfterValidator(_identifier("user name", _USER_RE, "a-z0-9_-", _USER_ALLOWED, 32)),
    _string_schema(_USER_RE, 32),
]

# Debian package names are lowercase; RHEL ones may carry capitals and '_'
# (NetworkManager, python3-PyYAML), so both are allowed. None of these is special to a shell.
_PACKAGE_RE = r"^[A-Za-z0-9][A-Za-z0-9_+.-]*$"
_PACKAGE_ALLOWED = "letters, digits, '+', '.', '_' and '-', starting with a letter or digit"
PackageName = Annotated[
    str,
    AfterValidator(
        _identifier("package name", _PACKAGE_RE, "A-Za-z0-9_+.-", _PACKAGE_ALLOWED, 128)
    ),
    _string_schema(_PACKAGE_RE, 128),
]

# A leading '-' would read as an option to systemctl, so the first character is alphanumeric.
_UNIT_RE = r"^[A-Za-z0-9][A-Za-z0-9@._:-]*$"
_UNIT_ALLOWED = (
    "a systemd unit name: letters, digits, '@', '.', '_', ':' and '-',"
    " starting with a letter or digit"
)
UnitName = Annotated[
    str,
    AfterValidator(_identifier("unit name", _UNIT_RE, "A-Za-z0-9@._:-", _UNIT_ALLOWED, 255)),
    _string_schema(_UNIT_RE, 255),
]

_AWS_REGION_RE = r"^[a-z]{2}(-[a-z]+)+-\d$"
_AWS_REGION_ALLOWED = "an AWS region code such as eu-west-1 or us-east-2"
AwsRegion = Annotated[
    str,
    AfterValidator(_identifier("AWS region", _AWS_REGION_RE, "a-z0-9-", _AWS_REGION_ALLOWED, 32)),
    _string_schema(_AWS_REGION_RE, 32),
]

_INSTANCE_ID_RE = r"^i-[0-9a-f]{8,17}$"
_INSTANCE_ID_ALLOWED = "'i-' followed by 8 to 17 lowercase hex digits, e.g. i-0abc12345def67890"
InstanceId = Annotated[
    str,
    AfterValidator(
        _identifier("instance id", _INSTANCE_ID_RE, "a-z0-9-", _INSTANCE_ID_ALLOWED, 19)
    ),
    _string_schema(_INSTANCE_ID_RE, 19),
]

_RACKSPACE_REGION_RE = r"^[A-Z]{3}$"
_RACKSPACE_REGION_ALLOWED = (
    "a Rackspace region code: three capital letters (DFW, ORD, IAD, LON, SYD, HKG)"
)
RackspaceRegion = Annotated[
    str,
    AfterValidator(
        _identifier("Rackspace region", _RACKSPACE_REGION_RE, "A-Z", _RACKSPACE_REGION_ALLOWED, 3)
    ),
    _string_schema(_RACKSPACE_REGION_RE, 3),
]


def _single_line(value: str) -> str:
    bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise _fail(
            f"text contains control characters: {_char_list(bad)}",
            "a single line of printable text",
        )
    return value


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_single_line),
]
Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=10, max_length=500),
    AfterValidator(_single_line),
]
TagValue = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_single_line),
]

_EMAIL_RE = (
    r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
Email = Annotated[
    str,
    AfterValidator(
        _identifier(
            "email address",
            _EMAIL_RE,
            "A-Za-z0-9._%+@-",
            "an email address such as ops@example.com",
            254,
        )
    ),
    WithJsonSchema({"type": "string", "format": "email", "pattern": _EMAIL_RE, "maxLength": 254}),
]

# ---- host addresses

_ADDRESS_FORBIDDEN = re.compile(r"[^A-Za-z0-9.:-]")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDRESS_ALLOWED = (
    "an IPv4 or IPv6 literal, or a DNS host name: letters, digits, '-' and '.' (IPv6 also ':')"
)


def _host_problem(value: str) -> str | None:
    """Why ``value`` is not an IP literal or DNS host name, or None if it is one."""
    bad = sorted(set(_ADDRESS_FORBIDDEN.findall(value)))
    if bad:
        return f"contains characters that are not allowed: {_char_list(bad)}"
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return "is not a valid IPv6 address"
        return None
    labels = value.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return "is not a valid IPv4 address"
        return None
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return (
            "is not a valid DNS host name (labels of 1-63 letters, digits and '-', joined by '.')"
        )
    return None


def _check_address(value: str) -> str:
    problem = _host_problem(value)
    if problem:
        raise _fail(f"address {value!r} {problem}", _ADDRESS_ALLOWED)
    return value


Address = Annotated[
    str,
    AfterValidator(_check_address),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9.:-]+$", "maxLength": 253}),
]

_URL_FORBIDDEN = re.compile(r"[\s\"'`\\<>{}|^\x00-\x1f\x7f]")
_URL_ALLOWED = "an http:// or https:// URL without spaces, quotes, backticks, backslashes or <>{}|^"


def _check_url(value: str) -> str:
    bad = sorted(set(_URL_FORBIDDEN.findall(value)))
    if bad:
        raise _fail(
            f"URL {value!r} contains characters that are not allowed: {_char_list(bad)}",
            _URL_ALLOWED,
        )
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise _fail(f"URL {value!r} must start with http:// or https://", _URL_ALLOWED)
    try:
        port = parts.port
    except ValueError:
        raise _fail(f"URL {value!r} has an invalid port", "a port in 1..65535") from None
    if port == 0:
        raise _fail(f"URL {value!r} has an invalid port", "a port in 1..65535")
    host = parts.hostname or ""
    problem = _host_problem(host) if host else "is missing"
    if problem:
        raise _fail(f"URL {value!r}: host {host!r} {problem}", _URL_ALLOWED)
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(_check_url),
    WithJsonSchema(
        {"type": "string", "pattern": r"^https?://[^\s\"'`\\<>{}|^]+$", "maxLength": 2048}
    ),
]

# Strict: YAML gives real ints and bools; `port: true` must not become port 1.
Port = Annotated[StrictInt, Field(ge=1, le=65535)]

# ---- time zones


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(value: str) -> str:
    zones = _timezones()
    known = value in zones if zones else True
    if known:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            known = False
    if not known:
        close = difflib.get_close_matches(value, sorted(zones), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _fail(
            f"unknown time zone {value!r}{hint}",
            "an IANA time zone name such as Europe/London, America/New_York or UTC",
        )
    return value


TimeZoneName = Annotated[
    str,
    AfterValidator(_check_timezone),
    WithJsonSchema({"type": "string", "examples": ["Europe/London"]}),
]

# ---- durations

_DURATION_RE = re.compile(r"(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_DURATION_ALLOWED = (
    "a whole number of seconds, or a string such as '45s', '90m', '4h', '1d', '1h30m'"
)


def parse_duration(value: object) -> timedelta:
    """Read a duration as written in an inventory.

    Args:
        value: an int (seconds), a string such as ``"90m"``, ``"4h"``, ``"1d"``,
            ``"1h30m"``, ``"45s"`` or ``"300"``, or a ``timedelta``.

    Returns:
        The duration.

    Raises:
        pydantic_core.PydanticCustomError: the value is not a duration (a ``ValueError``).
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return timedelta(seconds=int(text))
        match = _DURATION_RE.fullmatch(text)
        if match:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise _fail(f"{value!r} is not a duration", _DURATION_ALLOWED)


def format_duration(value: timedelta) -> str:
    """Write a duration the way inventories spell it: ``timedelta(minutes=90)`` -> ``"1h30m"``."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    sign, total = ("-", -total) if total < 0 else ("", total)
    parts = []
    # Days only from 48h on: "25h" reads better than "1d1h".
    units = (
        (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
        if total >= 172800
        else (("h", 3600), ("m", 60), ("s", 1))
    )
    for unit, size in units:
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def _duration_bounds(maximum: timedelta) -> Callable[[timedelta], timedelta]:
    allowed = f"more than 0s and at most {format_duration(maximum)}; {_DURATION_ALLOWED}"

    def check(value: timedelta) -> timedelta:
        if value.microseconds:
            raise _fail(f"duration {value} is not a whole number of seconds", allowed)
        if value <= timedelta(0):
            raise _fail(f"duration {format_duration(value)} must be positive", allowed)
        if value > maximum:
            raise _fail(
                f"duration {format_duration(value)} is longer than {format_duration(maximum)}",
                allowed,
            )
        return value

    return check


_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^(\d+|(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$"},
            {"type": "integer", "minimum": 1},
        ]
    }
)
_DURATION_SERIALIZER = PlainSerializer(format_duration, return_type=str, when_used="json")

WindowDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_duration_bounds(timedelta(hours=24))),
    _DURATION_SERIALIZER,
    _DURATION_SCHEMA,
]
ApprovalTimeout = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_duration_bounds(timedelta(days=7))),
    _DURATION_SERIALIZER,
    _DURATION_SCHEMA,
]
RestoreTimeout = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_duration_bounds(timedelta(hours=24))),
    _DURATION_SERIALIZER,
    _DURATION_SCHEMA,
]
CheckTimeout = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_duration_bounds(timedelta(minutes=5))),
    _DURATION_SERIALIZER,
    _DURATION_SCHEMA,
]

# ---- clock times

_CLOCK_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_CLOCK_ALLOWED = 'HH:MM on a 24-hour clock, 00:00..23:59, e.g. "02:00"'


def _parse_clock(value: object) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        match = _CLOCK_RE.fullmatch(value.strip())
        if match:
            return time(int(match.group(1)), int(match.group(2)))
    raise _fail(f"{value!r} is not a time of day", _CLOCK_ALLOWED)


def _format_clock(value: time) -> str:
    return value.strftime("%H:%M")


ClockTime = Annotated[
    time,
    BeforeValidator(_parse_clock),
    PlainSerializer(_format_clock, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"}),
]

# ---- cron expressions

_MONTH_NAMES = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DOW_NAMES = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DOW_NAMES),
)
_CRON_ALLOWED = (
    "5 fields 'minute hour day-of-month month day-of-week', each '*', a number, a range a-b,"
    " a list a,b and an optional step /n; month and day names (jan, mon) allowed"
)


def _cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a plain 5-field cron expression, or None if it is one."""
    fields = expression.split()
    if len(fields) != 5:
        return f"has {len(fields)} fields, expected 5"
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):

        def number(
            token: str, low: int = low, high: int = high, names: dict[str, int] = names
        ) -> int | None:
            if token.lower() in names:
                return names[token.lower()]
            if token.isdigit() and low <= int(token) <= high:
                return int(token)
            return None

        for part in text.split(","):
            base, slash, step = part.partition("/")
            if slash and (not step.isdigit() or int(step) == 0):
                return f"{name} field {text!r}: step {step!r} is not a positive number"
            if base == "*":
                continue
            first, dash, last = base.partition("-")
            start = number(first)
            end = number(last) if dash else start
            if start is None or end is None:
                return f"{name} field {text!r}: {part!r} is not in {low}..{high}"
            if start > end:
                return f"{name} field {text!r}: range {base!r} runs backwards"
    return None


def _check_cron(value: str) -> str:
    expression = " ".join(value.split())
    problem = _cron_problem(expression)
    if problem:
        raise _fail(f"cron expression {value!r} {problem}", _CRON_ALLOWED)
    return expression


CronExpression = Annotated[
    str,
    AfterValidator(_check_cron),
    WithJsonSchema({"type": "string", "examples": ["0 2 * * sat"]}),
]

# ---- enumerations

Cadence = Literal["quarterly", "monthly", "weekly", "cron"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Role = Literal["staging", "production"]
OsFamily = Literal["debian", "rhel"]
OnFailure = Literal["restore", "ask", "halt"]
PatchSelection = Literal["all", "security"]
RebootPolicy = Literal["if-required", "always", "never"]
SnapshotMode = Literal["volumes", "ami"]

_WEEKDAYS: tuple[str, ...] = (
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
)  # date.weekday() order
_CRON_DOW = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}


def _duplicates(values: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Yield (index, value) of every value already seen earlier in ``values``."""
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            yield index, value
        seen.add(value)


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contact(_Model):
    """The client's maintenance contact."""

    name: Text = Field(description="Who to talk to at the client about maintenance.")
    email: Email = Field(description="Their email address.")


class Approver(_Model):
    """A person allowed to approve production changes for this client."""

    name: ApproverName = Field(
        description="Login-like name the approval form compares against (lowercase, e.g. alice)."
    )
    email: Email = Field(description="Where the approval request is sent.")


class Client(_Model):
    """Who the client is and who decides about their changes."""

    slug: Slug = Field(
        description="Short identifier used in deployment names and paths; equals the file stem."
    )
    name: Text = Field(description="Display name used in reports and notifications.")
    timezone: TimeZoneName = Field(
        description="IANA time zone of the client; schedules and windows are read in it."
    )
    contact: Contact = Field(description="The client's maintenance contact.")
    approvers: tuple[Approver, ...] = Field(
        min_length=1, description="People who may approve production changes (at least one)."
    )
    approvals_required: StrictInt = Field(
        default=1,
        ge=1,
        description="How many distinct approvers must approve (1..number of approvers).",
    )
    notify: tuple[BlockName, ...] = Field(
        default=(),
        description="Names of Prefect notification blocks told about each maintenance run.",
    )

    @model_validator(mode="after")
    def _approvers_are_consistent(self) -> Self:
        for index, name in _duplicates([a.name for a in self.approvers]):
            raise _fail(
                f"approver {name!r} is listed more than once",
                "each approver name once",
                ("approvers", index, "name"),
            )
        if self.approvals_required > len(self.approvers):
            raise _fail(
                f"approvals_required is {self.approvals_required}"
                f" but only {len(self.approvers)} approver(s) are listed",
                f"1..{len(self.approvers)}",
                ("approvals_required",),
            )
        for index, name in _duplicates(self.notify):
            raise _fail(
                f"notification block {name!r} is listed more than once",
                "each block once",
                ("notify", index),
            )
        return self

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The client's time zone."""
        return zoneinfo.ZoneInfo(self.timezone)


class MaintenanceWindow(_Model):
    """When changes may be made: a daily (weekly with ``weekday``) slot in the client's time zone.

    A slot starts at ``start`` local time and lasts ``duration`` of elapsed time, so it may
    cross midnight. On a DST change day a start time that does not exist is moved forward
    by the gap, and an ambiguous one takes its first occurrence.
    """

    start: ClockTime = Field(
        description="Local start time, HH:MM (24-hour clock, quote it in YAML)."
    )
    duration: WindowDuration = Field(
        description="Length of the window: seconds or '90m', '4h', '1h30m', '1d'; >0, at most 24h."
    )
    weekday: Weekday | None = Field(
        default=None,
        description=(
            "Restrict the window to this weekday (mon..sun); scheduled runs use the first such"
            " weekday of the period. Unset: every day."
        ),
    )

    def applies_on(self, day: date) -> bool:
        """Whether a slot starts on local date ``day``."""
        return self.weekday is None or _WEEKDAYS[day.weekday()] == self.weekday

    def slot_on(self, day: date, tz: tzinfo) -> tuple[datetime, datetime]:
        """The slot starting on local date ``day`` (applying or not), aware, in ``tz``."""
        start = datetime.combine(day, self.start, tzinfo=tz).astimezone(UTC)
        # Elapsed-time arithmetic in UTC: adding to a zoned datetime would be wall-clock arithmetic.
        return start.astimezone(tz), (start + self.duration).astimezone(tz)

    def occurrences(
        self, start: datetime, end: datetime, tz: tzinfo
    ) -> list[tuple[datetime, datetime]]:
        """Slots overlapping ``[start, end)``, in order, as aware datetimes in ``tz``."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        slots = []
        day = start.astimezone(tz).date() - timedelta(days=2)
        last = end.astimezone(tz).date()
        while day <= last:
            if self.applies_on(day):
                slot_start, slot_end = self.slot_on(day, tz)
                if slot_end > start and slot_start < end:
                    slots.append((slot_start, slot_end))
            day += timedelta(days=1)
        return slots

    def contains(self, when: datetime, tz: tzinfo) -> bool:
        """Whether the aware datetime ``when`` is inside a slot (start inclusive, end exclusive)."""
        return any(
            s <= when < e for s, e in self.occurrences(when, when + timedelta(microseconds=1), tz)
        )

    def next_start(self, after: datetime, tz: tzinfo) -> datetime:
        """The first slot start strictly after the aware datetime ``after``, in ``tz``."""
        _require_aware(after, "after")
        day = after.astimezone(tz).date()
        for offset in range(9):
            candidate = day + timedelta(days=offset)
            if self.applies_on(candidate):
                slot_start, _ = self.slot_on(candidate, tz)
                if slot_start > after:
                    return slot_start
        raise AssertionError("unreachable: a weekday recurs within 8 days")  # pragma: no cover


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


class Schedule(_Model):
    """How often maintenance runs and the window it runs in."""

    cadence: Cadence = Field(
        default="quarterly",
        description=(
            "quarterly (Jan/Apr/Jul/Oct), monthly, weekly, or cron (then `cron` is required)."
            " Runs start at window.start on the 1st of the period, or on the first window.weekday."
        ),
    )
    cron: CronExpression | None = Field(
        default=None,
        description="5-field cron expression in the client's time zone; only with cadence: cron.",
    )
    window: MaintenanceWindow = Field(description="When production changes may be made.")
    approval_timeout: ApprovalTimeout = Field(
        default=timedelta(hours=24),
        json_schema_extra={"default": "24h"},
        description="Wait this long for approval, then give up, production untouched (<= 7d).",
    )

    @model_validator(mode="after")
    def _cron_iff_cadence_cron(self) -> Self:
        if self.cadence == "cron" and self.cron is None:
            raise _fail(
                "cadence is cron but no cron expression is given",
                "a 5-field cron expression such as '0 2 * * sat'",
                ("cron",),
            )
        if self.cadence != "cron" and self.cron is not None:
            raise _fail(
                f"a cron expression is only used with cadence: cron (cadence is {self.cadence})",
                "remove `cron`, or set cadence: cron",
                ("cron",),
            )
        return self

    def cron_expression(self) -> tuple[str, bool]:
        """The cron string for Prefect's ``CronSchedule`` and its ``day_or`` flag.

        Returns:
            ``(cron, day_or)``; ``day_or`` is False when day-of-month and day-of-week must
            both match ("the first Saturday": days 1-7 AND Saturday).
        """
        if self.cadence == "cron":
            assert self.cron is not None  # guaranteed by validation
            return self.cron, True
        minute, hour = self.window.start.minute, self.window.start.hour
        weekday = self.window.weekday
        if self.cadence == "weekly":
            return f"{minute} {hour} * * {_CRON_DOW[weekday] if weekday else 1}", True
        months = "1,4,7,10" if self.cadence == "quarterly" else "*"
        if weekday:
            return f"{minute} {hour} 1-7 {months} {_CRON_DOW[weekday]}", False
        return f"{minute} {hour} 1 {months} *", True


class Rollout(_Model):
    """How production changes are rolled out."""

    batch_size: StrictInt = Field(
        default=1, ge=1, le=1000, description="Production servers patched at a time."
    )
    failures_tolerated: StrictInt = Field(
        default=0,
        ge=0,
        le=1000,
        description="Failed production servers tolerated before the rollout stops.",
    )
    on_failure: OnFailure = Field(
        default="halt",
        description=(
            "What to do when more failures than tolerated occur: restore (roll the failed servers"
            " back from their snapshots), ask (pause for a human), halt (stop, change nothing)."
        ),
    )

    def batches(self, servers: Sequence[Server]) -> list[tuple[Server, ...]]:
        """Split ``servers`` into consecutive batches of ``batch_size``."""
        return [
            tuple(servers[i : i + self.batch_size]) for i in range(0, len(servers), self.batch_size)
        ]


class PatchPolicy(_Model):
    """What gets patched and whether servers reboot."""

    policy: PatchSelection = Field(
        default="all", description="all updates, or security updates only."
    )
    hold: tuple[PackageName, ...] = Field(default=(), description="Packages never upgraded (held).")
    reboot: RebootPolicy = Field(
        default="if-required",
        description="if-required (reboot when the OS says so), always, or never.",
    )

    @model_validator(mode="after")
    def _holds_are_unique(self) -> Self:
        for index, name in _duplicates(self.hold):
            raise _fail(
                f"package {name!r} is held more than once", "each package once", ("hold", index)
            )
        return self


class RestoreTest(_Model):
    """Whether and how long the post-maintenance restore test runs."""

    enabled: StrictBool = Field(
        default=True, description="Restore a snapshot to a scratch host and verify it."
    )
    timeout: RestoreTimeout = Field(
        default=timedelta(minutes=15),
        json_schema_extra={"default": "15m"},
        description="Longest the restore may take (the RTO bound), at most 24h.",
    )


class SnapshotPolicy(_Model):
    """How snapshots are taken and kept."""

    retention: StrictInt = Field(
        default=3, ge=1, le=100, description="Maintenance snapshots kept per server."
    )
    mode: SnapshotMode = Field(
        default="volumes",
        description="volumes (snapshot each volume) or ami (create an image; aws servers only).",
    )
    require_encryption: StrictBool = Field(
        default=False, description="Fail the snapshot step if a snapshot is not encrypted."
    )
    encrypted_copy: StrictBool = Field(
        default=False,
        description=(
            "Make an encrypted copy of unencrypted snapshots (aws);"
            " the copy satisfies require_encryption."
        ),
    )


class AwsProvider(_Model):
    """Snapshots through EC2 (one instance, found by id or by its Name tag)."""

    type: Literal["aws"] = Field(description="Provider type.")
    region: AwsRegion = Field(description="AWS region of the instance, e.g. eu-west-1.")
    instance_id: InstanceId | None = Field(
        default=None,
        description="EC2 instance id; give exactly one of instance_id and instance_name.",
    )
    instance_name: TagValue | None = Field(
        default=None,
        description="The instance's Name tag; give exactly one of instance_id and instance_name.",
    )
    credentials_block: BlockName = Field(
        description="Name of the prefect-aws AwsCredentials block."
    )

    @model_validator(mode="after")
    def _exactly_one_instance_reference(self) -> Self:
        if (self.instance_id is None) == (self.instance_name is None):
            given = "both" if self.instance_id is not None else "neither"
            raise _fail(
                f"{given} of instance_id and instance_name given",
                "exactly one of instance_id (i-...) or instance_name (the Name tag)",
                ("instance_id",) if given == "both" else (),
            )
        return self


class RackspaceProvider(_Model):
    """Snapshots through Rackspace / OpenStack images."""

    type: Literal["rackspace"] = Field(description="Provider type.")
    server_id: UUID = Field(description="The cloud server's UUID.")
    region: RackspaceRegion = Field(
        description="Rackspace region code: DFW, ORD, IAD, LON, SYD, HKG."
    )
    credentials_block: BlockName = Field(description="Name of the Rackspace credentials block.")


_ESTATE_RE = r"^[a-z0-9-]{1,20}$"
_ESTATE_ALLOWED = "1-20 characters: lowercase letters, digits and '-'"
EstateName = Annotated[
    str,
    AfterValidator(_identifier("estate name", _ESTATE_RE, "a-z0-9-", _ESTATE_ALLOWED, 20)),
    _string_schema(_ESTATE_RE, 20),
]


class SandboxProvider(_Model):
    """Snapshots of a host of the local sandbox estate (demo and tests)."""

    type: Literal["sandbox"] = Field(description="Provider type.")
    estate: EstateName = Field(
        default="demo",
        description="Name of the sandbox estate the host belongs to (python -m sandbox --estate).",
    )


class NoProvider(_Model):
    """No snapshots for this server; the reason is recorded in every change record."""

    type: Literal["none"] = Field(description="Provider type.")
    reason: Reason = Field(description="Why this server has no snapshots (at least 10 characters).")


Provider = Annotated[
    AwsProvider | RackspaceProvider | SandboxProvider | NoProvider,
    Field(discriminator="type"),
]


class TcpCheck(_Model):
    """The port accepts a TCP connection (checked from the caretaker host)."""

    type: Literal["tcp"] = Field(description="Check type.")
    port: Port = Field(description="TCP port, 1..65535.")
    timeout: CheckTimeout = Field(
        default=timedelta(seconds=5),
        json_schema_extra={"default": "5s"},
        description="Connect timeout, at most 5m.",
    )


class HttpCheck(_Model):
    """An HTTP GET returns the expected status (checked from the caretaker host)."""

    type: Literal["http"] = Field(description="Check type.")
    url: HttpUrl = Field(description="http:// or https:// URL to GET.")
    expect_status: StrictInt = Field(
        default=200, ge=100, le=599, description="Expected HTTP status code."
    )
    timeout: CheckTimeout = Field(
        default=timedelta(seconds=5),
        json_schema_extra={"default": "5s"},
        description="Request timeout, at most 5m.",
    )


class SystemdCheck(_Model):
    """A systemd unit is active on the server (checked over SSH)."""

    type: Literal["systemd"] = Field(description="Check type.")
    unit: UnitName = Field(description="Unit name, e.g. nginx.service.")


Check = Annotated[TcpCheck | HttpCheck | SystemdCheck, Field(discriminator="type")]

#: An uptime target in percent: 99.9 allows 0.1 % of the observed, unplanned time down.
SlaTarget = Annotated[StrictFloat, Field(gt=0, le=100)]


class Monitoring(_Model):
    """How health checks are judged, and the uptime the contract promises."""

    confirm_after: StrictInt = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Consecutive failed checks that confirm an outage (dated from the first failure);"
            " fewer are a blip and count as up."
        ),
    )
    sla_target_pct: SlaTarget | None = Field(
        default=None,
        description=(
            "Contracted uptime, % (e.g. 99.9); reports say whether it was met and how much of"
            " the allowed downtime was used. Unset: reports show the target as n/a."
        ),
    )


class JumpHost(_Model):
    """A bastion the SSH connection goes through."""

    address: Address = Field(description="IP literal or DNS name of the bastion.")
    port: Port = Field(default=22, description="SSH port of the bastion.")
    user: UnixUser = Field(default="root", description="User on the bastion.")
    ssh_block: BlockName | None = Field(
        default=None, description="SSH identity block for the bastion; default: the server's."
    )


class ServerDefaults(_Model):
    """Values copied into every server that does not set them itself."""

    ssh_block: BlockName | None = Field(default=None, description="Default SSH identity block.")
    user: UnixUser | None = Field(default=None, description="Default SSH user.")
    port: Port | None = Field(default=None, description="Default SSH port.")
    os_family: OsFamily | None = Field(default=None, description="Default OS family.")
    jump: JumpHost | None = Field(default=None, description="Default bastion.")
    checks: tuple[Check, ...] | None = Field(
        default=None, description="Default health checks (a server's own list replaces them)."
    )
    allowed_ports: tuple[Port, ...] | None = Field(
        default=None,
        description="Default allowed listening ports (a server's own list replaces them).",
    )


def _server_schema(schema: dict[str, Any]) -> None:
    # These may come from `defaults`, and `sudo` is derived, so a file need not repeat them.
    required = schema.get("required", [])
    schema["required"] = [k for k in required if k not in (*DEFAULTABLE_KEYS, "sudo")]


class Server(_Model):
    """One server under maintenance."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_server_schema)

    name: ServerName = Field(description="Host-like name, unique within the client.")
    role: Role = Field(description="staging (patched and verified first) or production.")
    address: Address = Field(
        description="IPv4/IPv6 literal or DNS host name used for SSH and checks."
    )
    port: Port = Field(default=22, description="SSH port, 1..65535.")
    user: UnixUser = Field(default="root", description="SSH user.")
    ssh_block: BlockName = Field(description="Name of the SSH identity block; here or in defaults.")
    sudo: StrictBool = Field(
        description="Run privileged commands with sudo; default: true unless user is root."
    )
    os_family: OsFamily = Field(description="debian (apt) or rhel (dnf); here or in defaults.")
    provider: Provider = Field(
        description="How snapshots are taken: aws, rackspace, sandbox, or none with a reason."
    )
    checks: tuple[Check, ...] = Field(default=(), description="Health checks (tcp, http, systemd).")
    allowed_ports: tuple[Port, ...] = Field(
        default=(),
        description=(
            "TCP ports allowed to listen; the security audit flags others. Empty: no port policy."
            " Must include the SSH port and every tcp check port."
        ),
    )
    jump: JumpHost | None = Field(default=None, description="Optional bastion to connect through.")
    added: date | None = Field(
        default=None,
        description=(
            "Day the server came under contract (YYYY-MM-DD, client time zone); reports count"
            " it from that day's start. Unset: for as long as the report period."
        ),
    )
    sla_target_pct: SlaTarget | None = Field(
        default=None, description="This server's uptime target, %; default: monitoring's."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_sudo(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sudo" not in data:
            return {**data, "sudo": data.get("user", "root") != "root"}
        return data

    @model_validator(mode="after")
    def _ports_are_consistent(self) -> Self:
        for index, port in _duplicates(self.allowed_ports):
            raise _fail(
                f"port {port} is listed more than once",
                "each port once, 1..65535",
                ("allowed_ports", index),
            )
        if self.allowed_ports:
            allowed = set(self.allowed_ports)
            if self.port not in allowed:
                raise _fail(
                    f"the SSH port {self.port} is not in allowed_ports {list(self.allowed_ports)}",
                    f"a list that includes the SSH port {self.port}",
                    ("allowed_ports",),
                )
            for index, check in enumerate(self.checks):
                if isinstance(check, TcpCheck) and check.port not in allowed:
                    raise _fail(
                        f"tcp check port {check.port} is not in allowed_ports"
                        f" {list(self.allowed_ports)}",
                        f"add {check.port} to allowed_ports, or remove the check",
                        ("checks", index, "port"),
                    )
        return self

    @property
    def snapshots(self) -> bool:
        """Whether this server has a snapshot provider (``provider.type != "none"``)."""
        return self.provider.type != "none"


class ClientInventory(_Model):
    """One client's inventory file (clients/<slug>.yaml)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # The loader drops top-level "x-..." keys (a home for YAML anchors); let editors know.
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )

    client: Client = Field(description="Who the client is and who approves changes.")
    schedule: Schedule = Field(description="When maintenance runs.")
    rollout: Rollout = Field(
        default_factory=Rollout, description="How production changes roll out."
    )
    patch: PatchPolicy = Field(default_factory=PatchPolicy, description="What gets patched.")
    restore_test: RestoreTest = Field(
        default_factory=RestoreTest, description="Restore-test settings."
    )
    snapshots: SnapshotPolicy = Field(
        default_factory=SnapshotPolicy, description="Snapshot settings."
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="Outage confirmation and the contracted uptime target.",
    )
    defaults: ServerDefaults = Field(
        default_factory=ServerDefaults,
        description="Values merged into every server that does not set them.",
    )
    servers: tuple[Server, ...] = Field(min_length=1, description="The servers (at least one).")

    _source: Path | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal when the content is equal, wherever it was loaded from."""
        if not isinstance(other, ClientInventory):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults")
        servers = data.get("servers")
        if isinstance(defaults, BaseModel):
            defaults = defaults.model_dump(exclude_none=True)
        if not isinstance(defaults, dict) or not isinstance(servers, list | tuple):
            return data
        inherited = {k: v for k, v in defaults.items() if k in DEFAULTABLE_KEYS and v is not None}
        merged = [
            {**inherited, **server} if isinstance(server, dict) else server for server in servers
        ]
        return {**data, "servers": merged}

    @model_validator(mode="after")
    def _servers_are_consistent(self) -> Self:
        for index, name in _duplicates([s.name for s in self.servers]):
            raise _fail(
                f"server name {name!r} is used more than once",
                "unique server names",
                ("servers", index, "name"),
            )
        for index, (address, port) in _duplicates([(s.address, s.port) for s in self.servers]):
            raise _fail(
                f"address {address}:{port} is used by more than one server",
                "one server entry per address and port",
                ("servers", index, "address"),
            )
        if self.production and not self.staging:
            raise _fail(
                f"production without staging: {len(self.production)} production server(s)"
                " but no staging server",
                "at least one server with role: staging, patched and verified before production",
                ("servers",),
            )
        if self.snapshots.mode == "ami":
            for index, server in enumerate(self.servers):
                if server.provider.type not in ("aws", "none"):
                    raise _fail(
                        f"snapshots.mode is ami but server {server.name!r}"
                        f" uses provider {server.provider.type}",
                        "mode: ami only with aws (or none) providers; use mode: volumes",
                        ("servers", index, "provider", "type"),
                    )
        return self

    # ---- convenience

    @property
    def slug(self) -> str:
        """The client's slug."""
        return self.client.slug

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The client's time zone."""
        return self.client.tz

    @property
    def source(self) -> Path | None:
        """The file this inventory was loaded from, if it was loaded by :func:`load_client`."""
        return self._source

    @property
    def staging(self) -> tuple[Server, ...]:
        """Staging servers, in file order."""
        return tuple(s for s in self.servers if s.role == "staging")

    @property
    def production(self) -> tuple[Server, ...]:
        """Production servers, in file order."""
        return tuple(s for s in self.servers if s.role == "production")

    def server(self, name: str) -> Server:
        """The server called ``name``.

        Raises:
            InventoryError: there is no such server (the message lists the known ones).
        """
        for server in self.servers:
            if server.name == name:
                return server
        names = [s.name for s in self.servers]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = str(self._source) if self._source else f"client {self.slug}"
        raise InventoryError(
            where,
            [f"{where}: servers: no server named {name!r}{hint} (allowed: {', '.join(names)})"],
        )

    def select(self, scope: str) -> tuple[Server, ...]:
        """Servers selected by ``scope`` (see :func:`select_servers`)."""
        return select_servers(self, scope)

    def production_batches(self) -> list[tuple[Server, ...]]:
        """Production servers split into rollout batches, in file order."""
        return self.rollout.batches(self.production)

    def in_window(self, when: datetime) -> bool:
        """Whether the aware datetime ``when`` is inside a maintenance window (client time zone)."""
        return self.schedule.window.contains(when, self.tz)

    def next_window_start(self, after: datetime) -> datetime:
        """Start of the first maintenance window strictly after ``after``, in the client's tz."""
        return self.schedule.window.next_start(after, self.tz)

    def windows_between(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Maintenance windows overlapping ``[start, end)`` (aware, client time zone)."""
        return self.schedule.window.occurrences(start, end, self.tz)

    def block_names(self) -> dict[str, set[str]]:
        """Names of the Prefect blocks referred to, by kind (see :data:`BLOCK_KINDS`)."""
        names: dict[str, set[str]] = {kind: set() for kind in BLOCK_KINDS}
        for kind, name, _ in _block_references(self):
            names[kind].add(name)
        return names


def select_servers(inv: ClientInventory, scope: str) -> tuple[Server, ...]:
    """The servers a run works on, in file order.

    Args:
        inv: the client.
        scope: comma-separated items, each ``all``, ``staging``, ``production`` or a
            server name; the union is returned (``"staging,acme-web-1"`` works).

    Raises:
        InventoryError: an item is neither a role nor a server name, or nothing is selected.
    """
    where = str(inv.source) if inv.source else f"client {inv.slug}"
    names = [s.name for s in inv.servers]
    items = [item.strip() for item in scope.split(",") if item.strip()]
    if not items:
        raise InventoryError(
            where,
            [f"{where}: scope is empty (allowed: all, staging, production, {', '.join(names)})"],
        )
    wanted: set[str] = set()
    problems: list[str] = []
    for item in items:
        if item == "all":
            wanted.update(names)
        elif item in ("staging", "production"):
            wanted.update(s.name for s in inv.servers if s.role == item)
        elif item in names:
            wanted.add(item)
        else:
            close = difflib.get_close_matches(item, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{where}: scope: no server or role {item!r}{hint}"
                f" (allowed: all, staging, production, {', '.join(names)})"
            )
    if problems:
        raise InventoryError(where, problems)
    selected = tuple(s for s in inv.servers if s.name in wanted)
    if not selected:
        raise InventoryError(where, [f"{where}: scope {scope!r} selects no server"])
    return selected


def _block_references(inv: ClientInventory) -> list[tuple[str, str, tuple[str | int, ...]]]:
    """Every block reference as (kind, name, field path)."""
    refs: list[tuple[str, str, tuple[str | int, ...]]] = [
        ("notify", name, ("client", "notify", i)) for i, name in enumerate(inv.client.notify)
    ]
    for i, server in enumerate(inv.servers):
        refs.append(("ssh", server.ssh_block, ("servers", i, "ssh_block")))
        if server.jump and server.jump.ssh_block:
            refs.append(("ssh", server.jump.ssh_block, ("servers", i, "jump", "ssh_block")))
        provider = server.provider
        if isinstance(provider, AwsProvider | RackspaceProvider):
            refs.append(
                (
                    provider.type,
                    provider.credentials_block,
                    ("servers", i, "provider", "credentials_block"),
                )
            )
    return refs


# --------------------------------------------------------------------------- JSON Schema


@functools.cache
def _model_schema() -> dict[str, Any]:
    return ClientInventory.model_json_schema()


def inventory_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a client inventory file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **json.loads(json.dumps(_model_schema())),
        "title": "caretaker client inventory (clients/<slug>.yaml)",
    }


def schema_json() -> str:
    """The JSON Schema as the text committed in ``docs/inventory.schema.json``."""
    return json.dumps(inventory_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _deref(node: Any) -> dict[str, Any] | None:
    """Follow ``$ref`` and unwrap ``Optional`` (anyOf with null) in the model schema."""
    defs = _model_schema().get("$defs", {})
    for _ in range(10):
        if not isinstance(node, dict):
            return None
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1])
            continue
        branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
        if "anyOf" in node and len(branches) == 1:
            node = branches[0]
            continue
        return node
    return None


def _resolve(
    loc: Sequence[str | int],
) -> tuple[list[str | int], dict[str, Any] | None, dict[str, Any] | None]:
    """Walk a pydantic error location through the schema.

    Returns:
        The location without discriminator tags (as written in the file), the schema node
        there, and the nearest enclosing object node (for unknown keys).
    """
    path: list[str | int] = []
    node: dict[str, Any] | None = _deref(_model_schema())
    parent: dict[str, Any] | None = None
    for part in loc:
        mapping = (node or {}).get("discriminator", {}).get("mapping", {})
        if isinstance(part, str) and part in mapping:
            node = _deref({"$ref": mapping[part]})  # a tag, not a key in the file
            continue
        path.append(part)
        if node is None:
            continue
        if isinstance(part, int):
            node = _deref(node.get("items")) if node.get("type") == "array" else None
        elif "properties" in node:
            parent = node
            node = _deref(node["properties"].get(part))
        else:
            node = None
    return path, node, parent


def _allowed(node: dict[str, Any] | None) -> str | None:
    """A short 'what is allowed' from a schema node."""
    if not node:
        return None
    if "enum" in node:
        return ", ".join(str(v) for v in node["enum"])
    if "const" in node:
        return str(node["const"])
    if "discriminator" in node:
        return ", ".join(node["discriminator"]["mapping"])
    kind = node.get("type")
    if kind in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if low is not None and high is not None:
            return f"{low}..{high}"
        if low is not None:
            return f">= {low}" if "minimum" in node else f"> {low}"
        if high is not None:
            return f"<= {high}" if "maximum" in node else f"< {high}"
        return "an integer"
    if kind == "array":
        if "minItems" in node:
            return f"a list of at least {node['minItems']} item(s)"
        return "a list"
    if kind == "string":
        bits = []
        if "minLength" in node:
            bits.append(f"at least {node['minLength']} characters")
        if "maxLength" in node:
            bits.append(f"at most {node['maxLength']} characters")
        if "pattern" in node:
            bits.append(f"matching {node['pattern']}")
        return ", ".join(bits) or "a string"
    if kind == "boolean":
        return "true or false"
    if "properties" in node:
        return "a mapping with keys " + ", ".join(node["properties"])
    if "anyOf" in node:
        options = [_allowed(_deref(b)) for b in node["anyOf"] if b.get("type") != "null"]
        return " or ".join(o for o in options if o) or None
    return None


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def _describe(
    error: Mapping[str, Any],
    node: dict[str, Any] | None,
    parent: dict[str, Any] | None,
    path: Sequence[str | int],
) -> str:
    """One error as '<what is wrong> (allowed: ...)'."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    allowed: str | None
    if kind == _ERROR_TYPE:
        message, allowed = ctx["message"], ctx.get("allowed")
    elif kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        keys = list((parent or {}).get("properties", {}))
        close = difflib.get_close_matches(key, keys, n=1)
        message = f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        return f"{message} (allowed keys: {', '.join(keys)})" if keys else message
    elif kind == "missing":
        if len(path) == 3 and path[0] == "servers" and path[2] in DEFAULTABLE_KEYS:
            return f"Field required (expected: set {path[2]} on the server or in defaults)"
        description = (node or {}).get("description")
        expected = _first_sentence(description) if description else _allowed(node)
        return f"Field required (expected: {expected})" if expected else "Field required"
    elif kind == "literal_error":
        message = f"{error.get('input')!r} is not one of the choices"
        allowed = _allowed(node) or ctx.get("expected")
    elif kind == "union_tag_invalid":
        message = f"unknown type {ctx.get('tag')!r}"
        allowed = _allowed(node)
    elif kind == "union_tag_not_found":
        message = "the 'type' key is missing"
        allowed = _allowed(node)
    elif kind in ("tuple_type", "list_type", "set_type"):
        message, allowed = "Input should be a list", _allowed(node)
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message, allowed = "Input should be a mapping", _allowed(node)
    elif kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        most = "least" if kind == "too_short" else "most"
        message = f"List should have at {most} {bound} item(s), not {ctx.get('actual_length')}"
        allowed = _allowed(node)
    elif kind == "invalid_key":
        message, allowed = f"key {error.get('input')!r} is not a string", "string keys"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        allowed = _allowed(node)
    return f"{message} (allowed: {allowed})" if allowed else message


# --------------------------------------------------------------------------- YAML


class _InventoryLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.1's base-60 integers turned off.

    Under the default resolver ``start: 22:00`` reads as the integer 1320 while
    ``start: 02:00`` stays a string; here both are strings.
    """


_INT_TAG = "tag:yaml.org,2002:int"
_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_InventoryLoader.yaml_implicit_resolvers = {
    first: [(tag, _INT_RE if tag == _INT_TAG else regex) for tag, regex in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _field(path: Sequence[str | int]) -> str:
    """``("servers", 2, "port")`` -> ``"servers[2].port"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _yaml_lookup(
    root: yaml.Node | None, path: Sequence[str | int]
) -> tuple[yaml.Node | None, int | None]:
    """The node at ``path`` (or None) and the best line number (1-based) for it.

    The line is the key's line for mapping entries, the item's line for list items, and
    the nearest existing parent's line when the path does not exist in the file.
    """
    if root is None:
        return None, None
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return None, line
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return None, line
    return node, line


def _where_set(root: yaml.Node | None, path: list[str | int]) -> list[str | int]:
    """Point a server field that came from ``defaults`` at ``defaults``."""
    if (
        len(path) >= 3
        and path[0] == "servers"
        and isinstance(path[1], int)
        and path[2] in DEFAULTABLE_KEYS
    ):
        server, _ = _yaml_lookup(root, path[:2])
        own, _ = _yaml_lookup(root, path[:3])
        inherited, _ = _yaml_lookup(root, ["defaults", path[2]])
        if server is not None and own is None and inherited is not None:
            return ["defaults", *path[2:]]
    return path


def _problem(shown: str, line: int | None, path: Sequence[str | int], message: str) -> str:
    where = f"{shown}:{line}" if line else shown
    field = _field(path)
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def _format_validation_errors(
    exc: ValidationError, shown: str, root: yaml.Node | None
) -> list[str]:
    problems: list[str] = []
    errors = exc.errors()
    for error in errors:
        if error["type"] == "too_short" and any(
            len(other["loc"]) > len(error["loc"])
            and other["loc"][: len(error["loc"])] == error["loc"]
            for other in errors
        ):
            continue  # "0 items after validation" only because every item failed: noise
        ctx = error.get("ctx") or {}
        loc = (
            [*error["loc"], *ctx.get("at", ())]
            if error["type"] == _ERROR_TYPE
            else list(error["loc"])
        )
        path, node, parent = _resolve(loc)
        message = _describe(error, node, parent, path)
        path = _where_set(root, path)
        _, line = _yaml_lookup(root, path)
        problem = _problem(shown, line, path, message)
        if problem not in problems:
            problems.append(problem)
    return problems


def _duplicate_keys(root: yaml.Node, shown: str) -> list[str]:
    """Duplicate keys anywhere in the document (PyYAML would silently keep the last)."""
    found: list[tuple[int, str]] = []
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:  # aliases share nodes; visit each once
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    stack.append((value, path))
                    continue
                line = key.start_mark.line + 1
                if key.value == "<<":  # merge key: its mapping may legitimately be overridden
                    stack.append((value, path))
                    continue
                ident = (key.tag, key.value)
                if ident in first_line:
                    found.append(
                        (
                            line,
                            _problem(
                                shown,
                                line,
                                (*path, key.value),
                                f"duplicate key {key.value!r} (first on line {first_line[ident]})"
                                " (allowed: each key once per mapping)",
                            ),
                        )
                    )
                else:
                    first_line[ident] = line
                stack.append((value, (*path, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return [problem for _, problem in sorted(found)]


def _parse(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    """Compose and construct one YAML document (safe semantics); errors become InventoryError."""
    loader = _InventoryLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        duplicates = _duplicate_keys(root, shown)
        if duplicates:
            raise InventoryError(shown, duplicates)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
        label = (
            "YAML error"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise InventoryError(shown, [f"{shown}{line}: {label}: {what}"]) from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise InventoryError(shown, [f"{shown}: YAML error: {exc}"]) from exc
    finally:
        loader.dispose()


def _compose_quietly(path: Path) -> yaml.Node | None:
    """The node tree of ``path`` for line numbers, or None if it cannot be read."""
    try:
        return _parse(path.read_text(encoding="utf-8"), str(path))[0]
    except (OSError, UnicodeDecodeError, InventoryError):
        return None


_TOP_LEVEL_KEYS = ", ".join(ClientInventory.model_fields)


# --------------------------------------------------------------------------- loader


def load_client(path: Path | str) -> ClientInventory:
    """Read and validate one client file.

    Args:
        path: ``clients/<slug>.yaml``; the slug inside must equal the file stem.

    Returns:
        The validated inventory (its :attr:`ClientInventory.source` is ``path``).

    Raises:
        InventoryError: the file cannot be read, is not valid YAML, has duplicate keys,
            is empty or not a mapping, fails validation, or its slug does not match the
            file name. Each problem line names the file, line, field and what is allowed.
    """
    path = Path(path)
    shown = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InventoryError(
                shown, [f"{shown}: file is {size} bytes (allowed: at most {MAX_FILE_BYTES})"]
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(shown, [f"{shown}: cannot read: {exc}"]) from exc
    root, data = _parse(text, shown)
    if data is None:
        raise InventoryError(
            shown, [f"{shown}: file is empty (allowed: a mapping with keys {_TOP_LEVEL_KEYS})"]
        )
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise InventoryError(
            shown,
            [
                f"{shown}:{line}: the top level is a {kind}; it must be a mapping"
                f" (allowed keys: {_TOP_LEVEL_KEYS})"
            ],
        )

    # Top-level keys starting with "x-" are ignored: a place for YAML anchors (as in compose files).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    problems: list[str] = []
    client = data.get("client")
    slug = client.get("slug") if isinstance(client, dict) else None
    if isinstance(slug, str) and slug != path.stem:
        _, line = _yaml_lookup(root, ["client", "slug"])
        problems.append(
            _problem(
                shown,
                line,
                ["client", "slug"],
                f"slug {slug!r} does not match the file name {path.name!r}"
                f" (allowed: {path.stem!r}; rename the file to {slug}.yaml or change the slug)",
            )
        )
    try:
        inventory = ClientInventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(shown, problems + _format_validation_errors(exc, shown, root)) from exc
    if problems:
        raise InventoryError(shown, problems)
    inventory._source = path
    return inventory


def load_inventory(directory: Path | str) -> dict[str, ClientInventory]:
    """Read every ``*.yaml`` client file in ``directory``, sorted by name.

    Returns:
        Inventories by slug.

    Raises:
        InventoryError: any file is invalid (all problems of all files are reported), or a
            file uses the ``.yml`` extension (which would otherwise be silently ignored).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InventoryError(str(directory), [f"{directory}: not a directory of client files"])
    problems: list[str] = [
        f"{stray}: client files must end in .yaml (allowed: rename to {stray.stem}.yaml)"
        for stray in sorted(directory.glob("*.yml"))
    ]
    inventories: dict[str, ClientInventory] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            inventory = load_client(path)
        except InventoryError as exc:
            problems.extend(exc.problems)
        else:
            inventories[inventory.slug] = inventory
    if problems:
        raise InventoryError(str(directory), problems)
    return inventories


def load_client_by_slug(directory: Path | str, slug: str) -> ClientInventory:
    """Read ``<directory>/<slug>.yaml``.

    Raises:
        InventoryError: the slug is malformed or there is no such file (the message lists
            the available slugs), or the file is invalid.
    """
    directory = Path(directory)
    path = directory / f"{slug}.yaml"
    if not re.fullmatch(_SLUG_RE, slug):
        raise InventoryError(
            str(path),
            [f"{directory}: client {slug!r} is not a valid slug (allowed: {_SLUG_ALLOWED})"],
        )
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        close = difflib.get_close_matches(slug, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InventoryError(
            str(path),
            [
                f"{path}: no client {slug!r} in {directory}{hint}"
                f" (available: {', '.join(available) or 'none'})"
            ],
        )
    return load_client(path)


def check_block_references(
    inv: ClientInventory, path: Path | str | None, existing: Mapping[str, set[str]]
) -> None:
    """Check that every block the inventory names exists.

    Args:
        inv: a loaded inventory.
        path: its file (for messages and line numbers); default ``inv.source``.
        existing: block names that exist, by kind (``ssh``, ``aws``, ``rackspace``,
            ``notify``); a kind that is absent counts as having no blocks.

    Raises:
        InventoryError: one line per missing reference, naming the file, line, field, the
            missing block and the existing blocks of that kind.
    """
    file = Path(path) if path is not None else inv.source
    shown = str(file) if file is not None else f"client {inv.slug}"
    root = _compose_quietly(file) if file is not None else None
    problems: list[str] = []
    for kind, name, ref_path in _block_references(inv):
        have = set(existing.get(kind, set()))
        if name in have:
            continue
        close = difflib.get_close_matches(name, sorted(have), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = _where_set(root, list(ref_path))
        _, line = _yaml_lookup(root, where)
        problem = _problem(
            shown,
            line,
            where,
            f"{kind} block {name!r} does not exist{hint}"
            f" (existing {kind} blocks: {', '.join(sorted(have)) or 'none'})",
        )
        if problem not in problems:
            problems.append(problem)
    if problems:
        raise InventoryError(shown, problems)


# --------------------------------------------------------------------------- CLI


def _summary(inv: ClientInventory) -> str:
    cron, _ = inv.schedule.cron_expression()
    return (
        f"{inv.slug}: {len(inv.staging)} staging, {len(inv.production)} production;"
        f" {inv.schedule.cadence} ({cron} {inv.client.timezone})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inventory {schema,check}``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m inventory", description="caretaker client inventory tools"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the JSON Schema of a client file")
    schema.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    check = commands.add_parser("check", help="validate client files (or folders of them)")
    check.add_argument("paths", nargs="+", type=Path, help="clients/<slug>.yaml files or folders")
    args = parser.parse_args(argv)

    if args.command == "schema":
        if args.output:
            args.output.write_text(schema_json(), encoding="utf-8")
        else:
            sys.stdout.write(schema_json())
        return 0

    failed = 0
    files: list[Path] = []
    for given in args.paths:
        files.extend(sorted(given.glob("*.yaml")) if given.is_dir() else [given])
    for file in files:
        try:
            inventory = load_client(file)
        except InventoryError as exc:
            failed += 1
            print(f"FAIL {file}", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"ok   {file}  ({_summary(inventory)})")
    if not files:
        print("no client files given", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
