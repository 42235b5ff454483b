"""Save the sandbox estate's credentials as the Prefect blocks the example inventory names.

- ``caretaker-sandbox-ssh``: the estate's SSH key and its generated known_hosts;
- ``caretaker-sandbox-aws``: credentials for the estate's AWS endpoint (moto).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from blocks.ssh import SshIdentity

if TYPE_CHECKING:
    from sandbox.estate import Estate

SSH_BLOCK = "caretaker-sandbox-ssh"
AWS_BLOCK = "caretaker-sandbox-aws"


def ssh_identity(estate: Estate) -> SshIdentity:
    """The estate's SSH identity (key + known_hosts), as a block (not saved)."""
    return SshIdentity(
        username="root",
        private_key=SecretStr(estate.key_path.read_text()),
        known_hosts=estate.known_hosts_path.read_text(),
    )


def register_blocks(estate: Estate, aws_endpoint: str | None) -> list[str]:
    """Save (overwrite) the sandbox blocks on the current Prefect API; return their names."""
    saved = [SSH_BLOCK]
    ssh_identity(estate).save(SSH_BLOCK, overwrite=True)
    if aws_endpoint:
        from prefect_aws import AwsCredentials
        from prefect_aws.client_parameters import AwsClientParameters

        from sandbox.moto import ACCESS_KEY, SECRET_KEY

        AwsCredentials(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SecretStr(SECRET_KEY),
            region_name="eu-west-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=aws_endpoint),
        ).save(AWS_BLOCK, overwrite=True)
        saved.append(AWS_BLOCK)
    return saved
