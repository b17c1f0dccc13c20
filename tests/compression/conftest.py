"""Fixtures for the compression-at-rest tests: an in-process server whose event loop runs in its own thread, so
synchronous tests (hypothesis properties) can drive it over real HTTP and still reach into its store."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.compression.layers import config_json, text_tar
from tests.support.inproc import Clock, Running, image_manifest, sha256

T = TypeVar("T")


class ThreadedServer:
    """A started in-process cachesvc (real socket, RocksDB, files) on a loop in a background thread."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.root = root
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cachesvc-test-loop", daemon=True)
        self.thread.start()
        self.running = self.call(Running(root, Clock(), **overrides).start())
        self.port = int(self.running.url.rsplit(":", 1)[1])

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread (the store is not shared across threads)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    @property
    def store(self) -> Any:
        return self.running.store

    def drain(self) -> int:
        return self.call(self.store.compressor.drain())

    def restart(self) -> None:
        self.call(self.running.restart())
        self.port = int(self.running.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.running.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # -- blocking HTTP ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        status, _, body = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        assert status == 201, body
        return digest

    def push_image(self, repo: str, tag: str, layers: list[bytes], config: bytes,
                   layer_type: str = "application/vnd.oci.image.layer.v1.tar") -> str:
        import json

        cdigest = self.push_blob(repo, config)
        descs = [{"mediaType": layer_type, "digest": self.push_blob(repo, x), "size": len(x)} for x in layers]
        doc = json.dumps(image_manifest(cdigest, len(config), descs)).encode()
        status, headers, body = self.request("PUT", f"/v2/{repo}/manifests/{tag}", doc,
                                             {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 201, body
        return headers["docker-content-digest"]

    def get_blob(self, repo: str, digest: str, range_header: str | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header} if range_header
                            else None)

    def forms(self, digest: str) -> tuple[bool, bool]:
        """(plain file exists, compressed file exists)."""
        files = self.store.files
        return Path(files.path(digest)).exists(), Path(files.zpath(digest)).exists()


@pytest.fixture
def make_threaded(tmp_path: Path) -> Iterator[Callable[..., ThreadedServer]]:
    started: list[ThreadedServer] = []

    def make(**overrides: Any) -> ThreadedServer:
        s = ThreadedServer(tmp_path / f"root{len(started)}", **overrides)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(make_threaded: Callable[..., ThreadedServer]) -> ThreadedServer:
    return make_threaded()


@pytest.fixture(scope="session")
def big_tar() -> bytes:
    """About 5 MiB of plain tar: three seekable frames."""
    return text_tar(1, 5 * 1024 * 1024 + 12345)


@pytest.fixture(scope="session")
def small_tar() -> bytes:
    return text_tar(2, 300_000)


@pytest.fixture(scope="session")
def config() -> bytes:
    return config_json(3)
