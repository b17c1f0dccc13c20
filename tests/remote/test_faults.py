"""The object store fails under a running cachesvc: uploads resume and complete; local work never notices; misses
stay quick 404s. These stop and restart the SeaweedFS S3 gateway itself (its data stays)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachesvc.remote import keys
from tests.remote.helpers import ObjectStoreUnderTest, builder, metrics, remote_status, wait_drained
from tests.support.http import Http, sha256
from tests.support.seaweedfs import SeaweedFS

MiB = 1024 * 1024


@pytest.fixture
def cluster(object_store: ObjectStoreUnderTest) -> Iterator[SeaweedFS]:
    if object_store.cluster is None:
        pytest.skip("stops the object store: needs the SeaweedFS cluster the tests start")
    yield object_store.cluster
    if not [p for p in object_store.cluster.procs if p.name == "s3"]:
        object_store.cluster.start_s3()  # whatever happened, later tests get their object store back


def _timed(h: Http, method: str, path: str) -> tuple[int, float]:
    t0 = time.monotonic()
    status, _, _ = h.request(method, path)
    return status, time.monotonic() - t0


def test_store_stopped_mid_upload_resumes_and_completes(tmp_path: Path, object_store: ObjectStoreUnderTest,
                                                        cluster: SeaweedFS, remote_url: str) -> None:
    a = builder(tmp_path / "a", object_store, remote_url, "--remote-concurrency", "2").start()
    try:
        h = Http(a.url)
        big = [os.urandom(24 * MiB) for _ in range(2)]  # multipart uploads (3 parts each)
        small = [os.urandom(100_000) for _ in range(3)]
        first = h.push_blob("fault/app", big[0])
        deadline = time.monotonic() + 10
        while not remote_status(a)["queue"]["active"]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        cluster.stop_s3()  # while the first big blob is going up
        digest = h.push_image("fault/app", "main", [*big, *small])  # stored and answered locally all the same
        assert first == sha256(big[0])
        time.sleep(1.0)
        status = remote_status(a)["queue"]
        assert status["depth"] >= 1 and status["last_error"], status
        a.restart()  # the queue is persisted: it survives a restart while the store is down
        assert remote_status(a)["queue"]["depth"] >= 1
        cluster.start_s3()
        wait_drained(a, timeout=60)
        retries = sum(v for k, v in metrics(a).items() if k.startswith("cachesvc_remote_uploads_total")
                      and 'result="retry"' in k)
        assert retries >= 1  # after the restart, too, uploads failed until the store was back
    finally:
        a.stop()

    async def check() -> None:
        remote = object_store.remote(remote_url)
        for blob in [*big, *small, b"{}"]:
            got = await remote.get(keys.blob(sha256(blob)))
            assert got is not None and hashlib.sha256(got[0]).digest() == hashlib.sha256(blob).digest()
        manifest = await remote.get(keys.manifest("fault/app", digest))
        assert manifest is not None and sha256(manifest[0]) == digest
        tag = await remote.get(keys.tag("fault/app", "main"))
        assert tag is not None and keys.TagRecord.decode(tag[0]).digest == digest  # type: ignore[union-attr]
        listed = [i.key async for i in remote.list(keys.BLOBS)]
        assert len(listed) == 6, listed  # nothing partial or extra became visible

    asyncio.run(check())


def test_store_down_local_hits_fine_misses_quick_404(tmp_path: Path, object_store: ObjectStoreUnderTest,
                                                     cluster: SeaweedFS, remote_url: str) -> None:
    a = builder(tmp_path / "a", object_store, remote_url, "--remote-timeout", "2s").start()
    try:
        h = Http(a.url)
        layer = os.urandom(500_000)
        digest = h.push_image("down/app", "main", [layer])
        wait_drained(a)
        cluster.stop_s3()
        for method, path in (("HEAD", "/v2/down/app/manifests/main"), ("GET", "/v2/down/app/manifests/main"),
                             ("GET", f"/v2/down/app/manifests/{digest}"),
                             ("HEAD", f"/v2/down/app/blobs/{sha256(layer)}"),
                             ("GET", f"/v2/down/app/blobs/{sha256(layer)}")):
            status, took = _timed(h, method, path)
            assert status == 200 and took < 0.5, (method, path, status, took)
        slowest = 0.0
        for i in range(10):
            for method, path in (("HEAD", f"/v2/down/app/blobs/{sha256(str(i).encode())}"),
                                 ("GET", f"/v2/down/app/blobs/{sha256(str(i).encode())}"),
                                 ("GET", f"/v2/down/app/manifests/missing-{i}"),
                                 ("HEAD", f"/v2/other/app/manifests/{sha256(str(i).encode())}")):
                status, took = _timed(h, method, path)
                assert status == 404, (method, path, status)
                slowest = max(slowest, took)
        assert slowest < 2.0 + 1.0, f"a miss took {slowest:.2f}s with the object store down"
        # Pushes still work: stored locally, queued for later.
        h.push_image("down/app", "new", [os.urandom(1000)])
        assert remote_status(a)["queue"]["depth"] >= 1
        assert remote_status(a)["reachable"] is False
        cluster.start_s3()
        wait_drained(a)
    finally:
        a.stop()


class Blackhole:
    """A TCP listener that accepts connections and never answers: an object store that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_hanging_store_misses_are_bounded(tmp_path: Path, object_store: ObjectStoreUnderTest) -> None:
    hole = Blackhole()
    from tests.support.servers import Cachesvc

    a = Cachesvc(tmp_path / "a", extra_args=["--remote", "s3://hangs/p", "--remote-endpoint",
                                              f"http://127.0.0.1:{hole.port}", "--remote-timeout", "1s"],
                 env=object_store.env or {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}).start()
    try:
        h = Http(a.url)
        h.push_image("hang/app", "main", [b"local layer"])
        status, took = _timed(h, "GET", "/v2/hang/app/manifests/main")
        assert status == 200 and took < 0.5
        times = []
        for i in range(6):
            status, took = _timed(h, "GET", f"/v2/hang/app/blobs/{sha256(str(i).encode())}")
            assert status == 404
            times.append(took)
        assert max(times) < 1.0 + 1.5, times
        assert sum(times[1:]) < 1.0, f"later misses should fail fast while the store is marked down: {times}"
    finally:
        a.stop()
        hole.close()
