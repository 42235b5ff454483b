"""The rackspace provider over real HTTP against the local fake cloud (rackspace_endpoint.py).

Each test reads the outcome back from the cloud's state: images with their metadata,
the image a server runs, servers built and deleted, what the requests were.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from blocks.rackspace import RackspaceCredentials
from core.errors import SnapshotError
from inventory import RackspaceProvider, Server, SnapshotPolicy
from tasks.snapshots.base import Pace, SnapshotRecord
from tasks.snapshots.rackspace.api import RackspaceApi
from tasks.snapshots.rackspace.provider import SERVICENET, RackspaceSnapshotProvider
from tasks.snapshots.tasks import apply_retention, take_snapshot
from tests.integration.rackspace_endpoint import FakeRackspace

pytestmark = pytest.mark.integration


@pytest.fixture()
def cloud() -> Iterator[FakeRackspace]:
    fake = FakeRackspace(page_size=2).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture()
def app(cloud: FakeRackspace) -> Server:
    server_id = cloud.add_server("glx-app-1", region="DFW")
    return Server.model_validate(
        {
            "name": "glx-app-1",
            "role": "production",
            "address": "203.0.113.10",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {
                "type": "rackspace",
                "server_id": server_id,
                "region": "DFW",
                "credentials_block": "globex-rackspace",
            },
        }
    )


def provider(
    cloud: FakeRackspace, app: Server, policy: SnapshotPolicy | None = None
) -> RackspaceSnapshotProvider:
    credentials = RackspaceCredentials(
        auth_url=cloud.auth_url, username=cloud.username, api_key=SecretStr(cloud.api_key)
    )
    assert isinstance(app.provider, RackspaceProvider)
    return RackspaceSnapshotProvider(
        RackspaceApi(credentials, app.provider.region),
        app.provider,
        policy or SnapshotPolicy(),
        client="globex",
        pace=Pace(state_timeout_s=10, poll_s=0.01),
    )


def change() -> str:
    return f"CHG-{uuid.uuid4().hex[:6]}"


def test_a_snapshot_is_an_image_of_the_server_carrying_the_caretaker_metadata(
    cloud: FakeRackspace, app: Server
) -> None:
    ref = change()
    rackspace = provider(cloud, app)
    record = rackspace.create(app, "globex", ref)
    assert record.state == "pending"
    done = rackspace.wait(record, timeout_s=10, poll_s=0.01)
    image = cloud.images[record.ids[0]]
    assert image["status"] == "active" and done.state == "completed"
    assert image["instance_uuid"] == str(app.provider.server_id)  # type: ignore[union-attr]
    assert {
        "caretaker:client": "globex",
        "caretaker:change-ref": ref,
        "caretaker:server": "glx-app-1",
        "caretaker:managed": "true",
    }.items() <= image.items()
    assert done.size_gb == 40 and done.encrypted is None
    polls = [p for m, p in cloud.requests if m == "GET" and record.ids[0] in p]
    assert len(polls) >= 2  # it was seen saving before it was active


def test_a_rerun_with_the_same_change_ref_takes_no_second_image(
    cloud: FakeRackspace, app: Server
) -> None:
    ref = change()
    rackspace = provider(cloud, app)
    first = take_snapshot(rackspace, app, "globex", ref)
    again = take_snapshot(rackspace, app, "globex", ref)
    assert again.reused and again.ids == first.ids
    assert len(cloud.images) == 1


def test_an_image_stuck_saving_times_out_naming_the_image_and_its_status(
    cloud: FakeRackspace, app: Server
) -> None:
    cloud.hold_saving = True
    rackspace = provider(cloud, app)
    record = rackspace.create(app, "globex", change())
    with pytest.raises(
        SnapshotError, match=rf"image {record.ids[0]}: not done after 0.3s \(last state: saving\)"
    ):
        rackspace.wait(record, timeout_s=0.3, poll_s=0.05)


def test_an_image_that_fails_raises_at_once(cloud: FakeRackspace, app: Server) -> None:
    cloud.fail_images = True
    rackspace = provider(cloud, app)
    record = rackspace.create(app, "globex", change())
    with pytest.raises(SnapshotError, match=f"image {record.ids[0]} is in status killed"):
        rackspace.wait(record, timeout_s=60, poll_s=0.01)
    # And a rerun does not count the failed image as this change's snapshot.
    assert rackspace.find(app, record.change_ref) is None


def test_required_encryption_is_refused_before_any_image_is_made(
    cloud: FakeRackspace, app: Server
) -> None:
    with pytest.raises(SnapshotError, match="do not report encryption"):
        provider(cloud, app, SnapshotPolicy(require_encryption=True)).create(
            app, "globex", change()
        )
    assert cloud.images == {}


def test_a_restore_rebuilds_the_server_from_the_image(cloud: FakeRackspace, app: Server) -> None:
    rackspace = provider(cloud, app)
    record = rackspace.wait(rackspace.create(app, "globex", change()), timeout_s=10, poll_s=0.01)
    rackspace.restore(app, record)
    server = cloud.servers[str(app.provider.server_id)]  # type: ignore[union-attr]
    assert server["image"]["id"] == record.ids[0]
    assert server["status"] == "ACTIVE"
    assert (
        "POST",
        f"/compute/DFW/v2/{cloud.tenant}/servers/{server['id']}/action",
    ) in cloud.requests


def test_a_restore_test_builds_a_server_without_public_network_and_deletes_it(
    cloud: FakeRackspace, app: Server
) -> None:
    rackspace = provider(cloud, app)
    record = rackspace.wait(rackspace.create(app, "globex", change()), timeout_s=10, poll_s=0.01)
    result = rackspace.restore_test(app, record, timeout_s=10)

    assert result.ok, result.detail
    assert result.rto_s is not None and result.cleaned_up
    (build,) = cloud.builds
    assert build["imageRef"] == record.ids[0]
    assert build["networks"] == [{"uuid": SERVICENET}]  # ServiceNet only: no PublicNet
    assert build["flavorRef"] == "general1-2"  # the original's flavor
    assert list(cloud.servers) == [str(app.provider.server_id)]  # type: ignore[union-attr]


def test_a_restore_test_whose_build_fails_still_deletes_the_server(
    cloud: FakeRackspace, app: Server
) -> None:
    rackspace = provider(cloud, app)
    record = rackspace.wait(rackspace.create(app, "globex", change()), timeout_s=10, poll_s=0.01)
    cloud.fail_builds = True
    result = rackspace.restore_test(app, record, timeout_s=10)
    assert not result.ok
    assert "No valid host was found" in result.detail
    assert result.cleaned_up
    assert list(cloud.servers) == [str(app.provider.server_id)]  # type: ignore[union-attr]
    deletes = [p for m, p in cloud.requests if m == "DELETE" and "/servers/" in p]
    assert len(deletes) == 1


def test_retention_deletes_old_images_and_keeps_the_one_the_server_runs(
    cloud: FakeRackspace, app: Server
) -> None:
    rackspace = provider(cloud, app)
    records = [
        rackspace.wait(rackspace.create(app, "globex", change()), timeout_s=10, poll_s=0.01)
        for _ in range(4)
    ]
    rackspace.restore(app, records[0])  # the server now runs from the oldest image
    foreign = cloud.add_image(name="someone else's image")

    result = apply_retention(rackspace, app, keep=2, protect_ids=set(records[-1].ids))

    assert set(cloud.images) == {records[0].ids[0], records[2].ids[0], records[3].ids[0], foreign}
    assert [r.ids for r in result.deleted] == [records[1].ids]
    assert [s.record.ids for s in result.skipped] == [records[0].ids]
    assert "glx-app-1" in result.skipped[0].reason
    # Four images on pages of two: the listing followed the next links.
    assert any("marker=" in p for _, p in cloud.requests)


def test_an_expired_token_is_renewed_without_failing_the_call(
    cloud: FakeRackspace, app: Server
) -> None:
    rackspace = provider(cloud, app)
    record = rackspace.create(app, "globex", change())
    cloud.expire_tokens()
    assert rackspace.wait(record, timeout_s=10, poll_s=0.01).state == "completed"
    assert sum(1 for m, p in cloud.requests if p.endswith("/tokens")) == 2


# ---- attached volumes (Cloud Block Storage)


def taken(rackspace: RackspaceSnapshotProvider, app: Server, ref: str) -> SnapshotRecord:
    """This change's snapshot, found or taken, and waited for."""
    return rackspace.wait(take_snapshot(rackspace, app, "globex", ref), timeout_s=10, poll_s=0.01)


