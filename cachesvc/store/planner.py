"""Planning eviction batches: which keys removing a run of roots deletes, found by reads alone.

Planning is RocksDB reads and Python work. In a thread of the server it competes with the event loop for the
interpreter lock, and on a small machine that shows as request latency for as long as a big pass runs. So a big
pass plans in a helper process (:class:`PlannerProcess`) with an interpreter of its own, reading a follower of
the index (a RocksDB secondary instance that catches up with the writer before each plan). The server only
replays each plan into a batch and writes it if nothing was written since the plan began to read, the same
check as for a plan built in a thread: a plan is a proposal, never a write. Small passes plan in the thread, as
a process costs a start-up; if the helper fails, the pass goes on in the thread.

The helper is ``python -m cachesvc.store.planner --index DIR --follow DIR --fd N``: requests and plans are
pickled over a socket pair that only the server holds the other end of.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cachesvc.priority import idle_this_thread
from cachesvc.store.index import Index, Mutation, Removed

CHAIN_BLOBS = 64  # blobs in one batch at most: the loop writes a batch in one go, so its size bounds that pause
START_TIMEOUT = 30.0  # seconds for the helper to open the index follower
PLAN_TIMEOUT = 60.0  # seconds for one plan before the helper is given up on

Candidate = tuple[int, str, str]  # (last use ms, repo, manifest digest)


@dataclass(slots=True)
class Chained:
    """One root in a chained batch; ``manifests``/``blobs``: where its part of the batch's removals ends."""

    repo: str
    digest: str
    last_used: int
    tags: list[str]
    manifests: int
    blobs: int


@dataclass
class Chain:
    """A deletion batch of several roots, built off the loop, that the loop writes at once: a mutation built in
    the worker thread, or a plan from the helper, which the loop replays (a few hundred keys) just before it
    writes it, so that no low-priority thread holds the interpreter lock for that."""

    mutation: Mutation | None
    roots: list[Chained] = field(default_factory=list)
    consumed: int = 0  # candidates looked at (planned, or skipped as gone or used since)
    plan: tuple[Any, ...] | None = None  # from the helper: (ops, deltas, removed), expecting ``writes_seen``
    writes_seen: int = 0

    def batch(self, index: Index) -> Mutation:
        if self.mutation is None:
            assert self.plan is not None
            self.mutation = Mutation.replay(index, *self.plan, self.writes_seen)
        return self.mutation

    def drop(self) -> None:
        if self.mutation is not None:
            self.mutation.close_iterators()


def plan_chain(index: Index, todo: Sequence[Candidate], want: int, reason: str, limit: int,
               lease_of: Callable[[str], int], used_since: Callable[[str, str, int], bool]) -> Chain:
    """One batch from ``todo`` in its own mutation (see :func:`chain_into`)."""
    m = index.mutation()  # its write count is read before any key: see Index.write_if_current
    roots, consumed = chain_into(index, m, todo, 0, want, reason, limit, lease_of, used_since)
    m.close_iterators()
    return Chain(m, roots, consumed)


def chain_into(index: Index, m: Mutation, todo: Sequence[Candidate], start: int, want: int, reason: str,
               limit: int, lease_of: Callable[[str], int],
               used_since: Callable[[str, str, int], bool]) -> tuple[list[Chained], int]:
    """Add roots from ``todo[start:]`` (in order) to ``m`` (reads only) until ``m`` frees ``want`` bytes, or
    ``limit`` roots or :data:`CHAIN_BLOBS` blobs were added; returns them and where in ``todo`` it stopped.

    A root that is gone, no longer a root at the time it was listed with, or used since (``used_since``,
    unless an operator asked for it by name) is skipped. ``lease_of``: leases noted in memory only."""
    first_manifest, first_blob = len(m.removed.manifests), len(m.removed.blobs)
    roots: list[Chained] = []
    i = start
    while i < len(todo):
        last_used, repo, digest = todo[i]
        i += 1
        rec = m.manifest(repo, digest)
        if rec is None:
            continue
        if reason != "manual" and (rec.last_used != last_used or not m.is_root_entry(repo, digest, last_used)
                                   or used_since(repo, digest, last_used)):
            continue
        if index.plan_manifest_deletion(repo, digest, lease_of, m) is None:
            continue
        blobs = len(m.removed.blobs) - first_blob
        roots.append(Chained(repo, digest, last_used, index.tags_of(repo, digest),
                             len(m.removed.manifests) - first_manifest, blobs))
        if -m.deltas.get("disk_bytes", 0) >= want or len(roots) >= limit or blobs >= CHAIN_BLOBS:
            break
    return roots, i


