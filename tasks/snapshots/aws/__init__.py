"""The ``aws`` provider: EBS snapshot sets and AMIs through the EC2 API (boto3).

Two modes, chosen by the client's snapshot policy:

* ``volumes``: one ``CreateSnapshots`` call snapshots every EBS volume of the instance
  at the same instant (a crash-consistent multi-volume set). Each snapshot is tagged
  with the device it was attached at, so a restore knows where it goes back.
* ``ami``: ``CreateImage`` with ``NoReboot=True`` (the server keeps running); the
  record holds the AMI id followed by its snapshot ids.

Everything caretaker makes is tagged ``caretaker:client``, ``caretaker:change-ref``,
``caretaker:server`` and ``caretaker:managed=true``; ``find``/``list`` search by those
tags only, so nothing else in the account is ever touched.

Encryption: the record says whether every snapshot is encrypted. With
``require_encryption`` an unencrypted volume is refused *before* anything is taken;
with ``encrypted_copy`` the unencrypted snapshots get encrypted copies (``CopySnapshot``
``Encrypted=True``, tagged ``caretaker:copy-of``) once they complete, and the record
lists both.

Restore swaps volumes: stop the instance, create a volume from each snapshot in the
instance's zone, detach the current volume at that device (kept, tagged
``caretaker:replaced-by``, never deleted here), attach the new one, start. The restore
test launches a throwaway instance from the AMI (for a volume set: a temporary AMI
registered from the snapshots) in a new security group with no ingress and no egress,
waits for it to run with status checks ok, and always terminates it and deletes the
group and any temporary AMI.

One module per concern:

* ``endpoint``: the one botocore boundary (:func:`~.endpoint.translate`), paging, pace;
* ``tags``: the aws provider's own tags, and EC2's tag lists;
* ``instances``: the instance by id or Name tag; instance and volume waits;
* ``volumes``: volume mode, a set created and waited for;
* ``images``: AMI mode, an image created and waited for, its snapshots tagged;
* ``encryption``: the encryption policy and encrypted copies;
* ``catalog``: find and list by tag, in use, delete (retention);
* ``restore``: restore by volume swap;
* ``restore_test``: the isolated throwaway instance;
* ``provider``: :class:`~.provider.AwsSnapshotProvider`, the composition.
"""

from __future__ import annotations

from tasks.snapshots.aws.provider import AwsSnapshotProvider

__all__ = ["AwsSnapshotProvider"]
