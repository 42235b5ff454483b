"""caretaker's blocks: connections, secrets, settings, the inventory and the error family.

Importing any part of caretaker turns Prefect's telemetry off for this process (and the
servers it starts), unless the environment already says otherwise: caretaker never
sends anything anywhere but to the hosts and APIs it is pointed at.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