def plan_chains(index: Index, todo: Sequence[Candidate], want: int, reason: str, limit: int, depth: int,
                lease_of: Callable[[str], int],
                emit: Callable[[tuple[Any, ...]], None] | None = None) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``depth`` consecutive batches, each planned as if the ones before it were written (they are
    written in order, each only if nothing else was written since: one follower catch-up serves them all).
    Returns each batch as (final value of each key it touches, counter deltas, removals, roots) and where in
    ``todo`` planning stopped; ``emit`` gets each batch as soon as it is planned."""
    m = index.mutation()
    plans: list[tuple[Any, ...]] = []
    pos = 0
    while len(plans) < depth and pos < len(todo) and -m.deltas.get("disk_bytes", 0) < want:
        deltas_before = dict(m.deltas)
        removed_before = (len(m.removed.manifests), len(m.removed.blobs), len(m.removed.orphans))
        m.journal = {}
        roots, pos = chain_into(index, m, todo, pos, want, reason, limit, lease_of, _never_used)
        if not roots:
            continue
        ops = {cf: {key: m.overlay[cf][key] for key in keys} for cf, keys in m.journal.items()}
        deltas = {k: v - deltas_before.get(k, 0) for k, v in m.deltas.items() if v != deltas_before.get(k, 0)}
        removed = Removed(m.removed.manifests[removed_before[0]:], m.removed.blobs[removed_before[1]:],
                          m.removed.orphans[removed_before[2]:])
        plans.append((ops, deltas, removed, roots))
        if emit is not None:
            emit(plans[-1])
    m.close_iterators()
    return plans, pos


def _never_used(repo: str, digest: str, last_used: int) -> bool:
    """The helper sees the index only: the server drops candidates it noted in memory as used since."""
    return False


class PlannerError(Exception):
    """The helper process is gone, failed or too slow: plan in the thread instead."""


class PlannerProcess:
    """The server's handle on one helper process; its methods block, so they are called from a worker thread."""

    def __init__(self, index_path: Path, follow_dir: Path) -> None:
        self.index_path = index_path
        self.follow_dir = follow_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        shutil.rmtree(self.follow_dir, ignore_errors=True)  # a crashed run's leftovers
        self.follow_dir.mkdir(parents=True)
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachesvc.store.planner", "--index", str(self.index_path),
                 "--follow", str(self.follow_dir), "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        reply = self._receive(START_TIMEOUT)
        if reply != ("ready",):
            raise PlannerError(f"the eviction planner did not start: {reply!r}")

    def ask(self, todo: Sequence[Candidate], want: int, reason: str, limit: int, depth: int,
            leases: dict[str, int], now_ms: int) -> None:
        """Ask for up to ``depth`` batches from ``todo``; :meth:`next_chain` receives them one by one."""
        if self.conn is None:
            raise PlannerError("the eviction planner is not running")
        try:
            self.conn.send(("plan", list(todo), want, reason, limit, depth, leases, now_ms))
        except OSError as e:
            raise PlannerError(f"the eviction planner is gone: {e}") from None

    def next_chain(self, writes_seen: int) -> Chain | int:
        """The next batch asked for, to be written only if the writer's count is still ``writes_seen`` (its
        count before the helper caught up, plus the batches of this request before this one); or, once there
        are no more, how many of the candidates the request used. One batch per message: unpickling a reply
        holds the interpreter lock, and a small one holds it briefly."""
        reply = self._receive(PLAN_TIMEOUT)
        if reply[0] == "chain":
            _, ops, deltas, removed, roots = reply
            return Chain(None, roots, plan=(ops, deltas, removed), writes_seen=writes_seen)
        if reply[0] == "done":
            return int(reply[1])
        raise PlannerError(f"the eviction planner failed: {reply[1] if len(reply) > 1 else reply!r}")

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        assert self.conn is not None
        try:
            if not self.conn.poll(timeout):
                raise PlannerError(f"the eviction planner did not answer within {timeout:.0f}s")
            reply = self.conn.recv()
        except (OSError, EOFError) as e:
            raise PlannerError(f"the eviction planner is gone: {e or 'connection closed'}") from None
        if not isinstance(reply, tuple) or not reply:
            raise PlannerError(f"the eviction planner sent {reply!r}")
        return reply

    def close(self) -> None:
        """Stop the helper (it also exits on its own when the server's end of the socket closes)."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.follow_dir, ignore_errors=True)


def _lease_lookup(leases: dict[str, int]) -> Callable[[str], int]:
    return lambda digest: leases.get(digest, 0)


# -- the helper process --------------------------------------------------------------------------------------
def serve(conn: Connection, index_path: Path, follow_dir: Path) -> None:
    """Answer plan requests until told to stop or the server goes away."""
    now_ms = [0]
    index = Index(index_path, clock=lambda: now_ms[0] / 1000, follow=follow_dir)
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request[0] != "plan":
            return
        _, todo, want, reason, limit, depth, leases, now_ms[0] = request
        try:
            index.catch_up()
            # Each batch is sent as soon as it is planned, so the server writes one while the next is planned.
            # (Until the server's own background threads ran on idle CPU only, this overlap cost more request
            # latency than it gained in speed: see priority.py.)
            _, consumed = plan_chains(index, todo, want, reason, limit, depth, _lease_lookup(leases),
                                      lambda plan: conn.send(("chain", *plan)))
            reply: tuple[Any, ...] = ("done", consumed)
            release_freed_memory()
        except (OSError, EOFError):
            return  # the server is gone
        except Exception as e:  # reported to the server, which plans in its thread instead
            reply = ("error", f"{type(e).__name__}: {e}")
        conn.send(reply)


def release_freed_memory() -> None:
    """Give the heap that RocksDB freed back to the system. Each catch-up replays the writer's new log into
    memtables of the follower's own and drops those the writer has flushed since; glibc keeps what was freed, so
    the helper grew to about 124 MiB during the benchmark's pass, against about 68 MiB trimming after each plan
    (a trim takes 0.5-2 ms, here, not in the server). Without glibc, nothing happens."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachesvc.store.planner", description=__doc__)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--follow", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Idle CPU only, like the pass's worker thread in the server (only background passes use the helper), and
    # before RocksDB starts threads: they inherit it.
    idle_this_thread()
    conn = Connection(args.fd)
    try:
        serve(conn, args.index, args.follow)
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module, not this ``__main__`` copy: what is pickled names its classes by module.
    from cachesvc.store import planner

    sys.exit(planner.main())
