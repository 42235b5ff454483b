"""One VM host per example client in the demo's inventory copy.

The example clients' servers are namespace hosts of the sandbox estate (sshd only: no
systemd, no journal, no firewall tool, so the audit and the verification say "unknown"
for those). The demo adds to each client of its inventory copy one production server
``<slug>-vm-1`` that is a VM of the same estate (``provider: {type: sandbox, machine:
vm}``, see docs/sandbox.md): real systemd, journal, nftables and reboots, checked for
real (a ``systemd`` health check on ``ssh.service``). Its address is the next one after
the client's last server.
"""

from __future__ import annotations

from typing import Any


def add_vm_host(data: dict[str, Any], estate: str = "demo") -> str:
    """Add the client's VM host to a client file's data (idempotent); its name.

    Args:
        data: a client file as loaded from YAML (``client``, ``servers``, ...).
        estate: the sandbox estate the VM belongs to.
    """
    servers: list[dict[str, Any]] = data["servers"]
    name = f"{data['client']['slug']}-vm-1"
    if any(server["name"] == name for server in servers):
        return name
    last = max(servers, key=lambda s: int(str(s["address"]).rsplit(".", 1)[1]))
    prefix, octet = str(last["address"]).rsplit(".", 1)
    servers.append(
        {
            "name": name,
            "role": "production",
            "address": f"{prefix}.{int(octet) + 1}",
            "provider": {"type": "sandbox", "estate": estate, "machine": "vm"},
            "checks": [{"type": "tcp", "port": 22}, {"type": "systemd", "unit": "ssh.service"}],
        }
    )
    return name
