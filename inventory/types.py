"""The value types of an inventory: identifiers, addresses, URLs, time zones, durations, times.

Every identifier that could ever reach a remote shell (host, user, package, systemd
unit, block names) is checked against a strict allow-list by one rule,
:class:`Identifier`; a refused value is reported with the characters that are not
allowed, by name (so ``;``, ``$(``, backticks and spaces are called out). Each type is
``Annotated[<python type>, <rule>]``, so pydantic validates it, writes its JSON Schema and
mypy sees the plain Python type.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hashlib
import ipaddress
import re
import urllib.parse
import zoneinfo
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictFloat,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)

from inventory.base import char_list, fail
from inventory.schedule import CRON_ALLOWED, cron_problem


class _Rule(ABC):
    """Metadata that pydantic expands into its parts (annotated-types' GroupedMetadata protocol).

    A subclass yields the validators, serializer and JSON Schema of one kind of value, so a
    type is one ``Annotated[...]`` line and every type of that kind is checked the same way.
    """

    __is_annotated_types_grouped_metadata__ = True

    @abstractmethod
    def __iter__(self) -> Iterator[object]:
        """The validators, serializer and JSON Schema pydantic applies for this rule."""


@dataclass(frozen=True)
class Identifier(_Rule):
    """A shell-safe identifier: a full-match pattern, an allowed character set, a length bound.

    Attributes:
        what: what the value is, for messages ("user name").
        pattern: the regular expression the whole value must match (also the schema's).
        charset: a regex character class body listing the allowed characters; anything
            else is reported by name.
        allowed: the human description of what is allowed (the ``(allowed: ...)`` hint).
        max_length: the maximum length.
        format: a JSON Schema ``format`` (``"email"``), or None.
    """

    what: str
    pattern: str
    charset: str
    allowed: str
    max_length: int
    format: str | None = None

    def check(self, value: str) -> str:
        """``value`` if it is allowed, else the validation error naming what is wrong."""
        if re.fullmatch(self.pattern, value) and len(value) <= self.max_length:
            return value
        bad = sorted(set(re.findall(f"[^{self.charset}]", value)))
        if bad:
            raise fail(
                f"{self.what} {value!r} contains characters that are not allowed: {char_list(bad)}",
                self.allowed,
            )
        if len(value) > self.max_length:
            raise fail(
                f"{self.what} {value!r} is longer than {self.max_length} characters", self.allowed
            )
        raise fail(f"{self.what} {value!r} is not valid", self.allowed)

    def __iter__(self) -> Iterator[object]:
        schema: dict[str, Any] = {"type": "string"}
        if self.format:
            schema["format"] = self.format
        schema.update(pattern=self.pattern, maxLength=self.max_length)
        yield AfterValidator(self.check)
        yield WithJsonSchema(schema)


# ---- identifiers

#: The client slug's rule (the loader checks a slug given on the command line with it).
SLUG = Identifier(
    "slug",
    r"^[a-z][a-z0-9-]{1,31}$",
    "a-z0-9-",
    "2-32 characters: lowercase letters, digits and '-', starting with a letter",
    32,
)
Slug = Annotated[str, SLUG]
BlockName = Annotated[
    str,
    Identifier(
        "block name",
        r"^[a-z0-9][a-z0-9-]*$",
        "a-z0-9-",
        "a Prefect block name: lowercase letters, digits and '-', starting with a letter or digit",
        128,
    ),
]
ServerName = Annotated[
    str,
    Identifier(
        "server name",
        r"^[a-z0-9][a-z0-9-]{0,62}$",
        "a-z0-9-",
        "1-63 characters: lowercase letters, digits and '-', starting with a letter or digit",
        63,
    ),
]
ApproverName = Annotated[
    str,
    Identifier(
        "approver name",
        r"^[a-z][a-z0-9._-]*$",
        "a-z0-9._-",
        "lowercase letters, digits, '.', '_' and '-', starting with a letter; at most 64",
        64,
    ),
]
UnixUser = Annotated[
    str,
    Identifier(
        "user name",
        r"^[a-z_][a-z0-9_-]{0,31}$",
        "a-z0-9_-",
        "a POSIX user name: lowercase letters, digits, '_' and '-', starting with a letter"
        " or '_'; at most 32 characters",
        32,
    ),
]
# Debian package names are lowercase; RHEL ones may carry capitals and '_'
# (NetworkManager, python3-PyYAML), so both are allowed. None of these is special to a shell.
PackageName = Annotated[
    str,
    Identifier(
        "package name",
        r"^[A-Za-z0-9][A-Za-z0-9_+.-]*$",
        "A-Za-z0-9_+.-",
        "letters, digits, '+', '.', '_' and '-', starting with a letter or digit",
        128,
    ),
]
# A leading '-' would read as an option to systemctl, so the first character is alphanumeric.
UnitName = Annotated[
    str,
    Identifier(
        "unit name",
        r"^[A-Za-z0-9][A-Za-z0-9@._:-]*$",
        "A-Za-z0-9@._:-",
        "a systemd unit name: letters, digits, '@', '.', '_', ':' and '-',"
        " starting with a letter or digit",
        255,
    ),
]
AwsRegion = Annotated[
    str,
    Identifier(
        "AWS region",
        r"^[a-z]{2}(-[a-z]+)+-\d$",
        "a-z0-9-",
        "an AWS region code such as eu-west-1 or us-east-2",
        32,
    ),
]
InstanceId = Annotated[
    str,
    Identifier(
        "instance id",
        r"^i-[0-9a-f]{8,17}$",
        "a-z0-9-",
        "'i-' followed by 8 to 17 lowercase hex digits, e.g. i-0abc12345def67890",
        19,
    ),
]
RackspaceRegion = Annotated[
    str,
    Identifier(
        "Rackspace region",
        r"^[A-Z]{3}$",
        "A-Z",
        "a Rackspace region code: three capital letters (DFW, ORD, IAD, LON, SYD, HKG)",
        3,
    ),
]
EstateName = Annotated[
    str,
    Identifier(
        "estate name",
        r"^[a-z0-9-]{1,20}$",
        "a-z0-9-",
        "1-20 characters: lowercase letters, digits and '-'",
        20,
    ),
]
Email = Annotated[
    str,
    Identifier(
        "email address",
        r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$",
        "A-Za-z0-9._%+@-",
        "an email address such as ops@example.com",
        254,
        format="email",
    ),
]

# ---- free text


def _single_line(value: str) -> str:
    bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise fail(
            f"text contains control characters: {char_list(bad)}",
            "a single line of printable text",
        )
    return value


@dataclass(frozen=True)
class SingleLine(_Rule):
    """One line of printable text, stripped, of ``min_length`` to ``max_length`` characters."""

    min_length: int
    max_length: int

    def __iter__(self) -> Iterator[object]:
        yield StringConstraints(
            strip_whitespace=True, min_length=self.min_length, max_length=self.max_length
        )
        yield AfterValidator(_single_line)


Text = Annotated[str, SingleLine(1, 200)]
Reason = Annotated[str, SingleLine(10, 500)]
TagValue = Annotated[str, SingleLine(1, 255)]

# ---- host addresses and URLs

_ADDRESS_FORBIDDEN = re.compile(r"[^A-Za-z0-9.:-]")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDRESS_ALLOWED = (
    "an IPv4 or IPv6 literal, or a DNS host name: letters, digits, '-' and '.' (IPv6 also ':')"
)


def _host_problem(value: str) -> str | None:
    """Why ``value`` is not an IP literal or DNS host name, or None if it is one."""
    bad = sorted(set(_ADDRESS_FORBIDDEN.findall(value)))
    if bad:
        return f"contains characters that are not allowed: {char_list(bad)}"
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
        raise fail(f"address {value!r} {problem}", _ADDRESS_ALLOWED)
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
        raise fail(
            f"URL {value!r} contains characters that are not allowed: {char_list(bad)}",
            _URL_ALLOWED,
        )
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise fail(f"URL {value!r} must start with http:// or https://", _URL_ALLOWED)
    try:
        port = parts.port
    except ValueError:
        raise fail(f"URL {value!r} has an invalid port", "a port in 1..65535") from None
    if port == 0:
        raise fail(f"URL {value!r} has an invalid port", "a port in 1..65535")
    host = parts.hostname or ""
    problem = _host_problem(host) if host else "is missing"
    if problem:
        raise fail(f"URL {value!r}: host {host!r} {problem}", _URL_ALLOWED)
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

#: An uptime target in percent: 99.9 allows 0.1 % of the observed, unplanned time down.
SlaTarget = Annotated[StrictFloat, Field(gt=0, le=100)]

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
        raise fail(
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
    raise fail(f"{value!r} is not a duration", _DURATION_ALLOWED)


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


_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^(\d+|(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$"},
            {"type": "integer", "minimum": 1},
        ]
    }
)
_DURATION_SERIALIZER = PlainSerializer(format_duration, return_type=str, when_used="json")


@dataclass(frozen=True)
class Duration(_Rule):
    """A positive whole number of seconds up to ``maximum``, read by :func:`parse_duration`."""

    maximum: timedelta

    def check(self, value: timedelta) -> timedelta:
        """``value`` if it is in bounds, else the validation error naming what is wrong."""
        most = format_duration(self.maximum)
        allowed = f"more than 0s and at most {most}; {_DURATION_ALLOWED}"
        if value.microseconds:
            raise fail(f"duration {value} is not a whole number of seconds", allowed)
        if value <= timedelta(0):
            raise fail(f"duration {format_duration(value)} must be positive", allowed)
        if value > self.maximum:
            raise fail(f"duration {format_duration(value)} is longer than {most}", allowed)
        return value

    def __iter__(self) -> Iterator[object]:
        yield BeforeValidator(parse_duration)
        yield AfterValidator(self.check)
        yield _DURATION_SERIALIZER
        yield _DURATION_SCHEMA


WindowDuration = Annotated[timedelta, Duration(timedelta(hours=24))]
ApprovalTimeout = Annotated[timedelta, Duration(timedelta(days=7))]
RestoreTimeout = Annotated[timedelta, Duration(timedelta(hours=24))]
CheckTimeout = Annotated[timedelta, Duration(timedelta(minutes=5))]

# ---- clock times and cron expressions

_CLOCK_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_CLOCK_ALLOWED = 'HH:MM on a 24-hour clock, 00:00..23:59, e.g. "02:00"'


def _parse_clock(value: object) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        match = _CLOCK_RE.fullmatch(value.strip())
        if match:
            return time(int(match.group(1)), int(match.group(2)))
    raise fail(f"{value!r} is not a time of day", _CLOCK_ALLOWED)


def _format_clock(value: time) -> str:
    return value.strftime("%H:%M")


ClockTime = Annotated[
    time,
    BeforeValidator(_parse_clock),
    PlainSerializer(_format_clock, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"}),
]


def _check_cron(value: str) -> str:
    expression = " ".join(value.split())
    problem = cron_problem(expression)
    if problem:
        raise fail(f"cron expression {value!r} {problem}", CRON_ALLOWED)
    return expression


CronExpression = Annotated[
    str,
    AfterValidator(_check_cron),
    WithJsonSchema({"type": "string", "examples": ["0 2 * * sat"]}),
]

# ---- OpenSSH public keys (an approver's credential)

#: Key types an approver may sign with (``ssh-keygen -Y sign``): Ed25519, ECDSA (also on a
#: FIDO security key) and RSA of at least ``SSH_RSA_MIN_BITS``. DSA is refused outright.
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
SSH_RSA_MIN_BITS = 3072
_SSH_KEY_ALLOWED = (
    "one OpenSSH public key line, as in ~/.ssh/id_ed25519.pub: '<type> <base64> [comment]';"
    f" type {', '.join(SSH_KEY_TYPES)}; RSA of at least {SSH_RSA_MIN_BITS} bits"
)


def _wire_strings(blob: bytes) -> list[bytes]:
    """The SSH wire-format strings (uint32 length + bytes) that make up ``blob``."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise ValueError("truncated length")
        size = int.from_bytes(blob[at : at + 4], "big")
        at += 4
        if at + size > len(blob):
            raise ValueError("truncated value")
        out.append(blob[at : at + size])
        at += size
    return out


def ssh_key_blob(line: str) -> tuple[str, bytes]:
    """``(type, key blob)`` of an OpenSSH public key line; ValueError saying what is wrong."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("is not '<type> <base64 key> [comment]'")
    kind, encoded = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        raise ValueError(f"has key type {kind!r}, which is not allowed")
    try:
        blob = base64.b64decode(encoded, validate=True)
        fields = _wire_strings(blob)
    except (ValueError, binascii.Error):
        raise ValueError("has a key that is not valid base64 of an SSH key") from None
    if not fields or fields[0] != kind.encode():
        raise ValueError(f"has a key whose content is not a {kind} key")
    if kind == "ssh-rsa":
        if len(fields) != 3:
            raise ValueError("has a malformed RSA key")
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < SSH_RSA_MIN_BITS:
            raise ValueError(f"is an RSA key of {bits} bits, fewer than {SSH_RSA_MIN_BITS}")
    return kind, blob


def ssh_key_fingerprint(line: str) -> str:
    """The key's SHA256 fingerprint as ``ssh-keygen -l`` prints it (``SHA256:...``)."""
    _kind, blob = ssh_key_blob(line)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _check_ssh_key(value: str) -> str:
    line = " ".join(value.split())
    try:
        ssh_key_blob(line)
    except ValueError as exc:
        shown = line if len(line) <= 40 else line[:37] + "..."
        raise fail(f"public key {shown!r} {exc}", _SSH_KEY_ALLOWED) from None
    return line


SshPublicKey = Annotated[
    str,
    AfterValidator(_check_ssh_key),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(ssh-ed25519|sk-ssh-ed25519@openssh\.com|ecdsa-sha2-nistp(256|384|521)"
            r"|sk-ecdsa-sha2-nistp256@openssh\.com|ssh-rsa) [A-Za-z0-9+/]+={0,2}( .*)?$",
            "maxLength": 4096,
            "examples": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice@laptop"],
        }
    ),
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
