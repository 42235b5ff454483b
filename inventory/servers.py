"""The servers of an inventory: how each is reached, snapshotted and checked.

A server names its SSH access (address, port, user, identity block, optional bastion),
its OS family, its snapshot provider (``aws``, ``rackspace``, ``sandbox``, or ``none``
with a recorded reason), its health checks and the TCP ports allowed to listen. Keys in
:data:`DEFAULTABLE_KEYS` may come from the inventory's ``defaults`` instead.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import ConfigDict, Field, StrictBool, StrictInt, model_validator

from inventory.base import Model, duplicates, fail
from inventory.hygiene import Criticality
from inventory.types import (
    Address,
    AwsRegion,
    BlockName,
    CheckTimeout,
    EstateName,
    HttpUrl,
    InstanceId,
    OsFamily,
    Port,
    RackspaceRegion,
    Reason,
    Role,
    ServerName,
    SlaTarget,
    TagValue,
    UnitName,
    UnixUser,
)

#: Keys of ``defaults`` that are copied into every server that does not set them itself.
DEFAULTABLE_KEYS: tuple[str, ...] = (
    "ssh_block",
    "user",
    "port",
    "os_family",
    "jump",
    "checks",
    "allowed_ports",
    "allowed_services",
)

# ---- snapshot providers


class AwsProvider(Model):
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
            raise fail(
                f"{given} of instance_id and instance_name given",
                "exactly one of instance_id (i-...) or instance_name (the Name tag)",
                ("instance_id",) if given == "both" else (),
            )
        return self


class RackspaceProvider(Model):
    """Snapshots through Rackspace / OpenStack images."""

    type: Literal["rackspace"] = Field(description="Provider type.")
    server_id: UUID = Field(description="The cloud server's UUID.")
    region: RackspaceRegion = Field(
        description="Rackspace region code: DFW, ORD, IAD, LON, SYD, HKG."
    )
    credentials_block: BlockName = Field(description="Name of the Rackspace credentials block.")


class SandboxProvider(Model):
    """Snapshots of a host of the local sandbox estate (demo and tests)."""

    type: Literal["sandbox"] = Field(description="Provider type.")
    estate: EstateName = Field(
        default="demo",
        description="Name of the sandbox estate the host belongs to (python -m sandbox --estate).",
    )
    machine: Literal["namespace", "vm"] = Field(
        default="namespace",
        description=(
            "namespace: a host in a network namespace (sshd only, no systemd); vm: a QEMU"
            " virtual machine with systemd, journal and nftables (docs/sandbox.md)."
        ),
    )


class NoProvider(Model):
    """No snapshots for this server; the reason is recorded in every change record."""

    type: Literal["none"] = Field(description="Provider type.")
    reason: Reason = Field(description="Why this server has no snapshots (at least 10 characters).")


Provider = Annotated[
    AwsProvider | RackspaceProvider | SandboxProvider | NoProvider,
    Field(discriminator="type"),
]

# ---- health checks


class TcpCheck(Model):
    """The port accepts a TCP connection (checked from the caretaker host)."""

    type: Literal["tcp"] = Field(description="Check type.")
    port: Port = Field(description="TCP port, 1..65535.")
    timeout: CheckTimeout = Field(
        default=timedelta(seconds=5),
        json_schema_extra={"default": "5s"},
        description="Connect timeout, at most 5m.",
    )


class HttpCheck(Model):
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


class SystemdCheck(Model):
    """A systemd unit is active on the server (checked over SSH)."""

    type: Literal["systemd"] = Field(description="Check type.")
    unit: UnitName = Field(description="Unit name, e.g. nginx.service.")


Check = Annotated[TcpCheck | HttpCheck | SystemdCheck, Field(discriminator="type")]

# ---- the server


class JumpHost(Model):
    """A bastion the SSH connection goes through."""

    address: Address = Field(description="IP literal or DNS name of the bastion.")
    port: Port = Field(default=22, description="SSH port of the bastion.")
    user: UnixUser = Field(default="root", description="User on the bastion.")
    ssh_block: BlockName | None = Field(
        default=None, description="SSH identity block for the bastion; default: the server's."
    )


class ServerDefaults(Model):
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
    allowed_services: tuple[UnitName, ...] | None = Field(
        default=None,
        description="Default allowed enabled services (a server's own list replaces them).",
    )


def _server_schema(schema: dict[str, Any]) -> None:
    # These may come from `defaults`, and `sudo` is derived, so a file need not repeat them.
    required = schema.get("required", [])
    schema["required"] = [k for k in required if k not in (*DEFAULTABLE_KEYS, "sudo")]


class Server(Model):
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
    allowed_services: tuple[UnitName, ...] = Field(
        default=(),
        description=(
            "Services (systemd units, e.g. nginx.service) allowed to be enabled; the audit"
            " flags other enabled services. Empty: no service policy."
        ),
    )
    criticality: Criticality = Field(
        default="medium",
        description=(
            "low, medium, high or critical: the rollout patches the least critical"
            " production servers first."
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
        for index, unit in duplicates(self.allowed_services):
            raise fail(
                f"service {unit!r} is listed more than once",
                "each service once",
                ("allowed_services", index),
            )
        for index, port in duplicates(self.allowed_ports):
            raise fail(
                f"port {port} is listed more than once",
                "each port once, 1..65535",
                ("allowed_ports", index),
            )
        if self.allowed_ports:
            allowed = set(self.allowed_ports)
            if self.port not in allowed:
                raise fail(
                    f"the SSH port {self.port} is not in allowed_ports {list(self.allowed_ports)}",
                    f"a list that includes the SSH port {self.port}",
                    ("allowed_ports",),
                )
            for index, check in enumerate(self.checks):
                if isinstance(check, TcpCheck) and check.port not in allowed:
                    raise fail(
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
