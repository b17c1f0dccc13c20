"""An in-process cachesvc on a real loopback socket, for fast API tests with an injectable clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cachesvc.app import Server
from cachesvc.settings import Settings
from cachesvc.store.store import Store


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Running:
    """A started server plus an HTTP session to it; ``restart()`` reopens the same data directory."""

    def __init__(self, root: Path, clock: Clock, **overrides: Any) -> None:
        self.root = root
        self.clock = clock
        self.settings = replace(Settings(), root=root, **overrides)
        self.server: Server | None = None
        self.site: web.TCPSite | None = None
        self.runner: web.ServerRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> Running:
        store = Store(self.settings, clock=self.clock)
        self.server = Server(self.settings, store=store)
        store.metrics = self.server.metrics
        await self.server.start()
        self.runner = web.ServerRunner(web.Server(self.server.handle, access_log=None))
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await self.site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(self.url, auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.server is not None:
            await self.server.close()
        self.session = self.runner = self.server = None

    async def restart(self) -> Running:
        await self.stop()
        return await self.start()

    @property
    def store(self) -> Store:
        assert self.server is not None
        return self.server.store

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    # -- conveniences for arranging state; the tests assert through raw HTTP --------------------------------
    async def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        async with self.http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data) as r:
            assert r.status == 201, await r.text()
        return digest

    async def push_manifest(self, repo: str, ref: str, doc: dict[str, Any] | bytes,
                            media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        async with self.http.put(f"/v2/{repo}/manifests/{ref}", data=body,
                                 headers={"Content-Type": media_type}) as r:
            assert r.status == 201, await r.text()
            return r.headers["Docker-Content-Digest"]

    async def push_image(self, repo: str, tag: str, layers: list[bytes], config: bytes = b"{}",
                         config_type: str = "application/vnd.oci.image.config.v1+json") -> str:
        cdigest = await self.push_blob(repo, config)
        descs = []
        for layer in layers:
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "digest": await self.push_blob(repo, layer), "size": len(layer)})
        return await self.push_manifest(repo, tag, image_manifest(cdigest, len(config), descs, config_type))


def image_manifest(config_digest: str, config_size: int, layers: list[dict[str, Any]],
                   config_type: str = "application/vnd.oci.image.config.v1+json",
                   **extra: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
            "layers": layers, **extra}


ErrorCheck = Callable[[aiohttp.ClientResponse], Any]


async def error_code(resp: aiohttp.ClientResponse) -> str:
    """The first spec error code of a response body (asserting the body has the spec's shape)."""
    body = await resp.json(content_type=None)
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], body
    for err in body["errors"]:
        assert set(err) <= {"code", "message", "detail"} and isinstance(err["message"], str), err
    return str(body["errors"][0]["code"])
