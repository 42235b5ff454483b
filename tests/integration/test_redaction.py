"""No secret leaves a maintenance run: every output of a real run, scanned for planted ones.

Secrets are planted where a real run meets them: a password and a token in what dpkg
prints while patching the staging host (an apt hook that fails, so they land in the
error), and a webhook URL with user info in a notification block that cannot be reached.
The run goes end to end on the sandbox estate against a real Prefect API; then every way
out is read back the way an outsider would read it: the run's logs from the API, its
state message and data, its artifacts, the history store's row, the webhook notices.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from sandbox.estate import Estate
from tasks.notify import save_demo_webhook
from tests.conftest import ssh
from tests.integration.maintenance_world import run, write_client

pytestmark = pytest.mark.integration

SLUG = "leakco"
LEAKY_HOOK = "test-redact-leaky-hook"
HOOK_FILE = "/etc/apt/apt.conf.d/99caretaker-test-leak"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_logs(run_id: str) -> list[str]:
    """Every log line of the flow run and its task runs, as the API serves them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])),
                limit=200,
                offset=len(lines),
            )
            lines += [log.message for log in page]
            if len(page) < 200:
                return lines


def run_artifacts(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])
            )
        )
    return [f"{a.key} {a.description} {json.dumps(a.data, default=str)}" for a in artifacts]


def stored_bodies(client: str) -> list[str]:
    from history.store import open_store

    with open_store() as store, store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT body FROM change_records WHERE client = :client"), {"client": client}
        ).all()
    return [json.dumps(row.body) if not isinstance(row.body, str) else row.body for row in rows]


@pytest.mark.fault
def test_no_planted_secret_reaches_any_output_of_a_maintenance_run(
    world: dict[str, Any], estate: Estate
) -> None:
    password, token, url_secret = (f"{kind}-{uuid.uuid4().hex[:12]}" for kind in "ptu")
    staging = estate.spec.hosts[0].name
    # dpkg's output while patching staging: a hook that prints secrets and fails.
    planted = ssh(
        estate,
        staging,
        f"cat > {HOOK_FILE} <<'EOF'\n"
        f"DPkg::Post-Invoke {{\"echo 'setting up: DB_PASSWORD={password} api_token: {token}'"
        ' >&2; exit 1";};\nEOF',
    )
    assert planted.returncode == 0, planted.stderr
    # A notification block whose URL carries credentials and answers nothing.
    save_demo_webhook(f"http://deploy:{url_secret}@127.0.0.1:{free_port()}/hook", LEAKY_HOOK)
    write_client(world["dir"], estate, SLUG, approval_timeout="1m")
    client_file = world["dir"] / f"{SLUG}.yaml"
    text = client_file.read_text()
    assert "notify: [test-maint-hook]" in text
    client_file.write_text(
        text.replace("notify: [test-maint-hook]", f"notify: [test-maint-hook, {LEAKY_HOOK}]")
    )
    try:
        state, record, _ = run(SLUG, [], change_ref="CHG-LEAK-1")
    finally:
        ssh(estate, staging, f"rm -f {HOOK_FILE}")

    run_id = str(state.state_details.flow_run_id)
    deadline = time.monotonic() + 20
    logs = run_logs(run_id)
    while not any("Finished in state" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.5)  # the API log handler sends in batches
        logs = run_logs(run_id)
    notices = [json.dumps(message) for message in world["inbox"].received]
    outputs = {
        "logs": "\n".join(logs),
        "state message": state.message or "",
        "state data": record.model_dump_json()
        if hasattr(record, "model_dump_json")
        else repr(record),
        "artifacts": "\n".join(run_artifacts(run_id)),
        "store": "\n".join(stored_bodies(SLUG)),
        "notices": "\n".join(notices),
    }

    # The run met every secret: the hook failed the patch, the leaky block failed to send.
    assert record.outcome is not None and record.outcome.value != "completed"
    assert "DB_PASSWORD=***" in outputs["store"] and "api_token: ***" in outputs["store"]
    assert any(LEAKY_HOOK in failure for failure in record.notification_failures)
    assert outputs["logs"] and outputs["artifacts"] and outputs["notices"]
    leaks = [
        f"{secret} in {where}"
        for where, text in outputs.items()
        for secret in (password, token, url_secret)
        if secret in text
    ]
    assert leaks == []
