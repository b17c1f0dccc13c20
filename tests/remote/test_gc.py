"""``remote-gc``: roots unused for --max-age go, with the blobs only they needed; nothing a live root needs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from cachesvc.remote import keys
from cachesvc.remote.gc import remote_gc
from tests.remote.helpers import ObjectStoreUnderTest, drained
from tests.support.inproc import Running, sha256
from tests.support.servers import REPO_ROOT

Make = Callable[..., Awaitable[Running]]


async def _keys(store: ObjectStoreUnderTest, url: str) -> set[str]:
    return {i.key async for i in store.remote(url).list("")}


async def test_gc_removes_unused_roots_and_only_their_blobs(builders: Make, object_store: ObjectStoreUnderTest,
                                                          remote_url: str) -> None:
    a = await builders("a")
    shared = os.urandom(4000)  # in both images: must survive
    old_only, new_only = os.urandom(4000), os.urandom(4000)
    old = await a.push_image("gc/app", "old", [shared, old_only], config=b'{"v":"old"}')
    new = await a.push_image("gc/app", "new", [shared, new_only], config=b'{"v":"new"}')
    await drained(a)
    await asyncio.sleep(2.6)  # object times may be truncated to the second: keep clear of the max age
    used_at = int(time.time() * 1000)
    async with a.http.get("/v2/gc/app/manifests/new") as r:  # a use of "new" only (a local hit)
        assert r.status == 200
    a.store.recency.flush()
    remote = object_store.remote(remote_url)
    deadline = time.monotonic() + 10
    while True:
        got = await remote.get(keys.used("gc/app", new))
        if got is not None and json.loads(got[0])["used"] >= used_at:
            break
        assert time.monotonic() < deadline, "the use of gc/app:new did not refresh its marker"
        await asyncio.sleep(0.05)
    before = await _keys(object_store, remote_url)

    dry = await remote_gc(remote, max_age=2.0, dry_run=True, grace=0.0)
    assert [r["tags"] for r in dry.dead_roots] == [["old"]]
    assert dry.deleted_blobs == 2 and dry.deleted_manifests == 1 and dry.deleted_tags == 1
    assert await _keys(object_store, remote_url) == before, "a dry run deleted something"

    report = await remote_gc(remote, max_age=2.0, grace=0.0)
    assert report.live_roots == 1 and report.deleted_blobs == 2
    after = await _keys(object_store, remote_url)
    gone = before - after
    assert gone == {keys.tag("gc/app", "old"), keys.manifest("gc/app", old), keys.used("gc/app", old),
                    keys.blob(sha256(old_only)), keys.blob(sha256(b'{"v":"old"}'))}
    for blob in (shared, new_only, b'{"v":"new"}'):
        assert keys.blob(sha256(blob)) in after

    # The surviving root is still whole for a fresh builder; the collected one is a clean miss.
    b = await builders("b")
    async with b.http.get("/v2/gc/app/manifests/new") as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == new
    async with b.http.get("/v2/gc/app/manifests/old") as r:
        assert r.status == 404


async def test_gc_grace_spares_young_objects(builders: Make, object_store: ObjectStoreUnderTest,
                                             remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    await remote.put(keys.blob(sha256(b"orphan")), b"orphan")  # referenced by nothing, but just uploaded
    report = await remote_gc(remote, max_age=1.0, grace=3600.0)
    assert report.deleted_blobs == 0 and report.spared_young == 1
    report = await remote_gc(remote, max_age=1.0, grace=0.0)
    assert report.deleted_blobs == 1


def test_remote_gc_command(object_store: ObjectStoreUnderTest, remote_url: str) -> None:
    async def arrange() -> None:
        remote = object_store.remote(remote_url)
        await remote.put(keys.blob(sha256(b"orphan")), b"orphan")

    asyncio.run(arrange())
    env = {**os.environ, **object_store.env}
    cmd = [sys.executable, "-m", "cachesvc", "remote-gc", "--max-age", "14d", "--grace", "0s",
           *object_store.flags(remote_url)]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 0 roots" in dry.stdout and "1 blobs (6 B)" in dry.stdout, dry.stdout
    real = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert real.returncode == 0, real.stderr
    assert "deleted 0 roots" in real.stdout and "1 blobs" in real.stdout, real.stdout
    assert asyncio.run(_keys(object_store, remote_url)) == set()
    ro = subprocess.run([*cmd, "--remote-mode", "read-only"], capture_output=True, text=True, env=env,
                        cwd=REPO_ROOT, timeout=60)
    assert ro.returncode == 2 and "read-only" in ro.stderr
