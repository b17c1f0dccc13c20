"""Bad input on every route: the spec's error code and JSON body, and nothing changed in the store."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from tests.support.inproc import Running, error_code, sha256

BAD_NAMES = ["UPPER/case", "a/../b", "..", "a//b", "a/", "-a", "a-", "a__b_", "a%2Fb", "a b", "x" * 256,
             "a/" * 130 + "a", "ü"]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_invalid_repository_names(reg: Running, name: str) -> None:
    digest = sha256(b"x")
    requests = [("GET", f"/v2/{name}/tags/list"), ("HEAD", f"/v2/{name}/blobs/{digest}"),
                ("GET", f"/v2/{name}/blobs/{digest}"), ("POST", f"/v2/{name}/blobs/uploads/"),
                ("GET", f"/v2/{name}/manifests/latest"), ("PUT", f"/v2/{name}/manifests/latest"),
                ("DELETE", f"/v2/{name}/blobs/{digest}"), ("GET", f"/v2/{name}/referrers/{digest}")]
    async with aiohttp.ClientSession() as raw:  # no URL normalisation: the server sees the path as written
        for method, path in requests:
            url = URL(reg.url + path.replace(" ", "%20").replace("ü", "%C3%BC"), encoded=True)
            async with raw.request(method, url, data=b"{}" if method in ("PUT", "POST") else None) as r:
                assert r.status in (400, 404), (method, path, r.status)
                if r.status == 400 and method != "HEAD":
                    assert await error_code(r) == "NAME_INVALID", (method, path)
    assert reg.store.index.counters["blobs"] == 0
    assert reg.store.index.repos() == []


async def test_valid_unusual_names(reg: Running) -> None:
    for name in ("a", "a.b", "a_b", "a__b", "a---b", "a/b/c/d", "0/9", "x" * 200):
        await reg.push_blob(name, b"ok")


async def test_unknown_endpoint_and_method(reg: Running) -> None:
    async with reg.http.get("/v2/a/nothing") as r:
        assert r.status == 404 and await error_code(r)
    async with reg.http.post("/v2/a/manifests/latest") as r:
        assert r.status == 405
        assert "PUT" in r.headers["Allow"]
        assert await error_code(r) == "UNSUPPORTED"
    async with reg.http.get("/elsewhere") as r:
        assert r.status == 404


async def test_version_check(reg: Running) -> None:
    async with reg.http.get("/v2/") as r:
        assert r.status == 200
        assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_error_on_head_has_no_body_but_length(reg: Running) -> None:
    async with reg.http.head(f"/v2/a/blobs/{sha256(b'no')}") as r:
        assert r.status == 404
        assert int(r.headers["Content-Length"]) > 0
        assert await r.read() == b""


async def test_health_endpoints(reg: Running) -> None:
    async with reg.http.get("/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with reg.http.get("/readyz") as r:
        body = await r.json()
        assert r.status == 200 and body["checks"]["disk_writable"] is True
    async with reg.http.get("/metrics") as r:
        text = await r.text()
        assert "cachesvc_http_requests_total" in text
