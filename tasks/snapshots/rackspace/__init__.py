"""The ``rackspace`` provider: server images through the OpenStack compute and image APIs.

* ``api``: :class:`~.api.RackspaceApi`, identity, the two service endpoints, and the one
  place HTTP failures become snapshot errors (secrets redacted);
* ``provider``: :class:`~.provider.RackspaceSnapshotProvider`, images of one cloud
  server: create, wait, find/list, delete, restore (rebuild), restore test (ServiceNet).
"""

from __future__ import annotations

from tasks.snapshots.rackspace.api import RackspaceApi
from tasks.snapshots.rackspace.provider import SERVICENET, RackspaceSnapshotProvider

__all__ = ["SERVICENET", "RackspaceApi", "RackspaceSnapshotProvider"]
