"""Answer a waiting maintenance run from a shell, signed with your own SSH key.

    python -m deployments.approve list [--client acme]      # or: caretaker-approve list
    python -m deployments.approve RUN_ID --approver alice --key ~/.ssh/id_ed25519
    python -m deployments.approve RUN_ID --approver alice --key ~/.ssh/id_ed25519 --reject \\
        --comment "not this week"
    python -m deployments.approve RUN_ID --approver alice --key ~/.ssh/id_ed25519 --restore

The waiting run (Suspended when it is a deployment's run: no process waits for the
answer, any worker carries it on once answered; Paused when it was called directly)
published what it asks as the run input ``approval-request`` (or
``restore-<server>-request``): the client, the change ref, the production plan and its
digest, and per approver and decision the exact line to sign. This command checks that
the digest is the plan's, shows what you are signing, signs that line with
``ssh-keygen -Y sign -n caretaker-approval`` and your key (a passphrase is asked for on
the terminal, or ssh-agent is used), and resumes the run with the same input as the
form in the Prefect UI. The run verifies the signature against your public key in the
inventory. ``PREFECT_API_URL`` (environment or Prefect profile) says which server, else
the local server ``deployments.server`` started. An API that does not answer is one line
on stderr and exit status 2; a refused answer or bad input is exit status 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from core.errors import ConfigError
from core.settings import telemetry_off
from tasks.approval import NAMESPACE, digest_of, request_key, signed_message

#: What a failed API call can raise (a connection refused, a 4xx/5xx, a bad reply).
API_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError)


def api_errors() -> tuple[type[BaseException], ...]:
    """What a failed Prefect API call raises: caught by the commands and said in one line."""
    import httpx
    from prefect.exceptions import PrefectException

    return (*API_ERRORS, httpx.HTTPError, PrefectException)


def sign_message(message: str, key: Path, *, timeout_s: float = 120) -> str:
    """Sign ``message`` with ``ssh-keygen -Y sign -n caretaker-approval`` and ``key``.

    The message is signed as a file (exactly its bytes), so the terminal stays free for
    the key's passphrase.

    Raises:
        ConfigError: ssh-keygen is missing, or it could not sign (its reason).
    """
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise ConfigError("ssh-keygen is not installed (install openssh-client)")
    with tempfile.TemporaryDirectory(prefix="caretaker-sign-") as folder:
        path = Path(folder) / "message.txt"
        path.write_bytes(message.encode())
        done = subprocess.run(
            [tool, "-Y", "sign", "-q", "-n", NAMESPACE, "-f", str(key.expanduser()), str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        signature = path.with_name("message.txt.sig")
        if done.returncode != 0 or not signature.exists():
            raise ConfigError(f"ssh-keygen could not sign with {key}: {done.stderr.strip()}")
        return signature.read_text()


def message_to_sign(request: dict[str, Any], approver: str, decision: str) -> str:
    """The line ``approver`` signs for ``decision``, checked against the request (pure).

    Raises:
        ConfigError: the request's digest is not its plan's, the decision is not one of
            the question's, the approver has no key listed, or the published line is not
            the one built from the request's own fields.
    """
    if digest_of(request.get("production_plan") or []) != request.get("plan_digest"):
        raise ConfigError("the request's plan digest is not the digest of its plan: not signing")
    decisions = request.get("decisions") or []
    if decision not in decisions:
        raise ConfigError(f"this question is answered with {' or '.join(decisions)}")
    if approver not in (request.get("approvers") or []):
        listed = ", ".join(request.get("approvers") or []) or "nobody"
        raise ConfigError(f"{approver} is not a listed approver with a key (listed: {listed})")
    message = signed_message(
        client=request["client"],
        change_ref=request["change_ref"],
        plan=request["plan_digest"],
        decision=decision,
        approver=approver,
        server=request.get("server"),
    )
    if request["messages"][approver][decision] != message:
        raise ConfigError("the published message does not match the request: not signing")
    return message


def describe(request: dict[str, Any]) -> str:
    """What is being answered, for the terminal (pure)."""
    lines = [f"client {request['client']}, change {request['change_ref']}"]
    if request.get("server"):
        lines.append(f"restore question for {request['server']}")
    lines.append(f"production plan {request['plan_digest']}:")
    for host in request.get("production_plan") or []:
        changes = ", ".join(f"{n} {f or '(new)'} -> {t}" for n, f, t in host["changes"])
        lines.append(f"  {host['server']}: {changes or 'no change'}")
    return "\n".join(lines)


def for_client(runs: list[Any], client: str | None) -> list[Any]:
    """The runs whose ``client`` parameter is ``client`` (all when None) (pure)."""
    if client is None:
        return runs
    return [run for run in runs if (run.parameters or {}).get("client") == client]


@contextmanager
def prefect_api() -> Iterator[str]:
    """Talk to ``PREFECT_API_URL`` (environment or profile), else to the local server if
    it runs; yields the API URL.

    Raises:
        ConfigError: neither (without one, Prefect would start a temporary server of its
            own and find nothing waiting there).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.server import running_server

    url = PREFECT_API_URL.value()
    if url:
        yield str(url)
        return
    local = running_server()
    if local is None:
        raise ConfigError(
            "PREFECT_API_URL is not set and no local caretaker server runs: "
            "export PREFECT_API_URL=http://<server>:4200/api"
        )
    with temporary_settings({PREFECT_API_URL: f"{local}/api"}):
        yield f"{local}/api"


