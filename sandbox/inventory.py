"""The estate that the example inventory describes: one sandbox host per server.

Every server of every client file becomes a host at its inventory address
(which must lie in the estate's 10.213.N.0/24), and every ``aws`` server is also
registered in the AWS endpoint as an EC2 instance named after it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from core.errors import SandboxError
from inventory import SandboxProvider, load_inventory
from sandbox.estate import AwsInstanceSpec, EstateSpec, HostSpec


def spec_from_inventory(name: str, directory: Path) -> EstateSpec:
    """Build the estate spec for every client in ``directory``."""
    clients = load_inventory(directory)
    hosts: list[HostSpec] = []
    aws: list[AwsInstanceSpec] = []
    nets: set[int] = set()
    for inv in clients.values():
        for server in inv.servers:
            try:
                ip = ipaddress.IPv4Address(server.address)
            except ValueError:
                raise SandboxError(
                    f"{inv.client.slug}/{server.name}: sandbox hosts need an IPv4 address, "
                    f"not {server.address!r}"
                ) from None
            octets = str(ip).split(".")
            if octets[:2] != ["10", "213"]:
                raise SandboxError(
                    f"{inv.client.slug}/{server.name}: {ip} is outside the sandbox range "
                    "10.213.N.0/24"
                )
            nets.add(int(octets[2]))
            vm = isinstance(server.provider, SandboxProvider) and server.provider.machine == "vm"
            kind: Literal["namespace", "vm"] = "vm" if vm else "namespace"
            hosts.append(HostSpec(name=server.name, address=str(ip), kind=kind))
            if server.provider.type == "aws":
                aws.append(
                    AwsInstanceSpec(
                        name=server.name, region=server.provider.region, client=inv.client.slug
                    )
                )
    if len(nets) != 1:
        raise SandboxError(f"the inventory's servers span several sandbox networks: {sorted(nets)}")
    return EstateSpec(name=name, net=nets.pop(), hosts=hosts, aws=aws)
