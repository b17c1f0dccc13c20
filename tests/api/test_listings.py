"""Tag listing, catalog and referrers: pagination, ordering, filtering and errors."""

from __future__ import annotations

import json

from tests.support.inproc import Running, error_code, image_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def test_tags_list_sorted_and_paginated(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    body = json.dumps(image_manifest(c, 2, [])).encode()
    names = ["v10", "v2", "latest", "A", "v1"]
    for t in names:
        await reg.push_manifest("a", t, body)
    async with reg.http.get("/v2/a/tags/list") as r:
        assert r.status == 200
        assert await r.json() == {"name": "a", "tags": sorted(names)}
        assert "Link" not in r.headers
    async with reg.http.get("/v2/a/tags/list", params={"n": "2"}) as r:
        assert (await r.json())["tags"] == ["A", "latest"]
        assert r.headers["Link"] == '</v2/a/tags/list?n=2&last=latest>; rel="next"'
    async with reg.http.get("/v2/a/tags/list", params={"n": "2", "last": "latest"}) as r:
        assert (await r.json())["tags"] == ["v1", "v10"]
        assert "Link" in r.headers
    async with reg.http.get("/v2/a/tags/list", params={"n": "2", "last": "v10"}) as r:
        assert (await r.json())["tags"] == ["v2"]
        assert "Link" not in r.headers
    async with reg.http.get("/v2/a/tags/list", params={"last": "v1"}) as r:
        assert (await r.json())["tags"] == ["v10", "v2"]
    async with reg.http.get("/v2/a/tags/list", params={"n": "0"}) as r:
        assert (await r.json())["tags"] == []
    async with reg.http.get("/v2/a/tags/list", params={"n": "x"}) as r:
        assert r.status == 400


async def test_tags_of_prefix_repository_do_not_leak(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    await reg.push_manifest("a", "t1", image_manifest(c, 2, []))
    c2 = await reg.push_blob("a/b", b"{}")
    await reg.push_manifest("a/b", "t2", image_manifest(c2, 2, []))
    async with reg.http.get("/v2/a/tags/list") as r:
        assert (await r.json())["tags"] == ["t1"]


async def test_tags_list_unknown_repository(reg: Running) -> None:
    async with reg.http.get("/v2/nothing/here/tags/list") as r:
        assert r.status == 404 and await error_code(r) == "NAME_UNKNOWN"


async def test_catalog(reg: Running) -> None:
    for repo in ("b", "a", "a/x", "c"):
        await reg.push_blob(repo, b"x")
    async with reg.http.get("/v2/_catalog") as r:
        assert (await r.json())["repositories"] == ["a", "a/x", "b", "c"]
    async with reg.http.get("/v2/_catalog", params={"n": "2"}) as r:
        assert (await r.json())["repositories"] == ["a", "a/x"]
        assert r.headers["Link"] == '</v2/_catalog?n=2&last=a/x>; rel="next"'
    async with reg.http.get("/v2/_catalog", params={"n": "2", "last": "a/x"}) as r:
        assert (await r.json())["repositories"] == ["b", "c"]


async def test_referrers_filter_and_empty(reg: Running) -> None:
    subject = await reg.push_image("a", "v1", [b"l"])
    empty = await reg.push_blob("a", b"{}")
    kinds = ("application/vnd.example.sbom", "application/vnd.example.sig", "application/vnd.example.sbom")
    for i, kind in enumerate(kinds):
        doc = image_manifest(empty, 2, [], config_type="application/vnd.oci.empty.v1+json", artifactType=kind,
                             subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
                             annotations={"n": str(i)})
        await reg.push_manifest("a", f"ref-{i}", doc)
    async with reg.http.get(f"/v2/a/referrers/{subject}") as r:
        assert len((await r.json())["manifests"]) == 3
        assert "OCI-Filters-Applied" not in r.headers
    async with reg.http.get(f"/v2/a/referrers/{subject}", params={"artifactType": "application/vnd.example.sbom"}) as r:
        body = await r.json()
        assert r.headers["OCI-Filters-Applied"] == "artifactType"
        assert [m["artifactType"] for m in body["manifests"]] == ["application/vnd.example.sbom"] * 2
    other = "sha256:" + "0" * 64
    async with reg.http.get(f"/v2/a/referrers/{other}") as r:
        assert r.status == 200 and (await r.json())["manifests"] == []
    async with reg.http.get("/v2/a/referrers/sha256:zz") as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"


async def test_referrer_falls_with_its_manifest(reg: Running) -> None:
    subject = await reg.push_image("a", "v1", [b"l"])
    empty = await reg.push_blob("a", b"{}")
    doc = image_manifest(empty, 2, [], artifactType="application/x",
                         subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 1})
    ref = await reg.push_manifest("a", "sig", doc)
    async with reg.http.delete(f"/v2/a/manifests/{ref}") as r:
        assert r.status == 202
    async with reg.http.get(f"/v2/a/referrers/{subject}") as r:
        assert (await r.json())["manifests"] == []
