"""caretaker's Prefect blocks: SSH identity and known_hosts, Rackspace credentials.

AWS uses prefect-aws's own ``AwsCredentials``. Nothing else lives here: the inventory is
``inventory/``, the error family and settings are ``core/``.
"""

from blocks.rackspace import RackspaceCredentials
from blocks.ssh import SshIdentity

# Re-exported so that `prefect block register -m blocks` registers both block types.
__all__ = ["RackspaceCredentials", "SshIdentity"]
