"""The shared world of the server-maintenance integration tests: a pytest plugin.

Five sandbox hosts (h01 staging, h02..h05 production), a client file template, a thread
that answers the approval form through the Prefect API as a script or the UI would, and
``run`` (the flow with that thread answering). tests/integration/conftest.py
exposes the ``estate`` (module-scoped: one estate per test module) and ``world`` (per
test: a fresh repository state, client folder, webhook inbox and fast settings) fixtures
to every integration test module, which imports the helpers it needs::

    from tests.integration.maintenance_world import APPROVE, agent, run, write_client
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from sandbox.estate import Estate, numbered_hosts
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from sandbox.webhook import WebhookReceiver
from tasks.notify import save_demo_webhook
from tests.conftest import sandbox_unavailable, ssh

#: A maintenance run as a deployment's worker runs it: the flow in a process of its own
#: (``python -c CHILD <client> <change_ref>``), so a test can SIGKILL it.
CHILD = """
import sys
from flows.server_maintenance import server_maintenance
server_maintenance(client=sys.argv[1], change_ref=sys.argv[2])
"""

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Ask ``probe`` every half second until it answers; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = probe()
        if answer is not None:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:g} s: {what}")


__all__ = [
    "APPROVE",
    "CLIENT",
    "ESTATE",
    "Approver",
    "agent",
    "estate",
    "fresh_world",
    "private_key",
    "public_key",
    "reset_hosts",
    "run",
    "signed_answer",
    "stored_records",
    "world",
    "write_client",
]

ESTATE = "test-maint"
CLIENT = """\
client:
  slug: {slug}
  name: Maint Co {slug}
  timezone: Europe/Paris
  contact: {{name: Ops, email: ops@maint.example}}
  approvers:
    - {{name: alice, email: alice@maint.example, ssh_key: "{alice_key}"}}
    - {{name: bob, email: bob@maint.example, ssh_key: "{bob_key}"}}
  approvals_required: {quorum}
  notify: [test-maint-hook]
schedule:
  cadence: quarterly
  window: {{start: "{start}", duration: {duration}}}
  approval_timeout: {approval_timeout}
rollout: {{batch_size: 2, failures_tolerated: 0, on_failure: restore}}
patch: {{policy: all, hold: [], reboot: if-required}}
restore_test: {{enabled: true, timeout: 2m}}
snapshots: {{retention: 2}}
defaults: {{ssh_block: test-maint-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""


def write_client(
    directory: Path,
    estate: Estate,
    slug: str,
    *,
    quorum: int = 1,
    approval_timeout: str = "10m",
    in_window: bool = True,
) -> None:
    lines = []
    for i, host in enumerate(estate.spec.hosts):
        role = "staging" if i == 0 else "production"
        lines.append(
            f"  - {{name: {host.name}, role: {role}, address: {host.address}, "
            f"provider: {{type: sandbox, estate: {ESTATE}}}, checks: [{{type: tcp, port: 22}}]}}"
        )
    if in_window:
        start, duration = "00:00", "24h"
    else:
        # A one-hour window that starts 6 hours from now (Paris time): never now.
        later = datetime.now(ZoneInfo("Europe/Paris")) + timedelta(hours=6)
        start, duration = f"{later:%H}:00", "1h"
    (directory / f"{slug}.yaml").write_text(
        CLIENT.format(
            slug=slug,
            quorum=quorum,
            start=start,
            duration=duration,
            approval_timeout=approval_timeout,
            servers="\n".join(lines),
            alice_key=public_key("alice"),
            bob_key=public_key("bob"),
        )
    )


@functools.cache
def _keys_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="caretaker-test-approvers-"))


def private_key(name: str) -> Path:
    """``name``'s ed25519 private key (made by ssh-keygen on first use; any name has one)."""
    path = _keys_dir() / name
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
        )
    return path


def public_key(name: str) -> str:
    """``name``'s public key line, as the inventory lists it."""
    return private_key(name).with_suffix(".pub").read_text().strip()


