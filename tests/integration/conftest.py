"""Fixtures every integration test module may ask for by name.

``estate`` (module-scoped: five sandbox hosts, h01 staging, h02..h05 production) and
``world`` (per test: fresh packages, a client folder, a webhook inbox, fast settings)
come from maintenance_world.py, with the helpers that go with them (``run``,
``Approver``, ``write_client``). A module that defines its own ``estate`` uses its own.

``vm_estate`` (session-scoped: three QEMU VM hosts with systemd, vm1..vm3, with a
per-test ``rollback``) comes from vm_world.py; read its docstring before using it.
"""

from tests.integration.maintenance_world import estate, world
from tests.integration.vm_world import vm_estate

__all__ = ["estate", "vm_estate", "world"]
