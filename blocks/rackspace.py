"""The Rackspace (OpenStack) credentials block: who caretaker is to a Rackspace cloud account.

Rackspace authenticates with its identity service v2.0 and an API key
(``RAX-KSKEY:apiKeyCredentials``); the token it returns carries the service catalog
(compute and image endpoints per region). The snapshot provider
(``tasks/snapshots/rackspace.py``) asks this block for the authentication request and
does the HTTP itself; the block holds no client and never prints the key.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

RACKSPACE_IDENTITY_URL = "https://identity.api.rackspacecloud.com/v2.0"


class RackspaceCredentials(Block):
    """Credentials for a Rackspace Cloud (OpenStack) account: user name and API key.

    Attributes:
        auth_url: Identity service v2.0 root; ``/tokens`` is appended.
        username: The account's user name.
        api_key: The user's API key (Rackspace control panel: Account Settings).
        tenant_id: The account (tenant) number; optional, narrows the token.
        region: Default region (DFW, ORD, IAD, LON, SYD, HKG); the inventory's wins.
        timeout_s: Seconds for each HTTP request.

    Example:
        ```python
        credentials = RackspaceCredentials.load("globex-rackspace")
        body = credentials.auth_request()
        ```
    """

    _block_type_name = "Caretaker Rackspace Credentials"
    _block_type_slug = "caretaker-rackspace-credentials"
    _description = "Rackspace Cloud (OpenStack) user name and API key for server images."

    auth_url: str = Field(
        default=RACKSPACE_IDENTITY_URL,
        description="Identity service v2.0 URL; /tokens is appended.",
    )
    username: str = Field(description="Rackspace Cloud user name.")
    api_key: SecretStr = Field(description="The user's API key.")
    tenant_id: str | None = Field(default=None, description="Account (tenant) number; optional.")
    region: str | None = Field(
        default=None,
        description="Default region code (DFW, ORD, IAD, LON, SYD, HKG); the inventory's wins.",
    )
    timeout_s: float = Field(
        default=30, gt=0, le=300, description="Seconds allowed for each HTTP request."
    )

    def auth_request(self) -> dict[str, Any]:
        """The body of ``POST <auth_url>/tokens`` (identity v2.0, API-key credentials).

        Returns:
            ``{"auth": {"RAX-KSKEY:apiKeyCredentials": {...}, "tenantId"?: ...}}``.
        """
        auth: dict[str, Any] = {
            "RAX-KSKEY:apiKeyCredentials": {
                "username": self.username,
                "apiKey": self.api_key.get_secret_value(),
            }
        }
        if self.tenant_id:
            auth["tenantId"] = self.tenant_id
        return {"auth": auth}

    def secrets(self) -> list[str]:
        """Values that must never appear in messages (the API key)."""
        return [self.api_key.get_secret_value()]
