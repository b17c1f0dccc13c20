"""The object-store client against the real object store: round trips, multipart, aborted uploads, bounds."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from cachesvc.remote.objects import PART_SIZE, Remote, RemoteUnavailable, RemoteURL
from cachesvc.remote.writeback import LocalBlob, Permanent
from tests.remote.helpers import ObjectStoreUnderTest
from tests.support.inproc import sha256


def test_remote_url() -> None:
    assert RemoteURL.parse("s3://bucket/a/b/") == RemoteURL("bucket", "a/b")
    assert RemoteURL.parse("s3://bucket") == RemoteURL("bucket", "")
    with pytest.raises(ValueError):
        RemoteURL.parse("http://bucket/x")


async def test_round_trips(object_store: ObjectStoreUnderTest, remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    assert await remote.head("manifests/a/b/sha256/00") is None
    assert await remote.get("tags/a/b/latest") is None
    await remote.put("manifests/a/b/sha256/00", b"{}", content_type="application/vnd.oci.image.manifest.v1+json",
                     metadata={"pushed-by": "test"})
    info = await remote.head("manifests/a/b/sha256/00")
    assert info is not None and info.size == 2 and abs(info.modified - time.time()) < 60
    body, attrs, _ = await remote.get("manifests/a/b/sha256/00")  # type: ignore[misc]
    assert body == b"{}" and attrs["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert attrs.get("pushed-by") == "test"
    assert [i.key async for i in remote.list("manifests/")] == ["manifests/a/b/sha256/00"]
    await remote.delete(["manifests/a/b/sha256/00", "manifests/never/there"])
    assert [i.key async for i in remote.list("")] == []


async def test_multipart_round_trip_and_streamed_read(object_store: ObjectStoreUnderTest, remote_url: str) -> None:
    remote = object_store.remote(remote_url)
    data = os.urandom(2 * PART_SIZE + 12345)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1024 * 1024):
            yield data[i:i + 1024 * 1024]

    await remote.put_stream("blobs/sha256/big", chunks(), len(data))
    opened = await remote.open("blobs/sha256/big")
    assert opened is not None
    size, stream = opened
    assert size == len(data)
    assert b"".join([c async for c in stream]) == data


async def test_an_upload_that_fails_half_way_never_becomes_visible(object_store: ObjectStoreUnderTest,
                                                                   remote_url: str) -> None:
    remote = object_store.remote(remote_url)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(PART_SIZE)
        raise Permanent("the local copy did not match its digest")

    with pytest.raises((RemoteUnavailable, Permanent)):
        await remote.put_stream("blobs/sha256/never", chunks(), 4 * PART_SIZE)
    assert await remote.head("blobs/sha256/never") is None


def test_local_blob_reader_refuses_corrupt_bytes(tmp_path: object) -> None:
    class Files:
        def __init__(self, path: str) -> None:
            self.path = path

        def open_any(self, digest: str) -> tuple[int, bool]:
            return os.open(self.path, os.O_RDONLY), False

    class FakeStore:
        pass

    good = os.urandom(3 * 1024 * 1024)
    path = os.path.join(str(tmp_path), "blob")
    with open(path, "wb") as f:
        f.write(good[:-1] + bytes([good[-1] ^ 1]))
    store = FakeStore()
    store.files = Files(path)  # type: ignore[attr-defined]
    reader = LocalBlob(store, sha256(good), len(good))
    with pytest.raises(Permanent):
        reader.read_all()

    async def drain() -> int:
        n = 0
        async for chunk in LocalBlob(store, sha256(good), len(good)).chunks():
            n += len(chunk)
        return n

    with pytest.raises(Permanent):
        asyncio.run(drain())
    with open(path, "wb") as f:
        f.write(good)
    assert LocalBlob(store, sha256(good), len(good)).read_all() == good
    assert asyncio.run(drain()) == len(good)


async def test_unreachable_store_fails_fast_and_trips_the_breaker() -> None:
    remote = Remote("s3://b/p", endpoint="http://127.0.0.1:9", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable):
        await remote.head("x", lookup=True)
    assert remote.down and time.monotonic() - t0 < 2.0
    t1 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="marked down"):
        await remote.get("x", lookup=True)
    assert time.monotonic() - t1 < 0.05
