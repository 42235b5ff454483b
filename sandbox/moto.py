"""The AWS endpoint of the sandbox: moto in server mode on a free loopback port.

The estate's AWS-backed hosts are registered there as EC2 instances (Name tag =
host name, tagged with the client), each with a root volume and data volumes,
so every AWS code path of caretaker talks to a real HTTP endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from core.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.estate import Estate

ACCESS_KEY = "sandbox-access-key"
SECRET_KEY = "sandbox-secret-key"  # noqa: S105 - moto accepts any credentials


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _state_file(estate: Estate) -> Any:
    return estate.dir / "moto.json"


def endpoint(estate: Estate) -> str | None:
    """The running endpoint's URL, or None."""
    path = _state_file(estate)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        return None
    return str(state["url"])


def start(estate: Estate) -> str:
    """Start moto (once) and register the estate's AWS instances; return the URL."""
    url = endpoint(estate)
    if url:
        return url
    port = _free_port()
    env = dict(os.environ, MOTO_EC2_LOAD_DEFAULT_AMIS="false")
    log = open(estate.dir / "moto.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None:
                raise SandboxError(
                    f"moto exited {proc.returncode}: see {estate.dir}/moto.log"
                ) from None
            time.sleep(0.1)
    else:
        proc.kill()
        raise SandboxError("moto did not start within 30s")
    _state_file(estate).write_text(json.dumps({"pid": proc.pid, "url": url}))
    register_instances(estate, url)
    return url


def client(url: str, region: str) -> Any:
    """A boto3 EC2 client on the sandbox endpoint."""
    import boto3

    return boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def register_instances(estate: Estate, url: str) -> None:
    """Create an EC2 instance (plus data volumes) per AWS host of the estate."""
    images: dict[str, str] = {}
    for spec in estate.spec.aws:
        ec2 = client(url, spec.region)
        if spec.region not in images:
            images[spec.region] = ec2.register_image(
                Name="caretaker-sandbox-debian",
                RootDeviceName="/dev/xvda",
                Architecture="x86_64",
                VirtualizationType="hvm",
            )["ImageId"]
        tags = [
            {"Key": "Name", "Value": spec.name},
            {"Key": "caretaker:client", "Value": spec.client},
        ]
        reservation = ec2.run_instances(
            ImageId=images[spec.region],
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.small",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        instance = reservation["Instances"][0]
        zone = instance["Placement"]["AvailabilityZone"]
        for index in range(spec.data_volumes):
            volume = ec2.create_volume(
                AvailabilityZone=zone,
                Size=8,
                VolumeType="gp3",
                Encrypted=True,
                TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
            )
            ec2.attach_volume(
                VolumeId=volume["VolumeId"],
                InstanceId=instance["InstanceId"],
                Device=f"/dev/sd{chr(ord('f') + index)}",
            )


def stop(estate: Estate) -> None:
    """Stop the estate's moto server, if any."""
    path = _state_file(estate)
    if not path.exists():
        return
    pid = json.loads(path.read_text())["pid"]
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    path.unlink()
