"""Server and client resource use from /proc: resident memory (sampled peak and the kernel's high-water mark)
and CPU time, so every figure can say how many cores each side burnt to get it."""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """Current resident set size."""
    return _status_kib(pid, "VmRSS:") * 1024


def hwm_bytes(pid: int) -> int:
    """Peak resident set size since the process started (VmHWM)."""
    return _status_kib(pid, "VmHWM:") * 1024


@dataclass(frozen=True)
class ProcessCpu:
    """One process's name and CPU seconds: its own, and its reaped children's (short-lived helpers such as
    dockerd's unpigz and untar processes show up only there)."""

    comm: str
    own: float
    children: float

    @property
    def total(self) -> float:
        return self.own + self.children

    @staticmethod
    def read(pid: int) -> ProcessCpu | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return None
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return ProcessCpu(comm, own, (int(fields[13]) + int(fields[14])) / CLK_TCK)


def cpu_by_name(before: dict[int, ProcessCpu], after: dict[int, ProcessCpu]) -> dict[str, float]:
    """CPU seconds used between two ``{pid: ProcessCpu}`` snapshots (``NetnsPair.processes()``), by process name,
    own + reaped children.

    A process that started after ``before`` counts whole; one that ended before ``after`` is lost unless a
    process of the snapshot reaped it (then it is in that parent's children)."""
    used: dict[str, float] = {}
    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.comm != now.comm:
            then = None  # a re-used pid, or a process that exec'd: count it from zero
        delta = now.total - (then.total if then else 0.0)
        if delta > 0:
            used[now.comm] = used.get(now.comm, 0.0) + delta
    return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    cpu = ProcessCpu.read(pid)
    if cpu is None:
        raise ProcessLookupError(pid)
    return cpu.own


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy (not idle, not waiting for I/O) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK


def client_cpu_seconds() -> float:
    """CPU time of this process plus its waited-for children (ab, wrk, curl)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class CpuMeter:
    """CPU cores used by each server, by the client, and by anything else on the machine over one
    measurement."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0
    client0: float = 0.0
    machine0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.client0 = client_cpu_seconds()
        self.machine0 = machine_busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cores = {name: round((cpu_seconds(pid) - self.start[name]) / self.elapsed, 2)
                      for name, pid in self.pids.items()}
        self.cores["client"] = round((client_cpu_seconds() - self.client0) / self.elapsed, 2)
        busy = (machine_busy_seconds() - self.machine0) / self.elapsed
        # anything else running on the machine meanwhile (other jobs perturb the figure)
        self.cores["other"] = round(max(0.0, busy - sum(self.cores.values())), 2)


class RssSampler(threading.Thread):
    """Samples each server's RSS every ``interval`` seconds; keeps the peak overall and per section."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids = pids
        self.interval = interval
        self.section = "start"
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.by_section: dict[str, dict[str, int]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self) -> None:
        section = self.by_section.setdefault(self.section, dict.fromkeys(self.pids, 0))
        for name, pid in self.pids.items():
            try:
                rss = rss_bytes(pid)
            except OSError:
                continue
            self.peak[name] = max(self.peak[name], rss)
            section[name] = max(section[name], rss)

    def stop(self) -> dict[str, int]:
        """Stop sampling; returns each server's VmHWM (the exact peak)."""
        self._stop_event.set()
        self.join()
        self.sample()
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = hwm_bytes(pid)
            except OSError:
                out[name] = self.peak[name]
        return out
