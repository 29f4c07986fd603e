"""CPU and memory of every process in the benchmark container, read from the host's /proc.

The container's processes are ordinary processes of this kernel: their
utime + stime (``/proc/PID/stat``) and VmRSS (``/proc/PID/status``) are read
directly, without entering the container, so measuring costs it nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

TICKS = os.sysconf("SC_CLK_TCK")
_WORKER = re.compile(r"workers/([^/\s]+)\.yaml")


@dataclass(frozen=True)
class Proc:
    pid: int
    group: str
    cpu_s: float
    rss_kib: int
    #: Resident memory not backed by a file (heap, Python objects): what a process really adds.
    anon_kib: int = 0
    #: Proportional set size: shared pages (libraries) divided among the processes sharing them.
    pss_kib: int = 0


def group_of(comm: str, cmdline: str) -> str:
    """What a process is, for the report: one Synapse process by name, else its kind."""
    if "synapse.app.homeserver" in cmdline:
        return "synapse:main"
    if "synapse.app.generic_worker" in cmdline:
        m = _WORKER.search(cmdline)
        return f"synapse:{m.group(1) if m else 'worker'}"
    if "loadgen.py" in cmdline:
        return "generator"
    if comm.startswith("postgres"):
        return "postgresql"
    if comm == "nginx":
        return "nginx"
    if comm.startswith("redis-server"):
        return "redis"
    return "other"


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def snapshot(root_pid: int) -> dict[int, Proc]:
    """Every process at or under root_pid (the container's init), by host PID."""
    procs = {}
    for pid in _descendants(root_pid):
        stat = _read(f"/proc/{pid}/stat")
        cmdline = _read(f"/proc/{pid}/cmdline")
        status = _read(f"/proc/{pid}/status")
        if stat is None or cmdline is None or status is None:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        group = group_of(comm, cmdline.replace("\0", " "))
        pss = 0
        if group.startswith("synapse:"):  # smaps_rollup walks every mapping: only where it is read
            m = re.search(r"^Pss:\s+(\d+)", _read(f"/proc/{pid}/smaps_rollup") or "", re.M)
            pss = int(m.group(1)) if m else 0
        procs[pid] = Proc(pid, group, cpu, _kib(status, "VmRSS"), _kib(status, "RssAnon"), pss)
    return procs


def _kib(status: str, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class GroupUsage:
    group: str
    processes: int
    cpu_s: float
    rss_mib: float
    anon_mib: float = 0.0
    pss_mib: float = 0.0


def usage(before: Mapping[int, Proc], after: Mapping[int, Proc]) -> dict[str, GroupUsage]:
    """CPU seconds spent between two snapshots and RSS at the second, per group.

    A process that started in between counts with all its CPU; one that ended
    in between is lost (its last ticks are not visible any more).
    """
    cpu: dict[str, float] = {}
    mem: dict[str, list[int]] = {}
    count: dict[str, int] = {}
    for pid, p in after.items():
        start = before[pid].cpu_s if pid in before and before[pid].group == p.group else 0.0
        cpu[p.group] = cpu.get(p.group, 0.0) + max(0.0, p.cpu_s - start)
        m = mem.setdefault(p.group, [0, 0, 0])
        m[0] += p.rss_kib
        m[1] += p.anon_kib
        m[2] += p.pss_kib
        count[p.group] = count.get(p.group, 0) + 1
    return {g: GroupUsage(g, count[g], cpu[g], *(x / 1024 for x in mem[g])) for g in sorted(cpu)}


def host_busy_s(cpus: int | None = None) -> float:
    """CPU seconds this machine has spent busy (everything but idle and iowait).

    With cpus=N only CPUs 0..N-1 count: the ones the benchmark's container is
    confined to, where other load competes with it.
    """
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    return busy_s(lines, cpus)


def busy_s(stat_lines: list[str], cpus: int | None = None) -> float:
    """Busy CPU seconds from /proc/stat's lines: the total line, or the sum of cpu0..cpu{N-1}."""
    total = 0
    for line in stat_lines:
        name, *values = line.split()
        if not name.startswith("cpu"):
            continue
        if (cpus is None) != (name == "cpu"):
            continue
        if cpus is not None and int(name[3:]) >= cpus:
            continue
        fields = [int(x) for x in values]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total += sum(fields[:8]) - idle
    return total / TICKS
