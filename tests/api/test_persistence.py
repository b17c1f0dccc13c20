"""Restarts keep everything; start-up repairs what a crash left half done."""

from __future__ import annotations

import asyncio
import os

from tests.support.inproc import Running, sha256


async def test_everything_survives_restart(reg: Running) -> None:
    layer = os.urandom(400_000)
    digest = await reg.push_image("cache/app", "main", [layer])
    before = dict(reg.store.index.counters)
    await reg.restart()
    assert reg.store.index.counters == before
    async with reg.http.get("/v2/cache/app/manifests/main") as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == digest
    async with reg.http.get(f"/v2/cache/app/blobs/{sha256(layer)}") as r:
        assert await r.read() == layer
    async with reg.http.get("/v2/cache/app/tags/list") as r:
        assert (await r.json())["tags"] == ["main"]


async def test_file_renamed_in_but_never_indexed_is_removed_on_start(reg: Running) -> None:
    """A crash between the rename and the index commit: the blob was never answered 201, so it must go."""
    data = b"half committed"
    digest = sha256(data)
    reg.store.index.begin_commit(digest)
    path = reg.store.files.path(digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    await reg.restart()
    assert not os.path.exists(path)
    assert reg.store.index.pending_commits() == []
    async with reg.http.head(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 404


async def test_pending_unlink_is_finished_on_start(reg: Running) -> None:
    digest = await reg.push_blob("a", b"doomed")
    m = reg.store.index.mutation()
    reg.store.index._drop_blob(m, digest)  # the index change of a deletion, without the file move
    reg.store.index.write(m)
    await reg.restart()
    assert await reg.store.reclaimer.drained(10)  # the reclaimer finishes it in the background
    assert not os.path.exists(reg.store.files.path(digest))
    assert reg.store.index.pending_unlinks() == []
    async with reg.http.head(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 404


async def test_stray_upload_files_and_torn_chunks_are_cleaned(reg: Running) -> None:
    async with reg.http.post("/v2/a/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with reg.http.patch(location, data=b"abc", headers={"Content-Range": "0-2"}) as r:
        assert r.status == 202
    sid = location.rsplit("/", 1)[1]
    with open(reg.root / "uploads" / sid, "ab") as f:
        f.write(b"torn bytes of a chunk never acknowledged")
    (reg.root / "uploads" / "stray").write_bytes(b"no session")
    await reg.restart()
    assert sorted(p.name for p in (reg.root / "uploads").iterdir()) == [sid]
    async with reg.http.put(location, params={"digest": sha256(b"abcdef")}, data=b"def") as r:
        assert r.status == 201


async def test_refuses_a_foreign_directory(tmp_path, clock) -> None:
    import pytest

    root = tmp_path / "notastore"
    root.mkdir()
    (root / "important.txt").write_text("user data")
    with pytest.raises(RuntimeError, match="not a cachesvc store"):
        await Running(root, clock).start()
    assert (root / "important.txt").read_text() == "user data"


async def test_blob_pushed_again_while_its_old_file_waits_for_deletion(reg: Running) -> None:
    """A dropped blob's file is deleted in the background; pushing the same digest before that happens must
    end with the new file in place and served, not deleted by the late reclaimer."""
    data = b"evicted, then pushed again" * 1000
    digest = await reg.push_blob("a", data)
    await reg.store.reclaimer.stop()  # hold deletions back, so the old file is still waiting
    reg.store.lose_blob(digest, "dropped for the test")
    assert reg.store.reclaimer.pending == 1 and os.path.exists(reg.store.files.path(digest))
    assert await reg.push_blob("a", data) == digest  # settles the old file first, then installs the new one
    reg.store.reclaimer.start(asyncio.get_running_loop())
    assert await reg.store.reclaimer.drained(10)
    assert os.path.exists(reg.store.files.path(digest))
    async with reg.http.get(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data
    assert reg.store.index.pending_unlinks() == []
