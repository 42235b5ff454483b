"""Performance at verification: the health check's metrics and the top processes.

One round trip reads the load, the memory, the filesystems (the same commands and parsers
as the facts: :mod:`tasks.facts.server`), the CPU count and the top processes by CPU and
by resident memory (``ps ... --sort``). Processes are named by their command name only:
their arguments can hold secrets, so they are never read.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from core.errors import FactParseError
from history.change import Performance
from tasks.facts.server import DF, LOADAVG, MEMINFO, parse_df, parse_loadavg, parse_meminfo
from tasks.hygiene.base import sections
from tasks.remote import RemoteHost

#: How many processes each list keeps.
TOP = 5
_PS = "ps -eo pid=,user=,pcpu=,pmem=,rss=,comm="

PERFORMANCE = (
    f"echo '=== load'; {LOADAVG}; echo \"rc=$?\"; echo '=== memory'; {MEMINFO}; echo \"rc=$?\";"
    f" echo '=== disks'; {DF} 2>/dev/null; echo \"rc=$?\"; echo '=== cpus'; nproc; echo \"rc=$?\";"
    f" echo '=== top_cpu'; {_PS} --sort=-pcpu | head -n {TOP}; echo rc=0;"
    f" echo '=== top_memory'; {_PS} --sort=-rss | head -n {TOP}; echo rc=0"
)


class Process(BaseModel):
    """One line of ``ps``."""

    model_config = ConfigDict(frozen=True)

    pid: int
    user: str
    cpu_pct: float
    mem_pct: float
    rss_kib: int
    name: str

    def line(self) -> str:
        """``postgres (pid 42, postgres): 12.5% cpu, 3.1% mem, 120 MiB``."""
        return (
            f"{self.name} (pid {self.pid}, {self.user}): {self.cpu_pct:g}% cpu,"
            f" {self.mem_pct:g}% mem, {self.rss_kib // 1024} MiB"
        )


def parse_ps(text: str) -> list[Process]:
    """Parse ``ps -eo pid=,user=,pcpu=,pmem=,rss=,comm=`` lines (pure).

    Raises:
        FactParseError: a line does not have the six columns.
    """
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(None, 5)
        try:
            out.append(
                Process(
                    pid=int(fields[0]),
                    user=fields[1],
                    cpu_pct=float(fields[2]),
                    mem_pct=float(fields[3]),
                    rss_kib=int(fields[4]),
                    name=fields[5].strip(),
                )
            )
        except (IndexError, ValueError):
            raise FactParseError(
                "top_processes", line, "expected pid user %cpu %mem rss comm"
            ) from None
    return out


def parse_performance(text: str) -> Performance:
    """Parse :data:`PERFORMANCE`'s output (pure); a part that could not be read is None.

    Raises:
        FactParseError: the process lists are missing or malformed.
    """
    parts = sections("performance", text)
    if "top_cpu" not in parts or "top_memory" not in parts:
        raise FactParseError("performance", text[:200], "expected top_cpu and top_memory")

    def read(name: str) -> str | None:
        part = parts.get(name)
        return part.text if part is not None and part.rc == 0 and part.lines else None

    load, memory, disks, cpus = read("load"), read("memory"), read("disks"), read("cpus")
    used = [d.used_pct for d in parse_df(disks)] if disks else []
    return Performance(
        load_1m=parse_loadavg(load).l1 if load else None,
        cpus=int(cpus.strip()) if cpus and cpus.strip().isdigit() else None,
        memory_used_pct=parse_meminfo(memory).used_pct if memory else None,
        disk_used_pct=max(used) if used else None,
        top_cpu=tuple(p.line() for p in parse_ps(parts["top_cpu"].text)),
        top_memory=tuple(p.line() for p in parse_ps(parts["top_memory"].text)),
    )


def read_performance(host: RemoteHost) -> Performance:
    """The host's load, memory, disks and top processes now (one round trip)."""
    result = host.run("LC_ALL=C; export LC_ALL; " + PERFORMANCE, timeout=60)
    return parse_performance(result.stdout)


@task(name="read-performance", cache_policy=NO_CACHE, task_run_name="read-performance-{host.name}")
def performance_task(host: RemoteHost) -> Performance:
    """:func:`read_performance` as a task (verification reads it beside the facts)."""
    return read_performance(host)
