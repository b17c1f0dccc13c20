"""Eviction through the real API: budget, recency, pins, quotas, max age, grace, leases, refusal, dry run.

The clock is injected, so every scenario is deterministic: time moves only when a test says so.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cachesvc.store import eviction
from tests.support.inproc import Running, error_code, image_manifest, sha256

KB = 1024


async def image(reg: Running, repo: str, tag: str, size: int = 30 * KB, shared: bytes | None = None) -> list[bytes]:
    layers = [os.urandom(size)] + ([shared] if shared else [])
    await reg.push_image(repo, tag, layers, config=os.urandom(64))
    return layers


async def served_whole(reg: Running, repo: str, tag: str) -> bool:
    """True when the tag is served and every blob it names can be fetched (False for a clean miss)."""
    async with reg.http.get(f"/v2/{repo}/manifests/{tag}") as r:
        if r.status == 404:
            return False
        doc = await r.json(content_type=None)
    for d in [doc["config"], *doc["layers"]]:
        async with reg.http.get(f"/v2/{repo}/blobs/{d['digest']}") as r:
            assert r.status == 200, f"{repo}:{tag} is served but its blob {d['digest']} is not"
    return True


async def test_budget_evicts_least_recently_used_first(make_server, clock) -> None:
    reg = await make_server(max_size=200 * KB, upload_grace=10)
    for i in range(5):
        await image(reg, "cache/app", f"b{i}")
        clock.advance(60)
    # b0 is the oldest; using it makes b1 the least recently used.
    assert await served_whole(reg, "cache/app", "b0")
    clock.advance(60)
    for i in range(5, 8):
        await image(reg, "cache/app", f"b{i}")
        clock.advance(60)
    await reg.store.evictor.run_pass()
    assert reg.store.index.counters["disk_bytes"] <= 200 * KB
    assert not await served_whole(reg, "cache/app", "b1")
    assert await served_whole(reg, "cache/app", "b0")
    assert await served_whole(reg, "cache/app", "b7")
    reasons = {e.reason for e in reg.store.evictor.recent}
    assert reasons == {"budget"}


async def test_shared_blob_stays_while_any_root_needs_it(make_server, clock) -> None:
    reg = await make_server(max_size=150 * KB, upload_grace=10)
    base = os.urandom(20 * KB)
    await image(reg, "cache/app", "old", shared=base)
    clock.advance(60)
    await image(reg, "cache/app", "new", shared=base)
    clock.advance(60)
    for i in range(4):
        await image(reg, "cache/other", f"x{i}")
        clock.advance(60)
    await reg.store.evictor.run_pass()
    assert not await served_whole(reg, "cache/app", "old")
    if await served_whole(reg, "cache/app", "new"):
        async with reg.http.head(f"/v2/cache/app/blobs/{sha256(base)}") as r:
            assert r.status == 200


async def test_pinned_roots_survive(make_server, clock) -> None:
    reg = await make_server(max_size=100 * KB, upload_grace=10, pin=["cache/app:main"])
    await image(reg, "cache/app", "main")
    clock.advance(3600)
    for i in range(4):
        await image(reg, "cache/app", f"pr-{i}")
        clock.advance(60)
    await reg.store.evictor.run_pass()
    assert await served_whole(reg, "cache/app", "main")
    assert not await served_whole(reg, "cache/app", "pr-0")


async def test_repo_quota_evicts_only_its_own(make_server, clock) -> None:
    reg = await make_server(repo_quota=["cache/noisy=70KiB"], upload_grace=10)
    await image(reg, "cache/quiet", "a")
    clock.advance(60)
    for i in range(4):
        await image(reg, "cache/noisy", f"n{i}")
        clock.advance(60)
    done = await reg.store.evictor.run_pass()
    assert {e.reason for e in done} == {"quota"} and {e.repo for e in done} == {"cache/noisy"}
    assert await served_whole(reg, "cache/quiet", "a")
    assert await served_whole(reg, "cache/noisy", "n3")
    usage = dict(reg.store.index.repo_usages())["cache/noisy"]
    assert usage <= 70 * KB


async def test_max_age(make_server, clock) -> None:
    reg = await make_server(max_age=3600, upload_grace=10)
    await image(reg, "cache/app", "stale")
    clock.advance(1800)
    await image(reg, "cache/app", "fresh")
    clock.advance(2000)
    done = await reg.store.evictor.run_pass()
    assert [(e.reason, e.tags) for e in done] == [("max_age", ["stale"])]
    assert await served_whole(reg, "cache/app", "fresh")


async def test_unreferenced_blobs_wait_out_the_grace_period(make_server, clock) -> None:
    reg = await make_server(upload_grace=3600)
    d = await reg.push_blob("cache/app", b"export in progress")
    clock.advance(1800)
    await reg.store.evictor.run_pass()
    async with reg.http.head(f"/v2/cache/app/blobs/{d}") as r:
        assert r.status == 200  # answering also renews the lease
    clock.advance(3601)
    await reg.store.evictor.run_pass()
    async with reg.http.head(f"/v2/cache/app/blobs/{d}") as r:
        assert r.status == 404
    assert await reg.store.reclaimer.drained(10)  # files go in the background, after the index
    assert not os.path.exists(reg.store.files.path(d))


async def test_head_lease_protects_blob_until_the_manifest_arrives(make_server, clock) -> None:
    """BuildKit HEADs a blob (200: skip upload), then pushes a manifest; eviction in between must not strand it."""
    reg = await make_server(max_size=80 * KB, upload_grace=600)
    layers = await image(reg, "cache/app", "old")
    clock.advance(60)
    async with reg.http.head(f"/v2/cache/app/blobs/{sha256(layers[0])}") as r:
        assert r.status == 200
    for i in range(3):  # pressure: the old root goes
        await image(reg, "cache/app", f"n{i}", size=20 * KB)
        clock.advance(1)
    await reg.store.evictor.run_pass()
    assert not await served_whole(reg, "cache/app", "old")
    cfg = await reg.push_blob("cache/app", b"{}")
    doc = image_manifest(cfg, 2, [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": sha256(layers[0]), "size": len(layers[0])}])
    await reg.push_manifest("cache/app", "next", doc)
    assert await served_whole(reg, "cache/app", "next")


async def test_upload_larger_than_budget_is_refused(make_server) -> None:
    reg = await make_server(max_size=50 * KB)
    data = os.urandom(60 * KB)
    async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": sha256(data)}, data=data) as r:
        assert r.status == 507 and await error_code(r) == "STORAGE_FULL"
    async with reg.http.post("/v2/a/blobs/uploads/") as r:
        location = r.headers["Location"]

    async def chunked():
        yield data

    async with reg.http.patch(location, data=chunked()) as r:
        assert r.status == 507
    assert list((reg.root / "uploads").iterdir()) == []


async def test_upload_that_cannot_fit_even_after_eviction(make_server, clock) -> None:
    reg = await make_server(max_size=100 * KB, pin=["*"], upload_grace=10)
    await image(reg, "cache/app", "keep")
    clock.advance(60)
    await image(reg, "cache/app", "keep2")
    data = os.urandom(40 * KB)
    async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": sha256(data)}, data=data) as r:
        assert r.status == 507
    assert await served_whole(reg, "cache/app", "keep") and await served_whole(reg, "cache/app", "keep2")


async def test_recency_survives_restart(make_server, clock) -> None:
    reg = await make_server(max_size=80 * KB, upload_grace=10)
    await image(reg, "cache/app", "a")
    clock.advance(60)
    await image(reg, "cache/app", "b")
    clock.advance(60)
    assert await served_whole(reg, "cache/app", "a")  # a is now the most recently used
    await reg.restart()  # flushes recency on the way out
    clock.advance(60)
    await image(reg, "cache/app", "c")
    await reg.store.evictor.run_pass()
    assert await served_whole(reg, "cache/app", "a")
    assert not await served_whole(reg, "cache/app", "b")


async def test_dry_run_plan_changes_nothing(make_server, clock) -> None:
    reg = await make_server(upload_grace=10)
    for i in range(4):
        await image(reg, "cache/app", f"t{i}")
        clock.advance(60)
    before = dict(reg.store.index.counters)
    reg.store.settings.max_size = 70 * KB
    plan = reg.store.evictor.plan()
    assert [e.tags for e in plan.evictions] == [["t0"], ["t1"]]
    assert all(e.reason == "budget" and e.bytes > 30 * KB for e in plan.evictions)
    assert reg.store.index.counters == before
    done = await reg.store.evictor.run_pass()
    assert [e.tags for e in done] == [["t0"], ["t1"]]


async def test_min_free(make_server, clock) -> None:
    """A filesystem of 1 GB holding only the cache, with min-free leaving room for ~70 KiB of it."""
    reg = await make_server(min_free=(10**9 - 70 * KB, 0.0), upload_grace=10)
    ev = reg.store.evictor
    ev.free_bytes = lambda: 10**9 - ev.used()  # type: ignore[method-assign]
    for i in range(4):
        await image(reg, "cache/app", f"t{i}")
        clock.advance(60)
    await ev.run_pass()
    assert {e.reason for e in ev.recent} == {"min_free"}
    assert ev.free_bytes() >= 10**9 - 70 * KB
    assert await served_whole(reg, "cache/app", "t3")
    assert not await served_whole(reg, "cache/app", "t0")


async def test_blob_being_streamed_when_evicted_finishes_streaming(make_server, clock) -> None:
    import hashlib

    reg = await make_server(upload_grace=0)
    layer = os.urandom(20 * 1024 * 1024)
    await reg.push_image("cache/app", "old", [layer])
    async with reg.http.get(f"/v2/cache/app/blobs/{sha256(layer)}") as r:
        assert r.status == 200
        h = hashlib.sha256(await r.content.readexactly(1024 * 1024))
        clock.advance(60)
        digest = reg.store.index.tag("cache/app", "old")
        rec = reg.store.index.manifest("cache/app", digest) if digest else None
        assert digest and rec
        evicted = reg.store.evictor.evict_root("cache/app", digest, rec.last_used, "manual")
        assert evicted is not None and evicted.blobs == 2
        assert await reg.store.reclaimer.drained(10)
        assert not os.path.exists(reg.store.files.path(sha256(layer)))  # gone from disk's namespace...
        async for chunk in r.content.iter_chunked(1 << 20):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == sha256(layer)  # ...but the client got every byte
    async with reg.http.head(f"/v2/cache/app/blobs/{sha256(layer)}") as r:
        assert r.status == 404


async def _old_root(reg: Running, repo: str, tag: str) -> tuple[str, int]:
    digest = reg.store.index.tag(repo, tag)
    assert digest is not None
    rec = reg.store.index.manifest(repo, digest)
    assert rec is not None
    return digest, rec.last_used


def _until_gone(index: object, repo: str, digest: str) -> object:
    """``excess`` for Evictor.evict_off_loop: one byte still to free while the root is there."""
    return lambda: 1 if index.manifest(repo, digest) is not None else 0  # type: ignore[attr-defined]


@pytest.fixture(params=["thread", "process"])
def planner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the off-loop batches are planned: in the server's worker thread, or (from the first batch on) in
    the helper process reading an index follower."""
    if request.param == "process":
        monkeypatch.setattr(eviction, "HELPER_AFTER", 0)
    return str(request.param)


