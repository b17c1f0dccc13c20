"""Blob endpoints: HEAD/GET (with Range)/DELETE, against a real server and real files."""

from __future__ import annotations

import os

from tests.support.inproc import Running, error_code, sha256


async def test_head_and_get_blob(reg: Running) -> None:
    data = os.urandom(300_000)  # over the inline limit: served by sendfile
    digest = await reg.push_blob("cache/app", data)
    async with reg.http.head(f"/v2/cache/app/blobs/{digest}") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["Docker-Content-Digest"] == digest
        assert await r.read() == b""
    async with reg.http.get(f"/v2/cache/app/blobs/{digest}") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert await r.read() == data


async def test_small_blob_served_inline(reg: Running) -> None:
    digest = await reg.push_blob("a", b"tiny")
    async with reg.http.get(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == b"tiny"


async def test_empty_blob(reg: Running) -> None:
    digest = await reg.push_blob("a", b"")
    async with reg.http.get(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 200 and r.headers["Content-Length"] == "0" and await r.read() == b""


async def test_blob_unknown(reg: Running) -> None:
    missing = sha256(b"never pushed")
    async with reg.http.head(f"/v2/a/blobs/{missing}") as r:
        assert r.status == 404
    async with reg.http.get(f"/v2/a/blobs/{missing}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UNKNOWN"


async def test_blob_visible_only_in_its_repository(reg: Running) -> None:
    digest = await reg.push_blob("one", b"content")
    async with reg.http.get(f"/v2/two/blobs/{digest}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UNKNOWN"


async def test_range_requests(reg: Running) -> None:
    data = os.urandom(1_000_000)
    digest = await reg.push_blob("a", data)
    cases = {"bytes=0-99": data[:100], "bytes=999900-": data[999900:], "bytes=-10": data[-10:],
             "bytes=500000-2000000": data[500000:], "bytes=123-123": data[123:124]}
    for header, expected in cases.items():
        async with reg.http.get(f"/v2/a/blobs/{digest}", headers={"Range": header}) as r:
            assert r.status == 206, header
            assert await r.read() == expected, header
            start = len(data) - len(expected) if header.startswith("bytes=-") else int(header[6:].split("-")[0])
            assert r.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"


async def test_unsatisfiable_and_malformed_ranges_are_416(reg: Running) -> None:
    digest = await reg.push_blob("a", b"0123456789")
    for header in ("bytes=10-", "bytes=5-2", "bytes=abc", "items=0-1", "bytes=-0", "bytes=-"):
        async with reg.http.get(f"/v2/a/blobs/{digest}", headers={"Range": header}) as r:
            assert r.status == 416, header
            assert r.headers["Content-Range"] == "bytes */10"
            assert await error_code(r) == "RANGE_INVALID"


async def test_multi_range_serves_whole_blob(reg: Running) -> None:
    digest = await reg.push_blob("a", b"0123456789")
    async with reg.http.get(f"/v2/a/blobs/{digest}", headers={"Range": "bytes=0-1,4-5"}) as r:
        assert r.status == 200 and await r.read() == b"0123456789"


async def test_delete_blob(reg: Running) -> None:
    digest = await reg.push_blob("a", b"to delete")
    async with reg.http.delete(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 202
    async with reg.http.head(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 404
    async with reg.http.delete(f"/v2/a/blobs/{digest}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UNKNOWN"


async def test_delete_blob_in_one_repo_keeps_it_in_another(reg: Running) -> None:
    d = await reg.push_blob("one", b"shared")
    await reg.push_blob("two", b"shared")
    async with reg.http.delete(f"/v2/one/blobs/{d}") as r:
        assert r.status == 202
    async with reg.http.get(f"/v2/two/blobs/{d}") as r:
        assert r.status == 200 and await r.read() == b"shared"


async def test_deleting_a_needed_blob_drops_the_manifests_that_need_it(reg: Running) -> None:
    """A manifest must never be served when one of its blobs cannot be: it becomes a clean miss."""
    layer = os.urandom(1000)
    await reg.push_image("a", "v1", [layer])
    async with reg.http.delete(f"/v2/a/blobs/{sha256(layer)}") as r:
        assert r.status == 202
    async with reg.http.get("/v2/a/manifests/v1") as r:
        assert r.status == 404 and await error_code(r) == "MANIFEST_UNKNOWN"


async def test_dedup_one_file_per_digest(reg: Running) -> None:
    data = os.urandom(5000)
    d = await reg.push_blob("one", data)
    await reg.push_blob("two", data)
    files = [p for p in (reg.root / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [d.split(":")[1]]
    assert reg.store.index.counters["blobs"] == 1
    assert reg.store.index.counters["blob_bytes"] == len(data)


async def test_missing_file_turns_manifest_into_clean_miss(reg: Running) -> None:
    layer = os.urandom(2000)
    await reg.push_image("a", "v1", [layer])
    reg.store.files.path(sha256(layer))
    os.unlink(reg.store.files.path(sha256(layer)))
    async with reg.http.get(f"/v2/a/blobs/{sha256(layer)}") as r:
        assert r.status == 404
    async with reg.http.head("/v2/a/manifests/v1") as r:
        assert r.status == 404
    async with reg.http.get("/v2/a/tags/list") as r:
        assert (await r.json())["tags"] == []
