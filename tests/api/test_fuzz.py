"""Hypothesis against every parser of untrusted input, through the real server: never a 5xx, always the spec's
error shape, and nothing stored by a rejected request."""

from __future__ import annotations

import json

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.support.inproc import Running, sha256

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
path_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="?#"),
                    min_size=0, max_size=80)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=12)


async def check(resp: aiohttp.ClientResponse) -> None:
    assert resp.status < 500, (resp.status, await resp.text())
    if resp.status >= 400 and resp.method != "HEAD" and resp.headers.get("Content-Type", "").startswith(
            "application/json"):
        body = await resp.json()
        assert isinstance(body["errors"], list) and body["errors"][0]["code"]


@SETTINGS
@given(name=path_text, ref=path_text, method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH"]),
       kind=st.sampled_from(["manifests", "blobs", "blobs/uploads", "tags/list", "referrers"]))
async def test_paths(reg: Running, name: str, ref: str, method: str, kind: str) -> None:
    path = f"/v2/{name}/{kind}/{ref}" if kind != "tags/list" else f"/v2/{name}/tags/list"
    async with aiohttp.ClientSession() as raw, raw.request(
            method, URL(reg.url + path, encoded=True), data=b"{}" if method in ("PUT", "POST") else None) as r:
        await check(r)


@SETTINGS
@given(range_header=header_text)
async def test_range_header(reg: Running, range_header: str) -> None:
    digest = await reg.push_blob("fuzz", b"0123456789abcdef")
    async with reg.http.get(f"/v2/fuzz/blobs/{digest}", headers={"Range": range_header}) as r:
        await check(r)
        if r.status == 206:
            start, end = map(int, r.headers["Content-Range"].split()[1].split("/")[0].split("-"))
            assert await r.read() == b"0123456789abcdef"[start:end + 1]


@SETTINGS
@given(content_range=header_text, body=st.binary(max_size=64))
async def test_content_range_header(reg: Running, content_range: str, body: bytes) -> None:
    async with reg.http.post("/v2/fuzz/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with reg.http.patch(location, data=body, headers={"Content-Range": content_range}) as r:
        await check(r)
        accepted = r.status == 202
    async with reg.http.get(location) as r:
        expected = f"0-{len(body) - 1}" if accepted and body else "0-0"
        assert r.headers["Range"] == expected


@SETTINGS
@given(params=st.dictionaries(st.sampled_from(["digest", "mount", "from", "n", "last", "artifactType", "x"]),
                              header_text, max_size=4))
async def test_query_parameters(reg: Running, params: dict[str, str]) -> None:
    for method, path in (("POST", "/v2/fuzz/blobs/uploads/"), ("GET", "/v2/fuzz/tags/list"),
                         ("GET", "/v2/_catalog"), ("GET", f"/v2/fuzz/referrers/{sha256(b'x')}")):
        async with reg.http.request(method, path, params=params, data=b"x" if method == "POST" else None) as r:
            await check(r)


@SETTINGS
@given(doc=json_values, ctype=st.sampled_from(["application/vnd.oci.image.manifest.v1+json",
                                               "application/vnd.oci.image.index.v1+json", "", "text/x"]))
async def test_manifest_json(reg: Running, doc: object, ctype: str) -> None:
    before = reg.store.index.counters["manifests"]
    async with reg.http.put("/v2/fuzz/manifests/t", data=json.dumps(doc),
                            headers={"Content-Type": ctype} if ctype else {}) as r:
        await check(r)
        assert r.status in (201, 400, 404)
        if r.status != 201:
            assert reg.store.index.counters["manifests"] == before


@SETTINGS
@given(body=st.binary(max_size=200))
async def test_manifest_bytes(reg: Running, body: bytes) -> None:
    async with reg.http.put("/v2/fuzz/manifests/t", data=body,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}) as r:
        await check(r)
