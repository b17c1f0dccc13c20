"""The build benchmark's in-memory registry speaks enough of the Distribution API for docker, buildah and skopeo."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from benchmarks.memregistry import make_app


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app())) as c:
        yield c


async def test_api_root_and_unknowns(client: TestClient) -> None:
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    resp = await client.head(f"/v2/a/b/blobs/{digest(b'nothing')}")
    assert resp.status == 404
    resp = await client.get("/v2/a/manifests/latest")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_monolithic_push_pull_and_bad_digest(client: TestClient) -> None:
    data = b"layer bytes" * 1000
    resp = await client.post(f"/v2/app/blobs/uploads/?digest={digest(data)}", data=data)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest(data)
    resp = await client.head(f"/v2/app/blobs/{digest(data)}")
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    resp = await client.get(f"/v2/app/blobs/{digest(data)}")
    assert await resp.read() == data
    resp = await client.post(f"/v2/app/blobs/uploads/?digest={digest(b'other')}", data=data)
    assert resp.status == 400


async def test_chunked_upload_status_and_mount(client: TestClient) -> None:
    data = bytes(range(256)) * 4096
    resp = await client.post("/v2/cache/app/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    for i in range(0, len(data), 100_000):
        resp = await client.patch(location, data=data[i:i + 100_000])
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{min(i + 100_000, len(data)) - 1}"
    resp = await client.get(location)
    assert resp.status == 204
    resp = await client.put(f"{location}?digest={digest(data)}")
    assert resp.status == 201
    # cross-repository mount of a blob the registry holds: 201 without an upload
    resp = await client.post(f"/v2/other/blobs/uploads/?mount={digest(data)}&from=cache/app")
    assert resp.status == 201
    resp = await client.post(f"/v2/other/blobs/uploads/?mount={digest(b'absent')}&from=cache/app")
    assert resp.status == 202


async def test_manifests_by_tag_and_digest(client: TestClient) -> None:
    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    media = "application/vnd.docker.distribution.manifest.v2+json"
    resp = await client.put("/v2/app/manifests/main", data=body, headers={"Content-Type": media})
    assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == digest(body)
    for ref in ("main", digest(body)):
        resp = await client.get(f"/v2/app/manifests/{ref}")
        assert resp.status == 200 and await resp.read() == body
        assert resp.headers["Content-Type"] == media
    resp = await client.get("/v2/app/tags/list")
    assert (await resp.json())["tags"] == ["main"]
    stats = await (await client.get("/_mem/stats")).json()
    assert stats["manifests"] == 1 and stats["requests"] >= 4
