"""The sandbox estate caretaker's demo and integration tests run on (test equipment, not product).

Namespace hosts with real sshd (``estate``), their throwaway isolated copies
(``isolated``), the machine-level helpers both use (``system``), the apt repository
(``repo``), faults, moto and the webhook receiver. Only ``tasks.snapshots.sandbox``
of the product imports it (DESIGN section 2).
"""

from __future__ import annotations