def signed_answer(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The run input for ``answer``, signed as a real approver would sign it.

    ``answer`` holds the form's fields; without a ``signature`` it is signed with the key
    of ``signer`` (default: the approver) over the message of the request's question,
    where ``signed_change``, ``signed_plan``, ``signed_decision`` and ``signed_name``
    replace what is signed (to send a replayed or mismatched proof).
    """
    from deployments.approve import sign_message
    from tasks.approval import signed_message

    fields = dict(answer)
    options = {k: fields.pop(k) for k in list(fields) if k.startswith("signe")}
    if request.get("question") == "restore":
        fields.pop("ticket", None)
    if "signature" not in fields:
        message = signed_message(
            client=request["client"],
            change_ref=options.get("signed_change", request["change_ref"]),
            plan=options.get("signed_plan", request["plan_digest"]),
            decision=options.get("signed_decision", fields["decision"]),
            approver=options.get("signed_name", fields["approver"]),
            server=request.get("server"),
        )
        signer = options.get("signer", fields["approver"])
        fields["signature"] = sign_message(message, private_key(signer))
    return fields


class Approver(threading.Thread):
    """Answers the forms of a client's paused run, one answer per pause, signed.

    Each answer is signed with the approver's key over the message the run published
    (:func:`signed_answer`), exactly as ``python -m deployments.approve`` does; an answer
    may carry its own ``signature``, or ``signer``/``signed_*`` keys to send a bad proof.
    """

    def __init__(self, client: str, answers: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []  # the run inputs sent, signatures included
        self.paused_seen = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateName,
        )
        from prefect.flow_runs import resume_flow_run
        from prefect.input.actions import read_flow_run_input

        from tasks.approval import request_key

        answered: set[tuple[str, str]] = set()
        with get_client(sync_client=True) as client:
            while self.answers and not self.stop.is_set():
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        # Paused: a direct call; Suspended: a deployment's run
                        state=FlowRunFilterState(
                            name=FlowRunFilterStateName(any_=["Paused", "Suspended"])
                        )
                    )
                )
                for run in runs:
                    key = (str(run.id), str(run.state.state_details.pause_key) if run.state else "")
                    if (run.parameters or {}).get("client") != self.client or key in answered:
                        continue
                    answered.add(key)
                    self.paused_seen += 1
                    request = read_flow_run_input(request_key(key[1]), flow_run_id=run.id)
                    answer = signed_answer(request or {}, self.answers.pop(0))
                    self.sent.append(answer)
                    resume_flow_run(run.id, run_input=answer)
                    break
                time.sleep(0.3)


def reset_hosts(estate: Estate, *remove: str) -> None:
    """The repository back to its initial packages, and every host at once (one SSH session
    each) back to their versions, with no reboot pending and the files ``remove`` gone."""
    estate.repo.reset()
    command = (
        "apt-get -q update >/dev/null && apt-get -y -q --allow-downgrades "
        "install caretaker-agent=1.0 caretaker-libsec=1.0 >/dev/null 2>&1; "
        f"rm -f /var/run/reboot-required* {' '.join(remove)}"
    )
    with ThreadPoolExecutor(len(estate.spec.hosts)) as pool:
        list(pool.map(lambda host: ssh(estate, host.name, command), estate.spec.hosts))


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    """Five fresh hosts: h01 staging, h02..h05 production (batches of 2)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    estate = Estate(numbered_hosts(ESTATE, 68, 5))
    estate.up(fresh=True)
    try:
        yield estate
    finally:
        estate.down(purge=True)


@contextmanager
def fresh_world(estate: Estate, folder: Path, env: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What ``world`` gives, in ``folder`` with the settings set through ``env``: for a
    module-scoped fixture whose one run several tests read (a shared run)."""
    reset_hosts(estate)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    ssh_identity(estate).save("test-maint-ssh", overwrite=True)
    with WebhookReceiver() as inbox:
        save_demo_webhook(inbox.url, name="test-maint-hook")
        inventory = folder / "clients"
        inventory.mkdir()
        env.setenv("CARETAKER_INVENTORY_DIR", str(inventory))
        env.setenv("CARETAKER_DATA_DIR", str(folder / "data"))
        env.setenv("CARETAKER_APPROVAL_POLL_S", "0.2")
        env.setenv("CARETAKER_REBOOT_TIMEOUT_S", "8")
        env.setenv("CARETAKER_DPKG_LOCK_TIMEOUT_S", "3")
        yield {"dir": inventory, "inbox": inbox}


@pytest.fixture()
def world(
    estate: Estate, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A fresh repository state per test, the client files and the settings for speed."""
    with fresh_world(estate, tmp_path, monkeypatch) as fresh:
        yield fresh


def agent(estate: Estate, host: str) -> str:
    return ssh(estate, host, "dpkg-query -W -f '${Version}' caretaker-agent").stdout


def run(client: str, answers: list[dict[str, Any]], **params: Any) -> tuple[Any, Any, Approver]:
    """Run the flow with an approver answering; return (final state, record, approver)."""
    from flows.server_maintenance import server_maintenance

    approver = Approver(client, answers)
    approver.start()
    try:
        state = server_maintenance(client=client, return_state=True, **params)
    finally:
        approver.stop.set()
        approver.join(5)
    return state, state.result(raise_on_failure=False), approver


APPROVE = {"decision": "approve", "approver": "alice", "comment": "go", "ticket": "CAB-1"}


def stored_records(client: str) -> list[Any]:
    from history.store import open_store

    with open_store() as store:
        return store.change_records(client)