def server_id(app: Server) -> str:
    assert isinstance(app.provider, RackspaceProvider)
    return str(app.provider.server_id)


def test_every_attached_volume_is_snapshotted_with_the_image_and_tagged_with_it(
    cloud: FakeRackspace, app: Server
) -> None:
    data = cloud.add_volume(server_id(app), "/dev/xvdb")
    logs = cloud.add_volume(server_id(app), "/dev/xvdc", size_gb=50)
    ref = change()
    rackspace = provider(cloud, app)

    done = rackspace.wait(rackspace.create(app, "globex", ref), timeout_s=10, poll_s=0.01)

    image_id, *snapshot_ids = done.ids
    assert done.state == "completed" and len(snapshot_ids) == 2
    snapshots = [cloud.volume_snapshots[i] for i in snapshot_ids]
    assert {s["volume_id"] for s in snapshots} == {data, logs}
    assert all(s["status"] == "available" for s in snapshots)
    for snapshot in snapshots:
        assert {
            "caretaker:client": "globex",
            "caretaker:change-ref": ref,
            "caretaker:server": "glx-app-1",
            "caretaker:image": image_id,
        }.items() <= snapshot["metadata"].items()
    assert cloud.images[image_id]["caretaker:volumes"] == ",".join(sorted([data, logs]))


