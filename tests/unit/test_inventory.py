"""The client inventory: models, loader error messages, helpers, schema and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, get_origin
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from core.errors import InventoryError
from inventory import types
from inventory.cli import main
from inventory.loader import load_client, load_client_by_slug, load_inventory
from inventory.models import ClientInventory, MaintenanceWindow, Schedule
from inventory.schema import schema_json
from inventory.scope import check_block_references, select_servers
from inventory.types import Identifier, format_duration, parse_duration

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")

# A small valid client; the bad inputs below are edits of it.
BASE = """\
client:
  slug: demo
  name: Demo Ltd
  timezone: Europe/London
  contact: {name: Ops, email: ops@demo.example}
  approvers:
    - {name: alice, email: alice@demo.example}
  approvals_required: 1
  notify: [demo-webhook]
schedule:
  cadence: quarterly
  window:
    start: "02:00"
    duration: 4h
defaults:
  ssh_block: demo-ssh
  os_family: debian
patch:
  hold: [nginx]
servers:
  - name: demo-stg-1
    role: staging
    address: 10.0.0.1
    provider: {type: sandbox}
    checks:
      - {type: tcp, port: 22}
      - {type: systemd, unit: nginx.service}
  - name: demo-web-1
    role: production
    address: 10.0.0.2
    user: deploy
    port: 22
    provider: {type: aws, region: eu-west-1, instance_name: demo-web-1, credentials_block: demo-aws}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    """BASE with ``old`` replaced by ``new`` (which must occur exactly once)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- examples


def test_example_clients_load_with_the_documented_estate() -> None:
    inventories = load_inventory(CLIENTS)

    assert sorted(inventories) == ["acme", "globex"]
    acme, globex = inventories["acme"], inventories["globex"]
    assert [(s.name, s.role, s.address) for s in acme.servers] == [
        ("acme-stg-1", "staging", "10.213.1.11"),
        ("acme-web-1", "production", "10.213.1.12"),
        ("acme-web-2", "production", "10.213.1.13"),
        ("acme-db-1", "production", "10.213.1.14"),
    ]
    assert [(s.name, s.role, s.address) for s in globex.servers] == [
        ("glx-stg-1", "staging", "10.213.1.21"),
        ("glx-app-1", "production", "10.213.1.22"),
        ("glx-app-2", "production", "10.213.1.23"),
    ]
    for server in (*acme.servers, *globex.servers):
        assert (server.ssh_block, server.user, server.port, server.sudo) == (
            "caretaker-sandbox-ssh",
            "root",
            22,
            False,
        )
        assert server.os_family == "debian"
        assert server.allowed_ports == (22,)
        assert [c.type for c in server.checks] == ["tcp"]
    for server in acme.servers:
        assert server.provider.type == "aws"
        assert server.provider.region == "eu-west-1"
        assert server.provider.instance_name == server.name
        assert server.provider.credentials_block == "caretaker-sandbox-aws"
    assert {s.provider.type for s in globex.servers} == {"sandbox"}

    assert acme.client.timezone == "Europe/London"
    assert [a.name for a in acme.client.approvers] == ["alice", "bob"]
    assert acme.client.notify == ("caretaker-demo-webhook",)
    assert (acme.rollout.batch_size, acme.rollout.failures_tolerated) == (2, 0)
    assert acme.rollout.on_failure == "restore"
    assert (acme.snapshots.retention, acme.snapshots.mode) == (3, "volumes")
    assert acme.schedule.window.duration == timedelta(hours=4)

    assert globex.schedule.cadence == "monthly"
    assert globex.schedule.window.start.strftime("%H:%M") == "22:00"
    assert globex.schedule.window.duration == timedelta(hours=3)
    assert globex.patch.policy == "security"
    assert globex.patch.hold == ("caretaker-legacy",)
    assert (globex.rollout.batch_size, globex.rollout.failures_tolerated) == (1, 1)


def test_example_clients_survive_a_round_trip_through_python_json_and_yaml(
    tmp_path: Path,
) -> None:
    for path in sorted(CLIENTS.glob("*.yaml")):
        inventory = load_client(path)

        assert ClientInventory.model_validate(inventory.model_dump()) == inventory
        as_json = json.loads(inventory.model_dump_json())
        assert ClientInventory.model_validate(as_json) == inventory
        copy = write(tmp_path, yaml.safe_dump(as_json, sort_keys=False), path.name)
        assert load_client(copy) == inventory


def test_example_clients_validate_against_the_committed_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "docs" / "inventory.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(CLIENTS.glob("*.yaml")):
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path


def test_committed_schema_equals_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    committed = (REPO / "docs" / "inventory.schema.json").read_text(encoding="utf-8")

    assert main(["schema"]) == 0
    assert capsys.readouterr().out == committed == schema_json()


def test_the_base_fixture_is_valid(tmp_path: Path) -> None:
    inventory = load_client(write(tmp_path, BASE))

    assert inventory.slug == "demo"
    assert inventory.source == tmp_path / "demo.yaml"
    # defaults merged; sudo derived from the user
    assert inventory.server("demo-stg-1").ssh_block == "demo-ssh"
    assert inventory.server("demo-stg-1").sudo is False
    assert inventory.server("demo-web-1").sudo is True
    assert inventory.server("demo-web-1").user == "deploy"


def test_models_are_frozen() -> None:
    inventory = load_client(CLIENTS / "acme.yaml")

    with pytest.raises(ValidationError):
        inventory.client.slug = "other"  # type: ignore[misc]


def test_anchors_merge_keys_x_keys_and_every_provider_kind_are_supported(tmp_path: Path) -> None:
    text = """\
