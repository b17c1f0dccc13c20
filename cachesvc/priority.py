"""CPU priority of background threads: request serving gets the CPU first.

Eviction, file reclaiming and RocksDB's flushes and compactions are work that can wait a few milliseconds; the
event loop answering BuildKit cannot. On a builder the cores are busy with builds too, so the background threads
run at a lower scheduling priority (a higher nice value, per thread on Linux) and the loop thread keeps its own.

A nice value only shares the CPU out in proportion: a nice thread that is running when the loop wakes up may
keep its core for a few milliseconds more. A background eviction pass (its worker thread and the planning helper
process) and the file reclaimer therefore run as ``SCHED_IDLE`` too (:func:`idle_this_thread`): Linux preempts
such a thread the moment a normal one wakes. In the eviction benchmark that cut the time the loop spent runnable
but waiting for a core, during its stalls of over 4 ms, from about 770 ms to about 70 ms per pass. The price is
that idle threads run only on CPU nobody else wants, so nothing a request waits for is left to them alone: an
upload that needs room evicts through a normal-priority worker, and waits for files to be removed by removing
them itself. RocksDB's own threads in the server stay merely nice, since a starved flush would stall the
loop's writes.
"""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 10


def lower_this_thread(nice: int = BACKGROUND_NICE) -> None:
    """Give the calling thread a lower priority (Linux: per-thread nice; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def idle_this_thread() -> None:
    """Run the calling thread (and the processes and threads it starts) only on otherwise idle CPU: nice, and
    ``SCHED_IDLE`` on Linux. A thread cannot go back to a normal policy without privileges, so only threads
    that stay background for life call this."""
    lower_this_thread()
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def lower_threads_named(prefix: str, nice: int = BACKGROUND_NICE) -> int:
    """Lower the priority of this process's threads whose name starts with ``prefix`` (threads that native
    libraries start, e.g. RocksDB's ``rocksdb:low``/``rocksdb:high``); returns how many were changed."""
    n = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
                if name.startswith(prefix):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                    n += 1
            except OSError:
                continue
    return n