def spy_builds(ev: Any, after: Callable[[Any], None] | None = None) -> list[Any]:
    """Wrap the loop's write step: record each batch about to be written (and whether the helper planned it),
    after running ``after`` (as a request on the loop could land between the planning and the write)."""
    apply = ev._apply_chain
    builds: list[Any] = []

    def spy(chain: Any, reason: str) -> Any:
        builds.append((chain, chain.plan is not None))
        if after is not None:
            after(chain)
        return apply(chain, reason)

    ev._apply_chain = spy
    return builds


def planned_where(builds: list[Any]) -> set[str]:
    return {"process" if by_helper else "thread" for _, by_helper in builds}


async def test_off_loop_eviction_rebuilds_a_batch_made_stale_by_a_write(make_server, clock, planner) -> None:
    """The batch is built off the loop; a write that lands meanwhile makes it stale, and it is built again
    from the new state rather than written over it."""
    reg = await make_server(upload_grace=0)
    layers = await image(reg, "cache/app", "old")
    clock.advance(60)
    ev, index = reg.store.evictor, reg.store.index
    digest, last_used = await _old_root(reg, "cache/app", "old")

    def write_once(chain: Any) -> None:
        if len(builds) == 1:
            index.set_meta_value("test-marker", b"x")  # some other mutation, written after the reads

    builds = spy_builds(ev, write_once)
    evicted = await ev.evict_off_loop(iter([(last_used, "cache/app", digest)]),
                                      _until_gone(index, "cache/app", digest), "budget")  # type: ignore[arg-type]
    assert len(builds) == 2 and len(evicted) == 1 and evicted[0].blobs == 2
    assert planned_where(builds) == {planner}
    assert index.manifest("cache/app", digest) is None and index.blob(sha256(layers[0])) is None
    assert index.meta_value("test-marker") == b"x"
    assert await reg.store.reclaimer.drained(10)
    assert not os.path.exists(reg.store.files.path(sha256(layers[0])))
    assert ev._helper is None and not reg.store.layout.follower.exists()  # the helper ends with the pass