x-aws: &aws {type: aws, region: us-east-2, credentials_block: demo-aws}
client:
  slug: demo
  name: Demo
  timezone: UTC
  contact: {name: Ops, email: ops@demo.example}
  approvers: [{name: alice, email: a@demo.example}]
schedule: {window: {start: "02:00", duration: 90m}}
defaults:
  ssh_block: demo-ssh
  user: ec2-user
  os_family: rhel
  jump: {address: bastion.demo.example}
servers:
  - {name: stg, role: staging, address: "fd00::11", provider: {<<: *aws, instance_id: i-0abc1234}}
  - name: prd
    role: production
    address: prd-1.demo.example
    sudo: false
    provider:
      type: rackspace
      server_id: 6f1c3a52-1234-4cde-8f00-0123456789ab
      region: DFW
      credentials_block: demo-rackspace
  - name: old
    role: production
    address: 192.0.2.7
    provider: {type: none, reason: "bare metal in the client's own rack"}
"""
    inventory = load_client(write(tmp_path, text))

    stg, prd, old = inventory.servers
    assert stg.provider.type == "aws" and stg.provider.instance_id == "i-0abc1234"
    assert stg.provider.region == "us-east-2"
    assert (stg.user, stg.sudo, stg.os_family) == ("ec2-user", True, "rhel")
    assert prd.sudo is False  # explicit beats derived
    assert stg.jump is not None and stg.jump.address == "bastion.demo.example"
    assert str(prd.provider.server_id) == "6f1c3a52-1234-4cde-8f00-0123456789ab"  # type: ignore[union-attr]
    assert old.snapshots is False and stg.snapshots is True
    assert inventory.schedule.cadence == "quarterly"
    assert inventory.schedule.approval_timeout == timedelta(hours=24)
    assert inventory.rollout.on_failure == "halt"
    assert inventory.block_names() == {
        "ssh": {"demo-ssh"},
        "aws": {"demo-aws"},
        "rackspace": {"demo-rackspace"},
        "notify": set(),
    }


def test_unquoted_times_are_read_as_times_not_base_60_integers(tmp_path: Path) -> None:
    text = edit('start: "02:00"', "start: 22:00")

    assert load_client(write(tmp_path, text)).schedule.window.start.hour == 22


# --------------------------------------------------------------------------- bad inputs

APPROVERS = "  approvers:\n    - {name: alice, email: alice@demo.example}\n"

# (id, file text, substrings every message must contain, text on the offending line or None)
BAD_INPUTS: list[tuple[str, str, list[str], str | None]] = [
    (
        "unknown key with suggestion",
        edit("    port: 22\n", "    prot: 22\n"),
        [
            "servers[1].prot",
            "unknown key 'prot'",
            "did you mean 'port'?",
            "allowed keys: name, role",
        ],
        "prot: 22",
    ),
    (
        "unknown top-level key",
        edit("patch:\n", "pacth:\n"),
        ["pacth", "did you mean 'patch'?", "allowed keys: client, schedule"],
        "pacth:",
    ),
    (
        "bad cadence",
        edit("cadence: quarterly", "cadence: fortnightly"),
        ["schedule.cadence", "'fortnightly'", "allowed: quarterly, monthly, weekly, cron"],
        "cadence: fortnightly",
    ),
    (
        "cron missing for cadence cron",
        edit("cadence: quarterly", "cadence: cron"),
        ["schedule.cron", "cadence is cron but no cron expression", "allowed: a 5-field cron"],
        "schedule:",
    ),
    (
        "cron with four fields",
        edit("cadence: quarterly", 'cadence: cron\n  cron: "0 2 * *"'),
        ["schedule.cron", "has 4 fields, expected 5", "allowed: 5 fields"],
        "cron: ",
    ),
    (
        "cron minute out of range",
        edit("cadence: quarterly", 'cadence: cron\n  cron: "61 2 * * *"'),
        ["schedule.cron", "minute field '61'", "allowed: 5 fields"],
        "cron: ",
    ),
    (
        "cron given without cadence cron",
        edit("cadence: quarterly", 'cadence: quarterly\n  cron: "0 2 * * *"'),
        ["schedule.cron", "only used with cadence: cron", "allowed: remove `cron`"],
        "cron: ",
    ),
    (
        "window start 25:00",
        edit('start: "02:00"', 'start: "25:00"'),
        ["schedule.window.start", "'25:00' is not a time of day", "allowed: HH:MM"],
        "start:",
    ),
    (
        "zero duration",
        edit("duration: 4h", "duration: 0"),
        ["schedule.window.duration", "must be positive", "allowed: more than 0s and at most 24h"],
        "duration:",
    ),
    (
        "negative duration",
        edit("duration: 4h", "duration: -3600"),
        ["schedule.window.duration", "duration -1h must be positive", "at most 24h"],
        "duration:",
    ),
    (
        "duration longer than a day",
        edit("duration: 4h", "duration: 25h"),
        ["schedule.window.duration", "25h is longer than 24h", "allowed:"],
        "duration:",
    ),
    (
        "duration in words",
        edit("duration: 4h", "duration: 4 hours"),
        ["schedule.window.duration", "'4 hours' is not a duration", "'1h30m'"],
        "duration:",
    ),
    (
        "bad timezone",
        edit("timezone: Europe/London", "timezone: Europe/Londn"),
        [
            "client.timezone",
            "unknown time zone 'Europe/Londn'",
            "did you mean 'Europe/London'?",
            "IANA",
        ],
        "timezone:",
    ),
    (
        "duplicate server names",
        edit("  - name: demo-web-1", "  - name: demo-stg-1"),
        ["servers[1].name", "'demo-stg-1' is used more than once", "allowed: unique server names"],
        "- name: demo-stg-1\n    role: production",
    ),
    (
        "production without staging",
        edit("role: staging", "role: production"),
        [
            "servers",
            "production without staging",
            "allowed: at least one server with role: staging",
            "or rollout.no_staging: '<why, and who accepted the risk>'",
        ],
        "servers:",
    ),
    (
        "a no-staging reason beside a staging server",
        edit("patch:\n", "rollout: {no_staging: accepted by CAB-12 in a hurry}\npatch:\n"),
        ["rollout.no_staging", "the client has staging server(s): demo-stg-1"],
        "rollout:",
    ),
    (
        "halt with a failure budget",
        edit("patch:\n", "rollout: {on_failure: halt, failures_tolerated: 2}\npatch:\n"),
        ["rollout.failures_tolerated", "on_failure is halt", "failures_tolerated is 2"],
        "rollout:",
    ),
    (
        "snapshot max_age beyond a week",
        edit("patch:\n", "snapshots: {max_age: 8d}\npatch:\n"),
        ["snapshots.max_age", "longer than 7d"],
        "snapshots:",
    ),
    (
        "bad block name syntax",
        edit("notify: [demo-webhook]", "notify: [Demo_Webhook]"),
        ["client.notify[0]", "'D', 'W', '_'", "allowed: a Prefect block name"],
        "notify:",
    ),
    (
        "shell metacharacters in address",
        edit("address: 10.0.0.2", 'address: "10.0.0.2; reboot"'),
        ["servers[1].address", "' ', ';'", "allowed: an IPv4 or IPv6 literal, or a DNS host name"],
        'address: "10.0.0.2',
    ),
    (
        "command substitution in address",
        edit("address: 10.0.0.2", 'address: "$(reboot)"'),
        ["servers[1].address", "'$', '(', ')'", "allowed: an IPv4"],
        'address: "$(',
    ),
    (
        "invalid IPv4 address",
        edit("address: 10.0.0.2", "address: 10.0.0.300"),
        ["servers[1].address", "is not a valid IPv4 address", "allowed:"],
        "address: 10.0.0.300",
    ),
    (
        "shell metacharacters in package name",
        edit("hold: [nginx]", 'hold: ["nginx`id`"]'),
        ["patch.hold[0]", "'`'", "allowed: letters, digits, '+', '.', '_' and '-'"],
        "hold:",
    ),
    (
        "shell metacharacters in user",
        edit("user: deploy", 'user: "deploy && id"'),
        ["servers[1].user", "' ', '&'", "allowed: a POSIX user name"],
        "user:",
    ),
    (
        "shell metacharacters in unit name",
        edit("unit: nginx.service", 'unit: "nginx.service|sh"'),
        ["servers[0].checks[1].unit", "'|'", "allowed: a systemd unit name"],
        "unit:",
    ),
    (
        "newline in unit name",
        edit("unit: nginx.service", 'unit: "nginx\\nreboot"'),
        ["servers[0].checks[1].unit", "'\\n'", "allowed: a systemd unit name"],
        "unit:",
    ),
    (
        "port 0",
        edit("port: 22\n    provider", "port: 0\n    provider"),
        ["servers[1].port", "greater than or equal to 1", "allowed: 1..65535"],
        "port: 0",
    ),
    (
        "port 70000",
        edit("port: 22\n    provider", "port: 70000\n    provider"),
        ["servers[1].port", "less than or equal to 65535", "allowed: 1..65535"],
        "port: 70000",
    ),
    (
        "check port out of range",
        edit("{type: tcp, port: 22}", "{type: tcp, port: 70000}"),
        ["servers[0].checks[0].port", "less than or equal to 65535", "allowed: 1..65535"],
        "type: tcp",
    ),
    (
        "allowed port out of range",
        edit(
            "    provider: {type: sandbox}",
            "    provider: {type: sandbox}\n    allowed_ports: [22, 0]",
        ),
        ["servers[0].allowed_ports[1]", "greater than or equal to 1", "allowed: 1..65535"],
        "allowed_ports:",
    ),
    (
        "allowed ports repeated",
        edit(
            "    provider: {type: sandbox}",
            "    provider: {type: sandbox}\n    allowed_ports: [22, 22]",
        ),
        [
            "servers[0].allowed_ports[1]",
            "port 22 is listed more than once",
            "allowed: each port once",
        ],
        "allowed_ports:",
    ),
    (
        "allowed ports without the ssh port",
        edit(
            "    provider: {type: sandbox}",
            "    provider: {type: sandbox}\n    allowed_ports: [80]",
        ),
        ["servers[0].allowed_ports", "SSH port 22 is not in allowed_ports", "allowed:"],
        "allowed_ports:",
    ),
    (
        "boolean where a port is expected",
        edit("port: 22\n    provider", "port: true\n    provider"),
        ["servers[1].port", "Input should be a valid integer", "allowed: 1..65535"],
        "port: true",
    ),
    (
        "ami snapshots with a non-aws provider",
        edit("patch:\n", "snapshots: {mode: ami}\npatch:\n"),
        [
            "servers[0].provider.type",
            "mode is ami but server 'demo-stg-1'",
            "allowed: mode: ami only",
        ],
        "type: sandbox",
    ),
    (
        "empty approvers",
        edit(APPROVERS, "  approvers: []\n"),
        ["client.approvers", "at least 1 item", "allowed: a list of at least 1 item"],
        "approvers:",
    ),
    (
        "duplicate approvers",
        edit(APPROVERS, APPROVERS + "    - {name: alice, email: other@demo.example}\n"),
        ["client.approvers[1].name", "'alice' is listed more than once", "allowed:"],
        "other@demo",
    ),
    (
        "approvals_required above the number of approvers",
        edit("approvals_required: 1", "approvals_required: 2"),
        ["client.approvals_required", "only 1 approver(s)", "allowed: 1..1"],
        "approvals_required:",
    ),
    (
        "provider none without reason",
        edit("provider: {type: sandbox}", "provider: {type: none}"),
        [
            "servers[0].provider.reason",
            "Field required",
            "expected: Why this server has no snapshots",
        ],
        "type: none",
    ),
    (
        "provider none with a too short reason",
        edit("provider: {type: sandbox}", "provider: {type: none, reason: legacy}"),
        ["servers[0].provider.reason", "at least 10 characters", "allowed: at least 10 characters"],
        "type: none",
    ),
    (
        "unknown provider type",
        edit("provider: {type: sandbox}", "provider: {type: gcp}"),
        ["servers[0].provider", "unknown type 'gcp'", "allowed: aws, none, rackspace, sandbox"],
        "type: gcp",
    ),
    (
        "aws with both instance_id and instance_name",
        edit(
            "instance_name: demo-web-1,",
            "instance_name: demo-web-1, instance_id: i-0123456789abcdef0,",
        ),
        [
            "servers[1].provider.instance_id",
            "both of instance_id and instance_name",
            "allowed: exactly one",
        ],
        "type: aws",
    ),
    (
        "aws with neither instance_id nor instance_name",
        edit("instance_name: demo-web-1, ", ""),
        ["servers[1].provider", "neither of instance_id and instance_name", "allowed: exactly one"],
        "type: aws",
    ),
    (
        "bad aws region",
        edit("region: eu-west-1", "region: eu-west"),
        [
            "servers[1].provider.region",
            "AWS region 'eu-west' is not valid",
            "allowed: an AWS region code",
        ],
        "type: aws",
    ),
    (
        "ssh block nowhere",
        edit("  ssh_block: demo-ssh\n", ""),
        ["servers[0].ssh_block", "Field required", "set ssh_block on the server or in defaults"],
        "- name: demo-stg-1",
    ),
    (
        "invalid value in defaults is reported once, at defaults",
        edit("  os_family: debian", "  os_family: arch"),
        ["defaults.os_family", "'arch'", "allowed: debian, rhel"],
        "os_family: arch",
    ),
    (
        "http check with a bad scheme",
        edit("{type: tcp, port: 22}", '{type: http, url: "ftp://10.0.0.1/"}'),
        ["servers[0].checks[0].url", "must start with http:// or https://", "allowed:"],
        "type: http",
    ),
    (
        "bad contact email",
        edit("email: ops@demo.example", 'email: "ops at demo"'),
        ["client.contact.email", "' '", "allowed: an email address"],
        "contact:",
    ),
    (
        "SLA target above 100 %",
        edit("patch:\n", "monitoring: {sla_target_pct: 100.5}\npatch:\n"),
        ["monitoring.sla_target_pct", "less than or equal to 100", "allowed: 0..100"],
        "monitoring:",
    ),
    (
        "SLA target as text",
        edit("patch:\n", 'monitoring: {sla_target_pct: "99.9%"}\npatch:\n'),
        ["monitoring.sla_target_pct", "Input should be a valid number"],
        "monitoring:",
    ),
    (
        "confirm_after zero",
        edit("patch:\n", "monitoring: {confirm_after: 0}\npatch:\n"),
        ["monitoring.confirm_after", "greater than or equal to 1"],
        "monitoring:",
    ),
    (
        "server added with a time of day",
        edit("    address: 10.0.0.1\n", "    address: 10.0.0.1\n    added: 2026-10-14T10:00:00\n"),
        ["servers[0].added", "zero time"],
        "added:",
    ),
    (
        "duplicate YAML key",
        edit("    role: production\n", "    role: production\n    role: staging\n"),
        ["servers[1].role", "duplicate key 'role' (first on line 29)", "allowed: each key once"],
        "role: staging\n    address: 10.0.0.2",
    ),
    (
        "slug differs from the file name",
        edit("slug: demo", "slug: demo2"),
        ["client.slug", "'demo2' does not match the file name 'demo.yaml'", "allowed: 'demo'"],
        "slug:",
    ),
    (
        "YAML syntax error",
        edit("  name: Demo Ltd", "  name: [Demo Ltd"),
        ["YAML syntax error", "flow sequence"],
        "timezone:",
    ),
    (
        "unsafe YAML tag",
        "!!python/object/apply:os.system ['true']\n",
        ["YAML error", "could not determine a constructor"],
        "python/object",
    ),
    (
        "empty file",
        "# nothing but a comment\n",
        ["file is empty", "allowed: a mapping with keys client, schedule"],
        None,
    ),
    (
        "list at top level",
        "- client: {slug: demo}\n",
        ["top level is a list", "must be a mapping", "allowed keys: client, schedule"],
        "- client",
    ),
    (
        "servers is not a list",
        edit("servers:\n", "servers: {}\nx_servers:\n"),
        ["servers: Input should be a list", "allowed: a list of at least 1 item"],
        "servers: {}",
    ),
]


def _line_containing(text: str, needle: str) -> int:
    """Line of ``needle``; for a multi-line needle, the line where it starts."""
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1


@pytest.mark.parametrize(
    ("text", "expected", "line_needle"),
    [pytest.param(text, expected, needle, id=name) for name, text, expected, needle in BAD_INPUTS],
)
def test_a_bad_inventory_is_rejected_with_file_line_field_and_what_is_allowed(
    tmp_path: Path, text: str, expected: list[str], line_needle: str | None
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(InventoryError) as caught:
        load_client(path)

    error = caught.value
    assert error.path == str(path)
    assert error.problems, "at least one problem line"
    assert all(p.startswith(str(path)) for p in error.problems), error.problems
    message = str(error)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    if line_needle is not None:
        location = f"{path}:{_line_containing(text, line_needle)}:"
        assert any(p.startswith(location) for p in error.problems), f"{location} not in:\n{message}"


def test_a_bad_inventory_lists_every_problem_not_just_the_first(tmp_path: Path) -> None:
    text = edit("cadence: quarterly", "cadence: fortnightly", edit("port: 22\n", "port: 0\n"))

    with pytest.raises(InventoryError) as caught:
        load_client(write(tmp_path, text))

    assert len(caught.value.problems) == 2


def test_an_unreadable_file_is_an_inventory_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read"):
        load_client(tmp_path / "missing.yaml")


def test_a_yaml_alias_bomb_is_rejected_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(InventoryError, match="unknown key 'a0'"):
        load_client(write(tmp_path, "\n".join(lines) + "\n"))


# --------------------------------------------------------------------------- block references

EXISTING = {
    "ssh": {"demo-ssh"},
    "aws": {"demo-aws"},
    "rackspace": set(),
    "notify": {"demo-webhook"},
}


def test_block_names_lists_every_referenced_block_by_kind(tmp_path: Path) -> None:
    inventory = load_client(write(tmp_path, BASE))

    assert inventory.block_names() == EXISTING
    check_block_references(inventory, None, EXISTING)  # nothing missing: no error


def test_an_unknown_block_names_file_line_field_and_the_existing_blocks(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    inventory = load_client(path)
    existing = {**EXISTING, "aws": {"demo-aws-prod", "other"}}

    with pytest.raises(InventoryError) as caught:
        check_block_references(inventory, path, existing)

    line = line_of(BASE, "credentials_block: demo-aws")
    assert caught.value.problems == [
        f"{path}:{line}: servers[1].provider.credentials_block:"
        " aws block 'demo-aws' does not exist; did you mean 'demo-aws-prod'?"
        " (existing aws blocks: demo-aws-prod, other)"
    ]


def test_a_missing_default_ssh_block_is_reported_once_at_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    inventory = load_client(path)

    with pytest.raises(InventoryError) as caught:
        check_block_references(inventory, path, {**EXISTING, "ssh": set()})

    line = line_of(BASE, "ssh_block: demo-ssh")
    assert caught.value.problems == [
        f"{path}:{line}: defaults.ssh_block: ssh block 'demo-ssh' does not exist"
        " (existing ssh blocks: none)"
    ]


# --------------------------------------------------------------------------- loader functions


def test_load_client_by_slug_finds_the_file_or_lists_the_available_slugs() -> None:
    assert load_client_by_slug(CLIENTS, "globex").slug == "globex"

    with pytest.raises(
        InventoryError, match=r"no client 'acm'.*did you mean 'acme'.*available: acme, globex"
    ):
        load_client_by_slug(CLIENTS, "acm")
    with pytest.raises(InventoryError, match="not a valid slug"):
        load_client_by_slug(CLIENTS, "../etc/passwd")


def test_load_inventory_reports_the_problems_of_every_file(tmp_path: Path) -> None:
    write(tmp_path, edit("port: 22\n", "port: 0\n"))
    write(
        tmp_path,
        edit("slug: demo", "slug: other", edit("cadence: quarterly", "cadence: x")),
        "other.yaml",
    )
    (tmp_path / "stray.yml").write_text(BASE)

    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path)

    problems = caught.value.problems
    assert any("stray.yml" in p and "must end in .yaml" in p for p in problems)
    assert any("demo.yaml" in p and "servers[1].port" in p for p in problems)
    assert any("other.yaml" in p and "schedule.cadence" in p for p in problems)


# --------------------------------------------------------------------------- helpers


def test_lookup_and_role_helpers() -> None:
    acme = load_client(CLIENTS / "acme.yaml")

    assert [s.name for s in acme.staging] == ["acme-stg-1"]
    assert [s.name for s in acme.production] == ["acme-web-1", "acme-web-2", "acme-db-1"]
    assert acme.server("acme-db-1").address == "10.213.1.14"
    assert [[s.name for s in batch] for batch in acme.production_batches()] == [
        ["acme-web-1", "acme-web-2"],
        ["acme-db-1"],
    ]
    with pytest.raises(
        InventoryError, match=r"no server named 'acme-db-2'; did you mean 'acme-db-1'"
    ):
        acme.server("acme-db-2")


@pytest.mark.parametrize(
    ("scope", "names"),
    [
        ("all", ["acme-stg-1", "acme-web-1", "acme-web-2", "acme-db-1"]),
        ("staging", ["acme-stg-1"]),
        ("production", ["acme-web-1", "acme-web-2", "acme-db-1"]),
        ("acme-db-1, staging", ["acme-stg-1", "acme-db-1"]),
        ("acme-web-2,acme-web-2", ["acme-web-2"]),
    ],
)
def test_select_servers_takes_roles_and_names_in_file_order(scope: str, names: list[str]) -> None:
    acme = load_client(CLIENTS / "acme.yaml")

    assert [s.name for s in select_servers(acme, scope)] == names
    assert acme.select(scope) == select_servers(acme, scope)


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (
            "acme-web-3",
            r"no server or role 'acme-web-3'; did you mean 'acme-web-2'\?.*allowed: all",
        ),
        (" , ", "scope is empty"),
    ],
)
def test_select_servers_rejects_unknown_names(scope: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        select_servers(load_client(CLIENTS / "acme.yaml"), scope)


def test_select_servers_rejects_a_scope_that_selects_nothing(tmp_path: Path) -> None:
    inventory = load_client(write(tmp_path, edit("role: production", "role: staging")))

    with pytest.raises(InventoryError, match="selects no server"):
        select_servers(inventory, "production")


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (datetime(2026, 1, 10, 1, 59, tzinfo=LONDON), False),
        (datetime(2026, 1, 10, 2, 0, tzinfo=LONDON), True),
        (datetime(2026, 1, 10, 5, 59, tzinfo=LONDON), True),
        (datetime(2026, 1, 10, 6, 0, tzinfo=LONDON), False),
        # Summer: 02:00 BST is 01:00 UTC; the question may be asked in any zone.
        (datetime(2026, 7, 1, 1, 30, tzinfo=UTC), True),
        (datetime(2026, 7, 1, 5, 0, tzinfo=UTC), False),
        # Spring-forward day (clocks 01:00 GMT -> 02:00 BST): the window is 01:00-05:00 UTC ...
        (datetime(2026, 3, 29, 0, 59, tzinfo=UTC), False),
        (datetime(2026, 3, 29, 1, 30, tzinfo=UTC), True),
        (datetime(2026, 3, 29, 4, 59, tzinfo=UTC), True),
        (datetime(2026, 3, 29, 5, 0, tzinfo=UTC), False),
        # ... while the day before it is 02:00-06:00 UTC.
        (datetime(2026, 3, 28, 1, 30, tzinfo=UTC), False),
        (datetime(2026, 3, 28, 5, 30, tzinfo=UTC), True),
        # Fall-back day: 02:00 GMT is after the repeated hour; 4 elapsed hours.
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), False),
        (datetime(2026, 10, 25, 2, 0, tzinfo=UTC), True),
        (datetime(2026, 10, 25, 5, 59, tzinfo=UTC), True),
        (datetime(2026, 10, 25, 6, 0, tzinfo=UTC), False),
    ],
)
def test_acme_window_is_0200_for_four_hours_london_time(when: datetime, inside: bool) -> None:
    assert load_client(CLIENTS / "acme.yaml").in_window(when) is inside


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (datetime(2026, 1, 10, 21, 59, tzinfo=NEW_YORK), False),
        (datetime(2026, 1, 10, 22, 0, tzinfo=NEW_YORK), True),
        (datetime(2026, 1, 10, 23, 59, tzinfo=NEW_YORK), True),
        (
            datetime(2026, 1, 11, 0, 30, tzinfo=NEW_YORK),
            True,
        ),  # after midnight: previous day's window
        (datetime(2026, 1, 11, 1, 0, tzinfo=NEW_YORK), False),
        # Spring forward 2026-03-08 02:00 EST -> 03:00 EDT: the 7th's window is 03:00-06:00 UTC,
        (datetime(2026, 3, 8, 5, 59, tzinfo=UTC), True),
        (datetime(2026, 3, 8, 6, 0, tzinfo=UTC), False),
        # and the window of the 8th starts at 22:00 EDT = 02:00 UTC on the 9th.
        (datetime(2026, 3, 9, 1, 59, tzinfo=UTC), False),
        (datetime(2026, 3, 9, 2, 0, tzinfo=UTC), True),
    ],
)
def test_globex_window_crosses_midnight_new_york_time(when: datetime, inside: bool) -> None:
    assert load_client(CLIENTS / "globex.yaml").in_window(when) is inside


def test_a_weekday_window_applies_only_on_that_weekday() -> None:
    window = MaintenanceWindow.model_validate(
        {"start": "22:00", "duration": "3h", "weekday": "sat"}
    )

    assert window.contains(datetime(2026, 1, 10, 23, 0, tzinfo=LONDON), LONDON)  # Saturday
    assert window.contains(
        datetime(2026, 1, 11, 0, 30, tzinfo=LONDON), LONDON
    )  # Saturday's, after midnight
    assert not window.contains(datetime(2026, 1, 9, 23, 0, tzinfo=LONDON), LONDON)  # Friday
    assert not window.contains(datetime(2026, 1, 11, 23, 0, tzinfo=LONDON), LONDON)  # Sunday
    assert window.next_start(datetime(2026, 1, 11, 12, 0, tzinfo=LONDON), LONDON) == datetime(
        2026, 1, 17, 22, 0, tzinfo=LONDON
    )


def test_next_window_start_is_the_next_slot_in_the_client_time_zone() -> None:
    acme = load_client(CLIENTS / "acme.yaml")
    globex = load_client(CLIENTS / "globex.yaml")

    nxt = acme.next_window_start(datetime(2026, 1, 10, 1, 0, tzinfo=LONDON))
    assert nxt == datetime(2026, 1, 10, 2, 0, tzinfo=LONDON)
    assert nxt.tzinfo == LONDON
    # strictly after: at (or during) a window, the next one is tomorrow's
    assert acme.next_window_start(datetime(2026, 1, 10, 2, 0, tzinfo=LONDON)) == datetime(
        2026, 1, 11, 2, 0, tzinfo=LONDON
    )
    # the spring-forward morning starts at 02:00 BST = 01:00 UTC
    assert acme.next_window_start(datetime(2026, 3, 29, 0, 0, tzinfo=UTC)) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    assert globex.next_window_start(datetime(2026, 1, 11, 0, 30, tzinfo=NEW_YORK)) == datetime(
        2026, 1, 11, 22, 0, tzinfo=NEW_YORK
    )


def test_windows_between_lists_the_slots_of_a_period() -> None:
    globex = load_client(CLIENTS / "globex.yaml")

    slots = globex.windows_between(
        datetime(2026, 1, 1, tzinfo=NEW_YORK), datetime(2026, 1, 3, tzinfo=NEW_YORK)
    )
    assert [(s.isoformat(), e.isoformat()) for s, e in slots] == [
        ("2025-12-31T22:00:00-05:00", "2026-01-01T01:00:00-05:00"),
        ("2026-01-01T22:00:00-05:00", "2026-01-02T01:00:00-05:00"),
        ("2026-01-02T22:00:00-05:00", "2026-01-03T01:00:00-05:00"),
    ]


def test_window_helpers_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        load_client(CLIENTS / "acme.yaml").in_window(datetime(2026, 1, 10, 2, 0))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"cadence": "quarterly"}, ("0 2 1 1,4,7,10 *", True)),
        ({"cadence": "quarterly", "weekday": "sat"}, ("0 2 1-7 1,4,7,10 6", False)),
        ({"cadence": "monthly"}, ("0 2 1 * *", True)),
        ({"cadence": "monthly", "weekday": "sun"}, ("0 2 1-7 * 0", False)),
        ({"cadence": "weekly"}, ("0 2 * * 1", True)),
        ({"cadence": "weekly", "weekday": "fri"}, ("0 2 * * 5", True)),
        ({"cadence": "cron", "cron": "15  3 * *   mon"}, ("15 3 * * mon", True)),
    ],
)
def test_cron_expression_matches_the_cadence(
    schedule: dict[str, str], expected: tuple[str, bool]
) -> None:
    weekday = schedule.pop("weekday", None)
    window = {"start": "02:00", "duration": "4h", **({"weekday": weekday} if weekday else {})}
    cron, day_or = Schedule.model_validate({**schedule, "window": window}).cron_expression()

    assert (cron, day_or) == expected
    schedules = pytest.importorskip("prefect.client.schemas.schedules")
    schedules.CronSchedule(cron=cron, timezone="Europe/London", day_or=day_or)  # Prefect accepts it


@pytest.mark.parametrize(
    "cron",
    ["0 2 * * *", "*/15 * * * *", "0 0-6/2 1,15 jan-mar mon-fri", "30 22 1-7 * 6", "0 0 * * 7"],
)
def test_valid_cron_expressions_are_accepted_like_prefect_does(cron: str) -> None:
    window = {"start": "02:00", "duration": "1h"}
    assert Schedule.model_validate({"cadence": "cron", "cron": cron, "window": window}).cron == cron
    croniter = pytest.importorskip("prefect._vendor.croniter")
    assert croniter.croniter.is_valid(cron)


@pytest.mark.parametrize(
    "cron", ["@daily", "0 2 * * * *", "0 24 * * *", "0 2 L * *", "0 2 * * mon#1", "5-1 * * * *"]
)
def test_invalid_cron_expressions_are_rejected(cron: str) -> None:
    window = {"start": "02:00", "duration": "1h"}
    with pytest.raises(ValidationError, match="cron expression"):
        Schedule.model_validate({"cadence": "cron", "cron": cron, "window": window})


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("90m", 5400, "1h30m"),
        ("4h", 14400, "4h"),
        ("1d", 86400, "24h"),
        ("1h30m", 5400, "1h30m"),
        ("45s", 45, "45s"),
        (300, 300, "5m"),
        ("300", 300, "5m"),
        ("7d", 604800, "7d"),
    ],
)
def test_durations_parse_and_format(text: str | int, seconds: int, canonical: str) -> None:
    parsed = parse_duration(text)
    assert parsed == timedelta(seconds=seconds)
    assert format_duration(parsed) == canonical
    assert parse_duration(canonical) == parsed


# --------------------------------------------------------------------------- CLI


def test_cli_check_passes_the_examples_and_fails_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(CLIENTS / "acme.yaml"), str(CLIENTS / "globex.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "acme: 1 staging, 3 production" in out

    bad = write(tmp_path, edit("port: 22\n", "port: 70000\n"))
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {bad}" in err
    assert f"{bad}:{line_of(BASE, '    port: 22')}: servers[1].port:" in err


def test_cli_schema_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"

    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text())["title"].startswith("caretaker client inventory")


def test_python_dash_m_inventory_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inventory", "check", "clients/acme.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("ok   clients/acme.yaml  (acme: 1 staging")


def test_monitoring_defaults_and_per_server_target_and_added_day(tmp_path: Path) -> None:
    assert load_client(write(tmp_path, BASE)).monitoring.model_dump() == {
        "confirm_after": 2,
        "sla_target_pct": None,
        "min_coverage_pct": 90.0,
    }
    text = edit("patch:\n", "monitoring: {confirm_after: 3, sla_target_pct: 99.9}\npatch:\n")
    text = edit("    address: 10.0.0.1\n", "    address: 10.0.0.1\n    added: 2026-10-14\n", text)
    text = edit("    user: deploy\n", "    user: deploy\n    sla_target_pct: 99\n", text)
    inventory = load_client(write(tmp_path, text))

    assert inventory.monitoring.confirm_after == 3
    assert inventory.monitoring.sla_target_pct == 99.9
    stg, web = inventory.servers
    assert stg.added == date(2026, 10, 14) and stg.sla_target_pct is None
    assert web.added is None and web.sla_target_pct == 99.0


# --------------------------------------------------------------------------- identifier rule

IDENTIFIER_TYPES = {
    name: value
    for name, value in vars(types).items()
    if get_origin(value) is Annotated and isinstance(value.__metadata__[0], Identifier)
}
IDENTIFIER_SAMPLES = [
    "a", "ab", "web-1", "Web-1", "-web", "web_1", "web.1", "a@b", "a:b", "a+b", "a%b",
    "ops@example.com", "eu-west-1", "i-0abc12345def67890", "DFW", "nginx.service",
    "python3-PyYAML", "_svc", "x" * 20, "x" * 21, "x" * 33, "x" * 65, "x" * 256,
]  # fmt: skip


def test_every_identifier_type_uses_the_one_rule() -> None:
    assert set(IDENTIFIER_TYPES) >= {
        "Slug", "BlockName", "ServerName", "ApproverName", "UnixUser", "PackageName",
        "UnitName", "AwsRegion", "InstanceId", "RackspaceRegion", "EstateName", "Email",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(IDENTIFIER_TYPES))
def test_an_identifier_is_accepted_exactly_when_its_schema_allows_it(name: str) -> None:
    rule = IDENTIFIER_TYPES[name].__metadata__[0]
    adapter = TypeAdapter(IDENTIFIER_TYPES[name])
    schema = adapter.json_schema()
    assert (schema["pattern"], schema["maxLength"]) == (rule.pattern, rule.max_length)
    for value in IDENTIFIER_SAMPLES:
        allowed = re.fullmatch(rule.pattern, value) is not None and len(value) <= rule.max_length
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            assert not allowed, f"{name} refused {value!r}"
            assert exc.errors()[0]["ctx"]["allowed"] == rule.allowed
        else:
            assert allowed, f"{name} accepted {value!r}"


@pytest.mark.parametrize("name", sorted(IDENTIFIER_TYPES))
def test_an_identifier_names_the_shell_characters_it_refuses(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(IDENTIFIER_TYPES[name]).validate_python("a;$(id) `x`")
    message = caught.value.errors()[0]["ctx"]["message"]
    assert "contains characters that are not allowed" in message
    for char in (";", "$", "(", ")", " ", "`"):
        assert repr(char) in message


def test_a_client_without_staging_loads_only_with_its_recorded_reason(tmp_path: Path) -> None:
    text = edit("role: staging", "role: production")
    text = edit(
        "patch:\n",
        "rollout: {no_staging: 'single-server client, accepted by CAB-12'}\npatch:\n",
        text,
    )
    inventory = load_client(write(tmp_path, text))
    assert inventory.staging == ()
    assert inventory.rollout.no_staging == "single-server client, accepted by CAB-12"
