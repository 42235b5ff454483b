"""The ``aws`` provider: the :class:`~tasks.snapshots.base.SnapshotProvider` of one EC2 instance.

A thin composition: it finds the instance, refuses an unencrypted volume up front when
the policy requires encryption without copies, tags what it makes, and hands each step
to the module that knows it (``volumes``, ``images``, ``encryption``, ``catalog``,
``restore``, ``restore_test``), all talking to EC2 through the one boundary in
``endpoint``. See the package docstring for the whole story.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from core.errors import SnapshotError
from inventory import AwsProvider, Server, SnapshotPolicy
from tasks.snapshots.aws.catalog import Catalog
from tasks.snapshots.aws.encryption import Encryption
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.images import create_image, wait_for_image
from tasks.snapshots.aws.instances import Instances, attached_volumes
from tasks.snapshots.aws.restore import VolumeSwap
from tasks.snapshots.aws.restore_test import RestoreTest
from tasks.snapshots.aws.tags import TAG_KIND, TAG_ROOT_DEVICE
from tasks.snapshots.aws.volumes import create_volume_set, wait_for_snapshots
from tasks.snapshots.base import (
    Pace,
    ProviderName,
    RestoreTestResult,
    SnapshotRecord,
    caretaker_tags,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

#: Instance and volume state changes within 10 minutes, looked at every 2 seconds.
AWS_PACE = Pace(state_timeout_s=600, poll_s=2)


class AwsSnapshotProvider:
    """Snapshots of one EC2 instance (found by id or Name tag) in one region.

    Args:
        ec2: A boto3 EC2 client for the provider's region (and endpoint).
        provider: The server's ``aws`` provider entry from the inventory.
        policy: The client's snapshot policy (mode, encryption).
        client: The client slug; when given, ``find`` and ``list`` see only its snapshots.
        pace: Bound for instance and volume state changes during restore and for the
            clean-up of a restore test, seconds between looks, sleep and clock.
    """

    name: ProviderName = "aws"

    def __init__(
        self,
        ec2: EC2Client,
        provider: AwsProvider,
        policy: SnapshotPolicy,
        *,
        client: str | None = None,
        pace: Pace = AWS_PACE,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self.client = client
        self.ec2 = Ec2(ec2, provider.region, pace)
        self.instances = Instances(self.ec2, provider)
        self.encryption = Encryption(self.ec2, policy)
        self.catalog = Catalog(self.ec2, client)

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Take a crash-consistent volume set or an AMI (policy mode), tagged, without waiting.

        Raises:
            SnapshotError: The instance is not found (or not unique), a volume is
                unencrypted while encryption is required without ``encrypted_copy``,
                or EC2 refused.
        """
        instance = self.instances.of(server)
        attached = attached_volumes(instance)
        if not attached:
            raise SnapshotError(
                f"{server.name}: instance {instance['InstanceId']} has no EBS volume"
            )
        volumes = self.ec2.call("describe_volumes", VolumeIds=sorted(attached.values()))
        unencrypted = sorted(v["VolumeId"] for v in volumes["Volumes"] if not v.get("Encrypted"))
        if unencrypted and self.policy.require_encryption and not self.policy.encrypted_copy:
            # Refuse before taking anything: a non-compliant snapshot is not left behind.
            raise SnapshotError(
                f"{server.name}: encryption is required but volume(s) {', '.join(unencrypted)}"
                f" of {instance['InstanceId']} are not encrypted (set encrypted_copy to make"
                " encrypted copies instead)"
            )
        root = instance.get("RootDeviceName") or next(iter(attached))
        tags = {
            **caretaker_tags(client, change_ref, server.name),
            TAG_KIND: self.policy.mode,
            TAG_ROOT_DEVICE: root,
            "Name": f"{server.name} {change_ref}",
        }
        if self.policy.mode == "ami":
            return create_image(self.ec2, server, client, change_ref, instance, tags)
        return create_volume_set(self.ec2, server, client, change_ref, instance, attached, tags)

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Poll until the set (or image) is completed, then apply the encryption policy.

        Making encrypted copies is idempotent (an existing ``caretaker:copy-of`` copy is
        reused), so repeating ``wait`` after a transient error is safe.

        Raises:
            SnapshotError: A snapshot or the image failed (at once, with the provider's
                message), the bound passed (with the ids and their last states), or the
                policy requires encryption that is not there.
        """
        where = f"{record.server} (aws {self.provider.region})"
        if record.kind == "ami":
            record = wait_for_image(self.ec2, record, timeout_s, poll_s, where)
        else:
            wait_for_snapshots(self.ec2, record.ids, timeout_s, poll_s, where)
            record = record.model_copy(update={"state": "completed"})
        return self.encryption.apply(record, timeout_s, poll_s, where)

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """The set or image already taken for ``change_ref`` (a failed one does not count)."""
        usable = [r for r in self.catalog.records(server, change_ref) if r.state != "error"]
        return usable[-1] if usable else None

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """Every caretaker-tagged set and image of the server, oldest first."""
        return self.catalog.records(server)

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the record cannot be deleted: an AMI it backs, or instances running from it."""
        return self.catalog.in_use(record)

    def delete(self, record: SnapshotRecord) -> None:
        """Deregister the image (ami) and delete the snapshots and their encrypted copies.

        Raises:
            SnapshotError: The record is still in use (nothing is deleted), or EC2 refused.
        """
        self.catalog.delete(record)

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Swap the instance's volumes for new ones made from the snapshots.

        The replaced volumes are detached and kept (tagged ``caretaker:replaced-by``):
        deleting the pre-restore disks is a human decision.

        Raises:
            SnapshotError: The record is not completed, the instance is not found, a
                state change did not happen in time, or EC2 refused. The message says
                which devices were already swapped; the instance is then left stopped.
        """
        VolumeSwap(self.instances).restore(server, record)

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Launch a throwaway instance from the snapshot, isolated, and time it to "status ok".

        The instance gets a new security group with no ingress rule and its default
        egress rule revoked, and no public address. Whatever happens, the instance is
        terminated and the group and any temporary AMI deleted; ``cleaned_up`` reports
        whether that worked.

        Returns:
            ok with the RTO in seconds, or ok=False with what failed.
        """
        return RestoreTest(self.instances).run(server, record, timeout_s)
