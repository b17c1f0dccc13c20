"""Eviction batches planned away from the writer: the index follower, replayed mutations, chained plans.

A plan built in the helper process reads a RocksDB follower of the index and comes back as the final value of
every key it touches; the writer replays it into a batch. These tests use real RocksDB indexes (a writer and a
follower of it, as the helper opens one) and compare whole indexes key by key: a replayed or chained plan
must leave exactly what the same eviction leaves when planned and written by the writer itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cachesvc.priority import BACKGROUND_NICE
from cachesvc.store.index import COLUMN_FAMILIES, Index, Mutation
from cachesvc.store.planner import PlannerProcess, plan_chain, plan_chains
from cachesvc.store.records import ManifestRecord

NOW = 1_800_000_000.0


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def fill(index: Index) -> list[tuple[int, str, str]]:
    """Six roots in two repositories, oldest first; neighbours share a blob, one blob is in both repositories.
    Returns them as eviction candidates (last use, repo, digest)."""
    roots = []
    for r in range(6):
        repo = "cache/a" if r % 2 else "cache/b"
        blobs = [digest(100 + r), digest(100 + r + 1), digest(999)]
        for b in blobs:
            index.add_blob(b, 1000 + int(b[-3:], 16), repo, grace_ms=0)
        d = digest(5000 + r)
        used = index.now_ms() - (6 - r) * 1000
        index.put_manifest(repo, d, ManifestRecord("application/vnd.oci.image.manifest.v1+json", 200, used, used,
                                                   blobs, []), b"{}", f"t{r}", None)
        roots.append((used, repo, d))
    return roots


def dump(index: Index) -> dict[str, dict[bytes, bytes]]:
    return {cf: dict(index.scan(cf)) for cf in COLUMN_FAMILIES}


def twin(tmp_path: Path, name: str) -> tuple[Index, list[tuple[int, str, str]]]:
    index = Index(tmp_path / name, clock=lambda: NOW)
    return index, fill(index)


def no_lease(digest: str) -> int:
    return 0


def never(repo: str, digest: str, last_used: int) -> bool:
    return False


def test_a_follower_sees_what_the_writer_wrote_after_it_catches_up(tmp_path: Path) -> None:
    writer = Index(tmp_path / "index", clock=time.time)
    writer.set_meta_value("before", b"1")
    follower = Index(tmp_path / "index", clock=time.time, follow=tmp_path / "follower")
    assert follower.meta_value("before") == b"1"
    writer.set_meta_value("after", b"2")  # in the writer's WAL only: no flush, no fsync
    assert follower.meta_value("after") is None
    follower.catch_up()
    assert follower.meta_value("after") == b"2"


def test_a_replayed_plan_writes_exactly_what_the_plan_would(tmp_path: Path) -> None:
    a, roots = twin(tmp_path, "a")
    b, _ = twin(tmp_path, "b")
    assert dump(a) == dump(b)
    planned_a = plan_chain(a, roots[:3], 1 << 40, "budget", 32, no_lease, never)
    planned_b = plan_chain(b, roots[:3], 1 << 40, "budget", 32, no_lease, never)
    assert len(planned_a.roots) == 3
    a.write(planned_a.mutation)
    m = planned_b.mutation
    replayed = Mutation.replay(b, m.overlay, m.deltas, m.removed, b.writes)
    assert b.write_if_current(replayed)
    assert dump(a) == dump(b) and a.counters == b.counters
    assert a.manifest("cache/b", roots[0][2]) is None and a.blob(digest(100)) is None
    assert a.blob(digest(999)) is not None  # still used by the roots that stay


def test_chained_plans_from_a_follower_equal_the_writer_evicting_root_by_root(tmp_path: Path) -> None:
    """Three batches planned at once by a follower, each as if the ones before it were written, then written
    in order by the writer, leave the index the writer leaves evicting the same roots itself."""
    writer, roots = twin(tmp_path, "writer")
    follower = Index(tmp_path / "writer", clock=lambda: NOW, follow=tmp_path / "follower")
    follower.catch_up()
    emitted: list[tuple[object, ...]] = []
    plans, consumed = plan_chains(follower, roots[:5], 1 << 40, "budget", 2, 3, no_lease, emitted.append)
    assert consumed == 5 and [len(p[3]) for p in plans] == [2, 2, 1]
    assert emitted == plans  # each handed over as soon as planned, in order (the helper sends them so)
    seen = writer.writes
    for i, (ops, deltas, removed, _roots) in enumerate(plans):
        m = Mutation.replay(writer, ops, deltas, removed, seen + i)
        assert writer.write_if_current(m)

    reference, _ = twin(tmp_path, "reference")
    for candidate in roots[:5]:
        chain = plan_chain(reference, [candidate], 1 << 40, "budget", 1, no_lease, never)
        reference.write(chain.mutation)
    assert dump(writer) == dump(reference) and writer.counters == reference.counters
    assert writer.counters["roots"] == 1 and writer.blob(digest(105)) is not None
    assert writer.blob(digest(104)) is None


def test_a_chained_plan_is_refused_once_anything_else_was_written(tmp_path: Path) -> None:
    writer, roots = twin(tmp_path, "writer")
    follower = Index(tmp_path / "writer", clock=lambda: NOW, follow=tmp_path / "follower")
    follower.catch_up()
    plans, _ = plan_chains(follower, roots[:4], 1 << 40, "budget", 2, 2, no_lease)
    seen = writer.writes
    first = Mutation.replay(writer, *plans[0][:3], seen)
    assert writer.write_if_current(first)
    writer.set_meta_value("someone-else", b"x")  # a request's write between the two batches
    second = Mutation.replay(writer, *plans[1][:3], seen + 1)
    assert not writer.write_if_current(second)
    assert writer.manifest(roots[2][1], roots[2][2]) is not None  # the second batch's roots are still there


def test_the_helper_plans_on_idle_cpu_only(tmp_path: Path) -> None:
    """Only background passes use the helper, and they run on idle CPU only (priority.py): the helper
    process, and the threads its RocksDB starts, are SCHED_IDLE and nice."""
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("SCHED_IDLE is Linux's; elsewhere the helper is only niced")
    writer, roots = twin(tmp_path, "writer")
    helper = PlannerProcess(tmp_path / "writer", tmp_path / "follower")
    helper.start()
    try:
        assert helper.proc is not None
        tids = os.listdir(f"/proc/{helper.proc.pid}/task")
        assert len(tids) > 1  # RocksDB's threads too
        for tid in map(int, tids):
            assert os.sched_getscheduler(tid) == os.SCHED_IDLE
            assert os.getpriority(os.PRIO_PROCESS, tid) == BACKGROUND_NICE
        helper.ask(roots[:2], 1 << 40, "budget", 2, 2, {}, writer.now_ms())
        first = helper.next_chain(writer.writes)
        assert not isinstance(first, int) and len(first.roots) == 2
        assert helper.next_chain(writer.writes + 1) == 2  # done: both candidates used
    finally:
        helper.close()
    assert not (tmp_path / "follower").exists()