async def test_off_loop_eviction_keeps_a_blob_leased_while_the_batch_was_built(make_server, clock,
                                                                                 planner) -> None:
    """A HEAD answered while the batch was being built leases its blob: the root goes, the blob stays."""
    reg = await make_server(upload_grace=10)
    layers = await image(reg, "cache/app", "old")
    clock.advance(60)
    ev = reg.store.evictor
    digest, last_used = await _old_root(reg, "cache/app", "old")
    layer = sha256(layers[0])
    builds = spy_builds(ev, lambda chain: reg.store.recency.lease_blob(layer))  # what HEAD does, in memory
    evicted = await ev.evict_off_loop(iter([(last_used, "cache/app", digest)]),
                                      _until_gone(reg.store.index, "cache/app", digest),  # type: ignore[arg-type]
                                      "budget")
    assert planned_where(builds) == {planner}
    assert len(evicted) == 1 and evicted[0].blobs == 1  # the config went, the leased layer did not
    async with reg.http.head(f"/v2/cache/app/blobs/{layer}") as r:
        assert r.status == 200
    async with reg.http.get(f"/v2/cache/app/blobs/{layer}") as r:
        assert r.status == 200 and await r.read() == layers[0]


async def test_off_loop_eviction_skips_a_root_used_while_the_batch_was_built(make_server, clock, planner) -> None:
    reg = await make_server(upload_grace=0)
    await image(reg, "cache/app", "old")
    clock.advance(60)
    ev = reg.store.evictor
    digest, last_used = await _old_root(reg, "cache/app", "old")

    def pull(chain: Any) -> None:
        clock.advance(1)
        reg.store.recency.touch_manifest("cache/app", digest)  # what GET manifest does

    builds = spy_builds(ev, pull)
    assert await ev.evict_off_loop(iter([(last_used, "cache/app", digest)]),
                                   _until_gone(reg.store.index, "cache/app", digest),  # type: ignore[arg-type]
                                   "budget") == []
    assert planned_where(builds) == {planner}
    assert await served_whole(reg, "cache/app", "old")


