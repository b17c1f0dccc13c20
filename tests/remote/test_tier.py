"""The shared tier between in-process builders on a real object store: write-behind, read-through, fills."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable

from cachesvc.remote import keys
from tests.remote.helpers import ObjectStoreUnderTest, drained
from tests.support.inproc import Running, image_manifest, sha256

Make = Callable[..., Awaitable[Running]]
OCI = "application/vnd.oci.image.manifest.v1+json"


def metric(server: Running, name: str, **labels: str) -> float:
    assert server.server is not None
    value = server.server.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_write_behind_then_read_through(builders: Make, object_store: ObjectStoreUnderTest,
                                              remote_url: str) -> None:
    a = await builders("a")
    layers = [os.urandom(300_000), os.urandom(1000)]
    digest = await a.push_image("cache/app", "main", layers, config=b'{"a":1}')
    await drained(a)

    remote = object_store.remote(remote_url)
    for layer in layers:
        got = await remote.get(keys.blob(sha256(layer)))
        assert got is not None and got[0] == layer
    body, attrs, _ = await remote.get(keys.manifest("cache/app", digest))  # type: ignore[misc]
    assert sha256(body) == digest and attrs["Content-Type"] == OCI
    tag = keys.TagRecord.decode((await remote.get(keys.tag("cache/app", "main")))[0])  # type: ignore[index]
    assert tag is not None and tag.digest == digest

    b = await builders("b")  # empty root, same shared tier
    async with b.http.head("/v2/cache/app/manifests/main") as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == digest
    async with b.http.get(f"/v2/cache/app/manifests/{digest}", headers={"Accept": OCI}) as r:
        assert r.status == 200 and await r.read() == body and r.headers["Content-Type"] == OCI
    for layer in layers:
        async with b.http.get(f"/v2/cache/app/blobs/{sha256(layer)}") as r:
            assert r.status == 200 and await r.read() == layer
    assert metric(b, "cachesvc_tier_lookups_total", kind="manifest", tier="shared") == 2
    assert metric(b, "cachesvc_tier_lookups_total", kind="blob", tier="shared") >= 1

    # In the background B makes it all local: then the same requests are local hits.
    deadline = time.monotonic() + 20
    while b.store.index.tag("cache/app", "main") != digest:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for layer in layers:
        async with b.http.get(f"/v2/cache/app/blobs/{sha256(layer)}") as r:
            assert r.status == 200 and await r.read() == layer
    async with b.http.get("/v2/cache/app/manifests/main", headers={"Accept": OCI}) as r:
        assert r.status == 200 and await r.read() == body
    assert metric(b, "cachesvc_tier_lookups_total", kind="manifest", tier="local") == 1
    # Nothing B fetched was queued back for upload.
    assert b.server is not None and b.server.remote is not None and b.server.remote.writeback is not None
    assert b.server.remote.writeback.depth == 0 and b.server.remote.writeback.uploaded == 0


async def test_misses_everywhere_are_404(builders: Make) -> None:
    b = await builders("b")
    missing = sha256(b"nowhere")
    async with b.http.head(f"/v2/x/y/blobs/{missing}") as r:
        assert r.status == 404
    async with b.http.get(f"/v2/x/y/blobs/{missing}") as r:
        assert r.status == 404
    async with b.http.get("/v2/x/y/manifests/nope") as r:
        assert r.status == 404
    async with b.http.head(f"/v2/x/y/manifests/{missing}") as r:
        assert r.status == 404
    assert metric(b, "cachesvc_tier_lookups_total", kind="blob", tier="miss") == 2


async def test_manifest_with_a_blob_missing_remotely_is_not_served(builders: Make, object_store: ObjectStoreUnderTest,
                                                                   remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    layer = os.urandom(5000)
    config = b"{}"
    await remote.put(keys.blob(sha256(config)), config)  # the layer is never uploaded
    doc = json.dumps(image_manifest(sha256(config), len(config), [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(layer), "size": 5000}])).encode()
    await remote.put(keys.manifest("broken/app", sha256(doc)), doc, content_type=OCI)
    await remote.put(keys.tag("broken/app", "v1"), keys.TagRecord(sha256(doc), 1).encode())
    b = await builders("b")
    async with b.http.get("/v2/broken/app/manifests/v1") as r:
        assert r.status == 404
    async with b.http.get(f"/v2/broken/app/manifests/{sha256(doc)}") as r:
        assert r.status == 404
    await remote.put(keys.blob(sha256(layer)), layer)  # now whole
    async with b.http.get("/v2/broken/app/manifests/v1") as r:
        assert r.status == 200 and await r.read() == doc


async def test_corrupt_remote_blob_is_never_served_whole_nor_stored(builders: Make, object_store: ObjectStoreUnderTest,
                                                                    remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    good = os.urandom(2 * 1024 * 1024)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    digest = sha256(good)
    await remote.put(keys.blob(digest), bytes(bad))
    b = await builders("b")
    received = b""
    try:
        async with b.http.get(f"/v2/any/repo/blobs/{digest}") as r:
            assert r.status == 200
            received = await r.read()
    except Exception:  # the server cuts the body off: that is the point
        pass
    assert received != bytes(bad) and len(received) < len(good)
    await asyncio.sleep(0.2)
    assert b.store.index.blob(digest) is None
    assert not [p for p in os.listdir(b.store.layout.uploads)], "the failed fetch left a file behind"
    assert metric(b, "cachesvc_remote_fetches_total", kind="blob", result="corrupt") == 1


async def test_concurrent_misses_fetch_once(builders: Make, object_store: ObjectStoreUnderTest,
                                            remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    data = os.urandom(6 * 1024 * 1024)
    digest = sha256(data)
    await remote.put(keys.blob(digest), data)
    b = await builders("b")

    async def get(i: int) -> bytes:
        headers = {"Range": "bytes=1000-1999"} if i == 0 else {}
        async with b.http.get(f"/v2/team{i % 3}/app/blobs/{digest}", headers=headers) as r:
            assert r.status in (200, 206)
            return await r.read()

    bodies = await asyncio.gather(*(get(i) for i in range(8)))
    assert bodies[0] == data[1000:2000]
    assert all(body == data for body in bodies[1:])
    down = metric(b, "cachesvc_remote_bytes_total", direction="down")
    assert len(data) <= down < 2 * len(data), f"{down} bytes fetched for 8 concurrent misses"
    assert b.store.index.blob(digest) is not None
    for i in range(3):
        assert b.store.index.linked_size(digest, f"team{i}/app") == len(data)


async def test_push_skipping_blobs_found_remotely(builders: Make) -> None:
    """A client HEADs a blob, finds it (in the shared tier) and skips uploading it; its manifest must be taken."""
    a = await builders("a")
    layer = os.urandom(100_000)
    await a.push_image("base/img", "1", [layer])
    await drained(a)
    b = await builders("b")
    async with b.http.head(f"/v2/other/img/blobs/{sha256(layer)}") as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(layer)
    async with b.http.head(f"/v2/other/img/blobs/{sha256(b'{}')}") as r:
        assert r.status == 200
    doc = image_manifest(sha256(b"{}"), 2, [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                             "digest": sha256(layer), "size": len(layer)}])
    digest = await b.push_manifest("other/img", "2", doc)
    assert b.store.index.linked_size(sha256(layer), "other/img") == len(layer)
    async with b.http.get(f"/v2/other/img/manifests/{digest}") as r:
        assert r.status == 200


async def test_read_only_builder_never_writes(builders: Make, object_store: ObjectStoreUnderTest,
                                              remote_url: str) -> None:
    a = await builders("a")
    digest = await a.push_image("ro/app", "main", [os.urandom(1000)])
    await drained(a)
    remote = object_store.remote(remote_url)
    markers = {i.key: (await remote.get(i.key))[0] async for i in remote.list(keys.USED)}  # type: ignore[index]
    ro = await builders("ro", remote_mode="read-only")
    async with ro.http.get("/v2/ro/app/manifests/main") as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == digest
    await ro.push_image("ro/own", "x", [os.urandom(1000)])
    async with ro.http.get("/v2/ro/own/manifests/x") as r:
        assert r.status == 200
    ro.store.recency.flush()
    await asyncio.sleep(0.3)
    listed = [i.key async for i in remote.list("")]
    assert not [k for k in listed if "ro/own" in k]
    after = {i.key: (await remote.get(i.key))[0] async for i in remote.list(keys.USED)}  # type: ignore[index]
    assert after == markers, "read-only wrote use markers"
    assert ro.server is not None and ro.server.remote is not None and ro.server.remote.writeback is None


async def test_tags_are_last_writer_wins_by_push_time(builders: Make, object_store: ObjectStoreUnderTest,
                                                      remote_url: str) -> None:
    a = await builders("a")
    b = await builders("b")
    first = await a.push_image("lww/app", "main", [b"from a"])
    second = await b.push_image("lww/app", "main", [b"from b"])  # pushed later
    await drained(b)
    await drained(a)
    remote = object_store.remote(remote_url)
    rec = keys.TagRecord.decode((await remote.get(keys.tag("lww/app", "main")))[0])  # type: ignore[index]
    assert rec is not None and rec.digest == second != first
    # A stale upload (older push) arriving late does not move the tag back.
    assert a.server is not None and a.server.remote is not None and a.server.remote.writeback is not None
    await a.server.remote.writeback._put_tag("lww/app", "main", first, rec.pushed_at - 1, OCI)
    rec2 = keys.TagRecord.decode((await remote.get(keys.tag("lww/app", "main")))[0])  # type: ignore[index]
    assert rec2 is not None and rec2.digest == second


async def test_uses_refresh_markers_locally_and_remotely(builders: Make, object_store: ObjectStoreUnderTest,
                                                        remote_url: str) -> None:
    a = await builders("a")
    digest = await a.push_image("used/app", "main", [b"layer"])
    await drained(a)
    remote = object_store.remote(remote_url)
    key = keys.used("used/app", digest)
    deadline = time.monotonic() + 10
    while await remote.head(key) is None:
        assert time.monotonic() < deadline, "no use marker after the upload"
        await asyncio.sleep(0.05)
    first = json.loads((await remote.get(key))[0])["used"]  # type: ignore[index]
    await asyncio.sleep(0.1)
    async with a.http.get("/v2/used/app/manifests/main") as r:  # a local hit
        assert r.status == 200
    a.store.recency.flush()
    deadline = time.monotonic() + 10
    while json.loads((await remote.get(key))[0])["used"] <= first:  # type: ignore[index]
        assert time.monotonic() < deadline, "a local hit did not refresh the marker"
        await asyncio.sleep(0.05)


async def test_index_manifests_and_children(builders: Make, object_store: ObjectStoreUnderTest) -> None:
    a = await builders("a")
    child1 = await a.push_image("multi/app", "amd64", [b"amd64 layer"])
    child2 = await a.push_image("multi/app", "arm64", [b"arm64 layer"])
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI, "digest": d, "size": len(a.store.index.body("multi/app", d) or b"")}
                           for d in (child1, child2)]}
    top = await a.push_manifest("multi/app", "latest", index, "application/vnd.oci.image.index.v1+json")
    await drained(a)
    b = await builders("b")
    async with b.http.get("/v2/multi/app/manifests/latest") as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == top
    deadline = time.monotonic() + 20
    while b.store.index.manifest("multi/app", top) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for child in (child1, child2):
        assert b.store.index.manifest("multi/app", child) is not None
    assert hashlib.sha256(b.store.index.body("multi/app", top) or b"").hexdigest() == top.split(":")[1]
