"""The stress test: ``stress-ng`` after patching, bounded, with metrics and health checks
before and after.

It runs on staging servers after they are patched and verified (before approval), and on
production servers only when the inventory's ``hygiene.stress.allow_production`` says so.
A server that does not hold up fails its verification (:func:`stress_failures`): stress-ng
failed or was killed, the server stopped answering, a health check fails afterwards, or the
load per CPU is still above the bound. The run is bounded by ``seconds`` (stress-ng's own
``--timeout``) and by ``timeout`` 60 s later; the metrics of both readings and stress-ng's
``--metrics-brief`` figures are kept for the change record.
"""

from __future__ import annotations

import re

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import RemoteError
from history.change import Performance
from inventory import Server
from inventory.hygiene import StressTest
from tasks.checks import server_checks, summarize_checks
from tasks.hygiene.base import TIMED_OUT, bounded
from tasks.hygiene.processes import read_performance
from tasks.remote import RemoteHost


def stress_command(policy: StressTest) -> str:
    """The bounded stress-ng command for ``policy`` (pure)."""
    workers = [
        f"--{name} {count}"
        for name, count in (("cpu", policy.cpu), ("vm", policy.vm), ("io", policy.io))
        if count
    ]
    if policy.vm:
        workers.append(f"--vm-bytes {policy.vm_percent // max(policy.vm, 1) or 1}%")
    stress = (
        "command -v stress-ng >/dev/null 2>&1 || { echo 'stress-ng: not installed'; exit 127; };"
        f" exec stress-ng {' '.join(workers)} --timeout {policy.seconds}s --metrics-brief 2>&1"
    )
    return bounded(stress, policy.seconds + 60, idle=False) + ' 2>&1; echo "rc=$?"'


class StressMetric(BaseModel):
    """One stressor's ``--metrics-brief`` row."""

    model_config = ConfigDict(frozen=True)

    stressor: str
    bogo_ops: int
    real_s: float
    usr_s: float
    sys_s: float
    ops_per_s: float


class StressRun(BaseModel):
    """What stress-ng said."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None
    successful: bool = Field(description="stress-ng reported a successful run.")
    seconds: float | None = Field(default=None, description="stress-ng's own run time.")
    metrics: list[StressMetric] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="fail/error lines, shortened.")

    def line(self) -> str:
        """``cpu 529 ops/s, vm 0 ops/s, io 1317 ops/s in 3.8 s``."""
        figures = ", ".join(f"{m.stressor} {m.ops_per_s:g} ops/s" for m in self.metrics)
        took = f" in {self.seconds:g} s" if self.seconds is not None else ""
        return (figures or "no figures") + took


_METRIC = re.compile(
    r"^stress-ng: metrc: \[\d+\] (\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)
_DONE = re.compile(r"(successful|unsuccessful) run completed in ([\d.]+)\s*s")
_PROBLEM = re.compile(r"^stress-ng: (fail|error):\s+\[\d+\]\s+(.*)$")


def parse_stress(text: str) -> StressRun:
    """Parse :func:`stress_command`'s output (pure); the last ``rc=`` line is the exit code."""
    exit_code: int | None = None
    metrics: list[StressMetric] = []
    problems: list[str] = []
    successful, seconds = False, None
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("rc=") and line[3:].lstrip("-").isdigit():
            exit_code = int(line[3:])
            continue
        metric = _METRIC.match(line)
        if metric:
            name, ops, real, usr, sys_, rate = metric.groups()
            metrics.append(
                StressMetric(
                    stressor=name,
                    bogo_ops=int(ops),
                    real_s=float(real),
                    usr_s=float(usr),
                    sys_s=float(sys_),
                    ops_per_s=float(rate),
                )
            )
            continue
        done = _DONE.search(line)
        if done:
            successful, seconds = done.group(1) == "successful", float(done.group(2))
            continue
        problem = _PROBLEM.match(line)
        if problem:
            problems.append(problem.group(2)[:200])
        elif "not installed" in line:
            problems.append(line[:200])
    return StressRun(
        exit_code=exit_code,
        successful=successful and exit_code == 0,
        seconds=seconds,
        metrics=metrics,
        problems=problems,
    )


class StressReport(BaseModel):
    """One server's stress test: the run, the readings around it and the verdict."""

    model_config = ConfigDict(frozen=True)

    server: str
    run: StressRun
    before: Performance | None = None
    after: Performance | None = None
    failures: list[str] = Field(default_factory=list, description="Why it did not hold up.")

    @property
    def held(self) -> bool:
        """Whether the server held up."""
        return not self.failures


def stress_failures(
    run: StressRun,
    after: Performance | str,
    checks_failed: list[str],
    policy: StressTest,
) -> list[str]:
    """Why a server did not hold up under the stress test (pure); empty: it held.

    Args:
        run: what stress-ng said.
        after: the reading after the test, or why it could not be read.
        checks_failed: the health checks failing after the test.
        policy: the inventory's stress settings (the load bound).
    """
    out: list[str] = []
    if run.exit_code == 127:
        out.append("stress test: stress-ng is not installed")
    elif run.exit_code in TIMED_OUT:
        out.append(f"stress test: stress-ng did not end within {policy.seconds + 60} s")
    elif not run.successful:
        why = "; ".join(run.problems[:3]) or f"exit {run.exit_code}"
        out.append(f"stress test: stress-ng failed: {why}")
    if isinstance(after, str):
        out.append(f"stress test: the server did not answer afterwards: {after}")
    elif after.load_1m is not None and after.cpus:
        per_cpu = after.load_1m / after.cpus
        if per_cpu > policy.max_load_per_cpu:
            out.append(
                f"stress test: load {after.load_1m:g} on {after.cpus} CPU(s) afterwards"
                f" (above {policy.max_load_per_cpu:g} per CPU)"
            )
    out += [f"stress test: afterwards {check}" for check in checks_failed]
    return out


@task(name="stress-test", cache_policy=NO_CACHE, task_run_name="stress-test-{server.name}")
def stress_test(server: Server, host: RemoteHost, policy: StressTest) -> StressReport:
    """Stress the server within its bound; read the metrics and run its health checks
    before and after; decide whether it held up.

    Never raises for a server that did not hold up: that is the report's verdict.
    """
    before = read_performance(host)
    try:
        result = host.run(stress_command(policy), sudo=True, timeout=policy.seconds + 90)
        run = parse_stress(result.stdout)
    except RemoteError as exc:
        run = StressRun(exit_code=None, successful=False, problems=[str(exc)[:200]])
    after: Performance | str
    try:
        host.close()  # a fresh session: the old one may not have survived
        after = read_performance(host)
    except RemoteError as exc:
        after = str(exc)[:300]
    checks_failed = summarize_checks(server_checks(server, host))[1]
    return StressReport(
        server=server.name,
        run=run,
        before=before,
        after=None if isinstance(after, str) else after,
        failures=stress_failures(run, after, checks_failed, policy),
    )