async def test_roots_chained_into_one_batch_free_a_blob_they_share_and_keep_one_a_survivor_needs(
        make_server, clock, planner) -> None:
    """Several roots go in one batch: a blob two of them share goes with the second (the batch sees its own
    deletions), a blob shared with a root that stays is kept, and each root is recorded with its own part."""
    reg = await make_server(upload_grace=0)
    shared_gone, shared_kept = os.urandom(20 * KB), os.urandom(20 * KB)
    await image(reg, "cache/app", "old1", shared=shared_gone)
    await image(reg, "cache/app", "old2", shared=shared_gone)
    old3 = await image(reg, "cache/other", "old3", shared=shared_kept)
    clock.advance(60)
    await image(reg, "cache/other", "new", shared=shared_kept)
    ev, index = reg.store.evictor, reg.store.index
    builds = spy_builds(ev)
    olds = [(*reversed(await _old_root(reg, repo, tag)), repo) for repo, tag in
            (("cache/app", "old1"), ("cache/app", "old2"), ("cache/other", "old3"))]
    candidates = iter([(t, repo, d) for t, d, repo in olds])
    evicted = await ev.evict_off_loop(candidates, lambda: 1 << 40, "budget")  # type: ignore[arg-type]
    assert len(builds[0][0].roots) == 3 and [e.tags for e in evicted] == [["old1"], ["old2"], ["old3"]]
    assert planned_where(builds) == {planner}
    # old1: its own layer and config; old2: its own two and the layer it shared with old1; old3: its own two.
    assert [e.blobs for e in evicted] == [2, 3, 2]
    assert index.blob(sha256(shared_gone)) is None and index.blob(sha256(old3[0])) is None
    assert index.blob(sha256(shared_kept)) is not None
    assert await served_whole(reg, "cache/other", "new")
    assert not await served_whole(reg, "cache/app", "old2")