def test_volumes_without_block_storage_are_refused_before_anything_is_made(app: Server) -> None:
    bare = FakeRackspace(block_storage=False).start()
    try:
        app = app.model_copy(
            update={
                "provider": app.provider.model_copy(  # type: ignore[union-attr]
                    update={"server_id": bare.add_server("glx-app-1")}
                )
            }
        )
        bare.add_volume(server_id(app), "/dev/xvdb")

        with pytest.raises(SnapshotError, match="no block storage endpoint in DFW"):
            provider(bare, app).create(app, "globex", change())

        assert bare.images == {}
    finally:
        bare.stop()


def test_a_server_without_volumes_needs_no_block_storage(app: Server) -> None:
    bare = FakeRackspace(block_storage=False).start()
    try:
        app = app.model_copy(
            update={
                "provider": app.provider.model_copy(  # type: ignore[union-attr]
                    update={"server_id": bare.add_server("glx-app-1")}
                )
            }
        )
        rackspace = provider(bare, app)
        done = taken(rackspace, app, change())

        assert done.state == "completed" and list(bare.images) == done.ids
    finally:
        bare.stop()


def test_a_failed_volume_snapshot_fails_the_snapshot_and_is_not_reused(
    cloud: FakeRackspace, app: Server
) -> None:
    cloud.add_volume(server_id(app), "/dev/xvdb")
    cloud.fail_volume_snapshots = True
    rackspace = provider(cloud, app)
    record = rackspace.create(app, "globex", change())

    with pytest.raises(SnapshotError, match=f"volume snapshot {record.ids[1]} is in status error"):
        rackspace.wait(record, timeout_s=10, poll_s=0.01)

    assert rackspace.find(app, record.change_ref) is None


def test_a_rerun_finds_the_image_and_its_volume_snapshots_and_takes_none(
    cloud: FakeRackspace, app: Server
) -> None:
    cloud.add_volume(server_id(app), "/dev/xvdb")
    ref = change()
    rackspace = provider(cloud, app)
    first = taken(rackspace, app, ref)

    again = take_snapshot(rackspace, app, "globex", ref)

    assert again.reused and again.ids == first.ids and len(first.ids) == 2
    assert len(cloud.images) == 1 and len(cloud.volume_snapshots) == 1


def test_an_image_whose_volume_snapshot_is_gone_is_not_this_changes_snapshot(
    cloud: FakeRackspace, app: Server
) -> None:
    cloud.add_volume(server_id(app), "/dev/xvdb")
    ref = change()
    rackspace = provider(cloud, app)
    first = taken(rackspace, app, ref)
    del cloud.volume_snapshots[first.ids[1]]

    assert rackspace.find(app, ref) is None
    again = take_snapshot(rackspace, app, "globex", ref)
    assert not again.reused and again.ids[0] != first.ids[0]


def test_a_restore_puts_back_each_volume_from_its_snapshot_at_its_device(
    cloud: FakeRackspace, app: Server
) -> None:
    data = cloud.add_volume(server_id(app), "/dev/xvdb")
    rackspace = provider(cloud, app)
    record = taken(rackspace, app, change())

    rackspace.restore(app, record)

    server = cloud.servers[server_id(app)]
    assert server["image"]["id"] == record.ids[0] and server["status"] == "ACTIVE"
    now_attached = cloud.attached(server_id(app))["/dev/xvdb"]
    assert now_attached != data
    assert cloud.volumes[now_attached]["snapshot_id"] == record.ids[1]
    assert cloud.volumes[now_attached]["status"] == "in-use"
    assert cloud.volumes[data]["status"] == "available"  # the old volume is kept, detached


def test_retention_deletes_an_images_volume_snapshots_with_it(
    cloud: FakeRackspace, app: Server
) -> None:
    cloud.add_volume(server_id(app), "/dev/xvdb")
    rackspace = provider(cloud, app)
    records = [taken(rackspace, app, change()) for _ in range(3)]

    result = apply_retention(rackspace, app, keep=2, protect_ids=set(records[-1].ids))

    assert [r.ids for r in result.deleted] == [records[0].ids]
    assert set(cloud.volume_snapshots) == {records[1].ids[1], records[2].ids[1]}
    assert set(cloud.images) == {records[1].ids[0], records[2].ids[0]}
