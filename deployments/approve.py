"""Approve or reject a waiting maintenance run from a script, by flow-run id.

    python -m deployments.approve list
    python -m deployments.approve RUN_ID --approver alice [--comment "..."] [--ticket CHG-42]
    python -m deployments.approve RUN_ID --approver alice --reject --comment "not this week"

It sends the same input as the form in the Prefect UI (``resume_flow_run`` with
``run_input``); the server checks it against the form and the flow checks that the
approver is listed for the client. ``PREFECT_API_URL`` says which server.
"""

from __future__ import annotations

import argparse
import sys
from uuid import UUID

from core.settings import telemetry_off


def _list() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused", "Suspended"]))
            ),
            limit=200,
        )
    for run in runs:
        params = run.parameters or {}
        print(
            f"{run.id}  {run.name:<24} client={params.get('client')} "
            f"change_ref={params.get('change_ref')}"
        )
    if not runs:
        print("no run is waiting for approval")
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
    parser.add_argument("--reject", action="store_true", help="reject instead of approve")
    parser.add_argument("--comment", default="")
    parser.add_argument("--ticket", default="")
    args = parser.parse_args(argv)
    if args.run == "list":
        return _list()
    if not args.approver:
        parser.error("--approver is required")
    from prefect.flow_runs import resume_flow_run

    try:
        run_id = UUID(args.run)
    except ValueError:
        parser.error(f"not a flow-run id: {args.run}")
    decision = "reject" if args.reject else "approve"
    resume_flow_run(
        run_id,
        run_input={
            "decision": decision,
            "approver": args.approver,
            "comment": args.comment,
            "ticket": args.ticket,
        },
    )
    print(f"{decision} sent for flow run {run_id} as {args.approver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