async def test_a_helper_that_dies_mid_pass_leaves_the_rest_of_the_pass_to_the_thread(
        make_server, clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The helper process is killed after its first plan: that plan is still written, the next plans are built
    in the server's thread, every root goes, and the log says why."""
    from cachesvc.store import planner as planner_module

    monkeypatch.setattr(eviction, "HELPER_AFTER", 0)
    monkeypatch.setattr(eviction, "HELPER_DEPTH", 1)  # one batch per plan, so the pass has to ask again
    monkeypatch.setattr(eviction, "CHAIN_ROOTS", 1)  # one root per batch
    reg = await make_server(upload_grace=0)
    for i in range(4):
        await image(reg, "cache/app", f"old{i}")
    clock.advance(60)
    ev = reg.store.evictor
    real_next = planner_module.PlannerProcess.next_chain
    pids: list[int] = []

    def first_then_die(self: Any, *args: Any) -> Any:
        result = real_next(self, *args)
        if not pids:  # the first batch arrived: the helper dies
            pids.append(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
        return result

    monkeypatch.setattr(planner_module.PlannerProcess, "next_chain", first_then_die)
    builds = spy_builds(ev)
    olds = [await _old_root(reg, "cache/app", f"old{i}") for i in range(4)]
    candidates = iter([(t, "cache/app", d) for d, t in olds])
    with caplog.at_level("WARNING", "cachesvc.eviction"):
        evicted = await ev.evict_off_loop(candidates, lambda: 1 << 40, "budget")  # type: ignore[arg-type]
    assert [e.tags for e in evicted] == [["old0"], ["old1"], ["old2"], ["old3"]]
    assert len(pids) == 1 and [by_helper for _, by_helper in builds] == [True, False, False, False]
    assert "the eviction planner is gone" in caplog.text and "planning in the server" in caplog.text
    assert ev._helper is None and not reg.store.layout.follower.exists()
    for i in range(4):
        assert not await served_whole(reg, "cache/app", f"old{i}")


async def test_an_upload_that_needs_room_does_not_wait_for_the_background_threads(make_server, clock) -> None:
    """Background eviction and file removal run on idle CPU only, which a saturated builder may not leave them
    for a long time. Here both are held up: an upload that needs room still evicts (in a worker of its own,
    at normal background priority) and gets the space back (it removes the evicted files itself)."""
    reg = await make_server(max_size=100 * KB, upload_grace=10)
    old = await image(reg, "cache/app", "old")
    clock.advance(60)
    await image(reg, "cache/app", "mid")
    clock.advance(60)
    ev, reclaimer = reg.store.evictor, reg.store.reclaimer
    release = threading.Event()
    ev._planner.submit(release.wait, 30)  # the idle-CPU worker: busy until released
    real = reclaimer._remove_batch

    def starved(batch: list[str]) -> list[str]:
        release.wait(30)
        return real(batch)

    reclaimer._remove_batch = starved
    try:
        data = os.urandom(40 * KB)
        async with asyncio.timeout(20):
            async with reg.http.post("/v2/cache/app/blobs/uploads/", params={"digest": sha256(data)},
                                     data=data) as r:
                assert r.status == 201, await r.text()
        assert not await served_whole(reg, "cache/app", "old")
        assert await served_whole(reg, "cache/app", "mid")
        assert not os.path.exists(reg.store.files.path(sha256(old[0])))
        threads = {t.name: t.native_id for t in threading.enumerate()}
        if hasattr(os, "SCHED_IDLE"):
            assert os.sched_getscheduler(threads["cachesvc-evict_0"]) == os.SCHED_IDLE
            assert os.sched_getscheduler(threads["cachesvc-evict-now_0"]) == os.SCHED_OTHER
            assert os.sched_getscheduler(threads["cachesvc-reclaim"]) == os.SCHED_IDLE
    finally:
        release.set()
    assert await reclaimer.drained(10)
