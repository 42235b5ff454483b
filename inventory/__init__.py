"""The client inventory: what ``clients/<slug>.yaml`` may say, and how it is read.

One YAML file per client describes who the client is (slug, time zone, approvers,
notification blocks), when maintenance happens (cadence and window), how changes roll
out, the patch, restore-test and snapshot policies, and the servers with their SSH
access, snapshot provider, health checks and allowed listening ports.

The package, one concern per module, lower ones first:

* :mod:`inventory.base`: the validation error our rules raise, the frozen model base;
* :mod:`inventory.schedule`: window and cron maths, pure functions;
* :mod:`inventory.types`: identifier and value types; every identifier that could ever
  reach a remote shell (host, user, package, systemd unit, block names) is checked
  against a strict allow-list by one rule, :class:`~inventory.types.Identifier`;
* :mod:`inventory.servers` and :mod:`inventory.models`: the pydantic models
  (:class:`ClientInventory` and its parts), frozen and strict about unknown keys;
* :mod:`inventory.document`: safe YAML parsing, duplicate keys, line numbers;
* :mod:`inventory.scope`: :func:`select_servers` and the block references
  (:func:`check_block_references`, which preflight calls with the block names it read
  from the Prefect API: the loader itself is offline);
* :mod:`inventory.schema`: the JSON Schema and the "allowed" hints drawn from it;
* :mod:`inventory.loader`: :func:`load_client`, :func:`load_inventory`,
  :func:`load_client_by_slug`, which turn any problem into an
  :class:`~core.errors.InventoryError` whose lines read
  ``<file>:<line>: <field path>: <what is wrong> (allowed: <what is allowed>)``;
* :mod:`inventory.cli`: ``python -m inventory check clients/*.yaml`` and
  ``python -m inventory schema -o docs/inventory.schema.json``.

The names other layers use are re-exported here, so ``from inventory import Server``
works.
"""

from __future__ import annotations

from inventory.cli import main
from inventory.loader import load_client, load_client_by_slug, load_inventory
from inventory.models import (
    Approver,
    Client,
    ClientInventory,
    Contact,
    MaintenanceWindow,
    PatchPolicy,
    RestoreTest,
    Rollout,
    Schedule,
    SnapshotPolicy,
)
from inventory.schema import inventory_json_schema, schema_json
from inventory.scope import BLOCK_KINDS, check_block_references, select_servers
from inventory.servers import (
    AwsProvider,
    Check,
    HttpCheck,
    JumpHost,
    NoProvider,
    Provider,
    RackspaceProvider,
    SandboxProvider,
    Server,
    ServerDefaults,
    SystemdCheck,
    TcpCheck,
)
from inventory.types import format_duration, parse_duration

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
