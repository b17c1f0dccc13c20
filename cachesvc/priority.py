"""CPU priority of background threads: request serving gets the CPU first.

Eviction, file reclaiming and RocksDB's flushes and compactions are work that can wait a few milliseconds; the
event loop answering BuildKit cannot. On a builder the cores are busy with builds too, so the background threads
run at a lower scheduling priority (a higher nice value, per thread on Linux) and the loop thread keeps its own.
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
