"""Hygiene steps in a real maintenance run on sandbox hosts (real clamscan, apt, stress-ng).

The sandbox image carries ClamAV and stress-ng, and its own signature database (no
internet: sandbox/signatures.py). One run: EICAR planted on h03, an unwanted package on
every host, h02 marked critical, staging stress-tested; then a staging host that does not
hold up under stress, which stops the change before approval. The providers' scheduled
events are asked of the moto endpoint (moto returns none; parsing with events is tested
with botocore's Stubber in tests/unit/test_providers.py).
"""

from __future__ import annotations

import importlib.util
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import moto
from sandbox.estate import AwsInstanceSpec, Estate, EstateSpec
from sandbox.signatures import EICAR
from tests.conftest import ssh
from tests.integration.maintenance_world import APPROVE, run, write_client

pytestmark = pytest.mark.integration

HYGIENE = """\
hygiene:
  software: {unwanted: [caretaker-legacy]}
  malware: {paths: [/srv, /root, /nonexistent], max_time: 2m}
  stress: {enabled: true, seconds: 2, vm_percent: 5, max_load_per_cpu: %s}
servers:
"""


def configure(world: dict[str, Any], estate: Estate, slug: str, max_load: str) -> None:
    write_client(world["dir"], estate, slug)
    path = world["dir"] / f"{slug}.yaml"
    text = path.read_text().replace("servers:\n", HYGIENE % max_load, 1)
    text = text.replace(
        "{name: h02, role: production,", "{name: h02, role: production, criticality: critical,", 1
    )
    path.write_text(text)


def installed(estate: Estate, host: str, package: str) -> bool:
    answer = ssh(estate, host, f"dpkg-query -W -f '${{db:Status-Abbrev}}' {package} || true")
    return answer.stdout.startswith("ii")


def test_a_change_scans_removes_what_the_plan_showed_stresses_staging_and_records_it(
    estate: Estate, world: dict[str, Any]
) -> None:
    configure(world, estate, "hyg", "50")
    plant = (
        f"mkdir -p /srv/upload && printf %s {shlex.quote(EICAR.decode())} > /srv/upload/eicar.com"
    )
    assert ssh(estate, "h03", plant).returncode == 0
    try:
        state, record, _ = run("hyg", [APPROVE], change_ref="CHG-HYG-1")
    finally:
        ssh(estate, "h03", "rm -rf /srv/upload")
    assert state.is_completed(), state.message
    plan = record.plan
    # Least critical first: h02 (critical) goes last, whatever its place in the file.
    assert plan.order == ("h03", "h04", "h05", "h02")
    assert {line.split(":")[0] for line in plan.hygiene if "remove caretaker-legacy" in line} == {
        "h01",
        "h02",
        "h03",
        "h04",
        "h05",
    }
    assert any(line.startswith("stress test of h01 after patching: 2 s") for line in plan.hygiene)
    findings = [(f.kind, f.server, f.severity, f.summary) for f in record.hygiene_findings]
    assert (
        "malware",
        "h03",
        "critical",
        "malware: Caretaker.Test.EICAR.UNOFFICIAL in /srv/upload/eicar.com",
    ) in findings
    assert not [f for f in findings if f[0] == "malware" and f[1] != "h03"], findings
    removed = {f[1] for f in findings if f[3] == "removed: caretaker-legacy"}
    assert removed == {"h01", "h02", "h03", "h04", "h05"}
    assert not any(installed(estate, h.name, "caretaker-legacy") for h in estate.spec.hosts)
    assert ("logs", "h01", "info", "log review: no journal on this server") in findings
    staging = next(v for v in record.verifications if v.phase == "staging")
    assert staging.passed and "stress test" in staging.expectations
    assert next(f[3] for f in findings if f[0] == "stress").startswith("stress test held: cpu")
    # Every verification carries the server's load, memory, disk and top processes.
    for verification in record.verifications:
        perf = verification.performance
        assert perf is not None and perf.load_1m is not None and perf.memory_used_pct is not None
        assert perf.top_cpu and perf.top_memory
    assert "hygiene" in record.phase_seconds


def test_a_staging_host_that_does_not_hold_up_under_stress_stops_the_change(
    estate: Estate, world: dict[str, Any]
) -> None:
    # A load bound no server under stress can meet: the real load after the real run fails it.
    configure(world, estate, "hygfail", "0.01")
    state, record, approver = run("hygfail", [APPROVE], change_ref="CHG-HYG-2")
    assert state.is_failed()
    assert record.outcome.value == "staging-failed"
    (staging,) = [v for v in record.verifications if v.phase == "staging"]
    assert not staging.passed
    assert any(f.startswith("stress test: load ") for f in staging.failures), staging.failures
    assert approver.paused_seen == 0  # nobody was asked
    assert ssh(estate, "h02", "dpkg-query -W -f '${Version}' caretaker-agent").stdout == "1.0"


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    if importlib.util.find_spec("moto.server") is None:
        pytest.skip("moto[server] is not installed")
    spec = EstateSpec(
        name="test-hyg-aws",
        net=74,
        hosts=[],
        aws=[AwsInstanceSpec(name="hyg-web-1", region="eu-west-1", client="acme", data_volumes=0)],
    )
    estate = Estate(spec)
    estate.dir.mkdir(parents=True, exist_ok=True)
    try:
        yield moto.start(estate)
    finally:
        estate.down(purge=True)


def test_scheduled_events_are_asked_of_the_ec2_endpoint(
    prefect_api: None, aws_endpoint: str
) -> None:
    from prefect import flow
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    from inventory import Server
    from tasks.providers import scheduled_events

    AwsCredentials(
        aws_access_key_id=moto.ACCESS_KEY,
        aws_secret_access_key=SecretStr(moto.SECRET_KEY),
        aws_client_parameters=AwsClientParameters(endpoint_url=aws_endpoint),
    ).save("caretaker-test-hyg-aws", overwrite=True)

    def server(name: str) -> Server:
        return Server.model_validate(
            {
                "name": name,
                "role": "production",
                "address": "10.0.0.1",
                "ssh_block": "k",
                "os_family": "debian",
                "provider": {
                    "type": "aws",
                    "region": "eu-west-1",
                    "instance_name": name,
                    "credentials_block": "caretaker-test-hyg-aws",
                },
            }
        )

    @flow
    def ask(names: list[str]) -> Any:
        return scheduled_events([server(n) for n in names], "acme")

    asked = ask(["hyg-web-1"], return_state=True)
    assert asked.is_completed() and asked.result() == []  # moto schedules no events
    missing = ask(["hyg-nosuch"], return_state=True)
    assert missing.is_failed()
    assert "no EC2 instance with tag Name=hyg-nosuch" in str(missing.result(raise_on_failure=False))
