"""Fixtures every integration test module may ask for by name.

``estate`` (module-scoped: five sandbox hosts, h01 staging, h02..h05 production) and
``world`` (per test: fresh packages, a client folder, a webhook inbox, fast settings)
come from maintenance_world.py, with the helpers that go with them (``run``,
``Approver``, ``write_client``). A module that defines its own ``estate`` uses its own.
"""

from tests.integration.maintenance_world import estate, world

__all__ = ["estate", "world"]