def waiting_runs(client: str | None = None) -> list[Any]:
    """Flow runs paused for an answer (of one client's, when given)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    with get_client(sync_client=True) as api:
        runs = api.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused", "Suspended"]))
            ),
            limit=200,
        )
    return for_client(list(runs), client)


def answer_run(
    run_id: UUID,
    *,
    approver: str,
    key: Path,
    decision: str,
    comment: str = "",
    ticket: str = "",
    show: bool = True,
) -> dict[str, str]:
    """Sign ``decision`` on the question ``run_id`` waits on and resume it.

    Returns:
        The run input sent.
    """
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    if run.state is None or not run.state.is_paused():
        raise ConfigError(f"flow run {run_id} is not waiting for an answer")
    pause_key = str(run.state.state_details.pause_key or "")
    request = read_flow_run_input(request_key(pause_key), flow_run_id=run_id)
    if not isinstance(request, dict):
        raise ConfigError(f"flow run {run_id} published no request to sign ({pause_key})")
    message = message_to_sign(request, approver, decision)
    if show:
        print(describe(request))
        print(f"signing: {message}")
    run_input = {
        "decision": decision,
        "approver": approver,
        "signature": sign_message(message, key),
        "comment": comment,
    }
    if request.get("question") == "approval":
        run_input["ticket"] = ticket
    resume_flow_run(run_id, run_input=run_input)
    return run_input


def _list(client: str | None) -> int:
    runs = waiting_runs(client)
    for run in runs:
        params = run.parameters or {}
        pause_key = run.state.state_details.pause_key if run.state else ""
        state = run.state.name if run.state else "?"  # Suspended: no process holds it
        print(
            f"{run.id}  {run.name:<24} client={params.get('client')} "
            f"change_ref={params.get('change_ref')} waiting on {pause_key} ({state})"
        )
    if not runs:
        print("no run is waiting for an answer" + (f" for {client}" if client else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="python -m deployments.approve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="flow-run id, or 'list' to show waiting runs")
    parser.add_argument("--approver", help="your name as listed for the client")
    parser.add_argument(
        "--key", type=Path, help="your private key (its public half is in the inventory)"
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--reject", action="store_true", help="reject instead of approve")
    choice.add_argument("--restore", action="store_true", help="restore question: restore")
    choice.add_argument("--leave", action="store_true", help="restore question: leave it")
    parser.add_argument("--client", help="list: only this client's runs")
    parser.add_argument("--comment", default="")
    parser.add_argument("--ticket", default="")
    args = parser.parse_args(argv)
    return against_api(lambda: _command(parser, args), unreachable=2)


def against_api(command: Callable[[], int], *, unreachable: int) -> int:
    """Run a command's body against the Prefect API (:func:`prefect_api`); returns its exit
    status. A ``ConfigError`` is exit status 1 and an API that does not answer is
    ``unreachable``, each said in one line on stderr, never a traceback."""
    try:
        with prefect_api():
            return command()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except api_errors() as exc:
        print(
            f"error: the Prefect API did not answer: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return unreachable


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.run == "list":
        return _list(args.client)
    if not args.approver or not args.key:
        parser.error("--approver and --key are required")
    try:
        run_id = UUID(args.run)
    except ValueError:
        parser.error(f"not a flow-run id: {args.run}")
    decision = (
        "reject"
        if args.reject
        else "restore"
        if args.restore
        else "leave"
        if args.leave
        else "approve"
    )
    answer_run(
        run_id,
        approver=args.approver,
        key=args.key,
        decision=decision,
        comment=args.comment,
        ticket=args.ticket,
    )
    print(f"{decision} signed and sent for flow run {run_id} as {args.approver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
