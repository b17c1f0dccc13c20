"""Manifest endpoints: HEAD/GET/PUT/DELETE by tag and digest, negotiation, references, subject, limits."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.support.inproc import Running, error_code, image_manifest, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
BODIES = Path("/work/shared/buildkit/bodies")


async def test_put_get_head_by_tag_and_digest(reg: Running) -> None:
    config, layer = b'{"architecture":"amd64"}', os.urandom(3000)
    c, lyr = await reg.push_blob("a", config), await reg.push_blob("a", layer)
    body = json.dumps(image_manifest(c, len(config), [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                                       "digest": lyr, "size": len(layer)}])).encode()
    async with reg.http.put("/v2/a/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201
        digest = r.headers["Docker-Content-Digest"]
        assert digest == sha256(body)
        assert r.headers["Location"] == f"/v2/a/manifests/{digest}"
    for ref in ("v1", digest):
        async with reg.http.head(f"/v2/a/manifests/{ref}") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == OCI_MANIFEST
            assert r.headers["Content-Length"] == str(len(body))
            assert r.headers["Docker-Content-Digest"] == digest
        async with reg.http.get(f"/v2/a/manifests/{ref}") as r:
            assert r.status == 200 and await r.read() == body


async def test_put_by_digest(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    body = json.dumps(image_manifest(c, 2, [])).encode()
    async with reg.http.put(f"/v2/a/manifests/{sha256(body)}", data=body,
                            headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201
    wrong = sha256(b"other")
    async with reg.http.put(f"/v2/a/manifests/{wrong}", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"


async def test_unknown_blob_is_manifest_blob_unknown_listing_each(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    missing = [sha256(b"l1"), sha256(b"l2")]
    doc = image_manifest(c, 2, [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d,
                                 "size": 2} for d in missing])
    async with reg.http.put("/v2/a/manifests/v1", data=json.dumps(doc),
                            headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 400
        body = await r.json()
        assert [e["code"] for e in body["errors"]] == ["MANIFEST_BLOB_UNKNOWN"] * 2
        assert {e["detail"]["digest"] for e in body["errors"]} == set(missing)
    async with reg.http.get("/v2/a/manifests/v1") as r:
        assert r.status == 404


async def test_blob_of_another_repository_does_not_count(reg: Running) -> None:
    c = await reg.push_blob("other", b"{}")
    async with reg.http.put("/v2/a/manifests/v1", data=json.dumps(image_manifest(c, 2, [])),
                            headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 400 and await error_code(r) == "MANIFEST_BLOB_UNKNOWN"


async def test_index_needs_child_manifests(reg: Running) -> None:
    child = await reg.push_image("a", "child", [b"layer"])
    missing_child = sha256(b"nope")
    for children, status in (([missing_child], 400), ([child], 201)):
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": 10} for d in children]}
        async with reg.http.put("/v2/a/manifests/multi", data=json.dumps(index),
                                headers={"Content-Type": OCI_INDEX}) as r:
            assert r.status == status
    async with reg.http.get("/v2/a/manifests/multi") as r:
        assert r.status == 200 and r.headers["Content-Type"] == OCI_INDEX


async def test_buildkit_legacy_cache_index_with_blob_entries(reg: Running) -> None:
    """BuildKit's image-manifest=false form: index entries are layer and cache-config blobs."""
    layer, cfg = os.urandom(500), b'{"layers":[]}'
    ld, cd = await reg.push_blob("cache/app", layer), await reg.push_blob("cache/app", cfg)
    for media_type in (OCI_INDEX, DOCKER_LIST):
        index = {"schemaVersion": 2, "mediaType": media_type, "manifests": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": ld, "size": len(layer)},
            {"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": cd, "size": len(cfg)}]}
        digest = await reg.push_manifest("cache/app", "legacy", index, media_type)
        rec = reg.store.index.manifest("cache/app", digest)
        assert rec is not None and set(rec.blobs) == {ld, cd} and rec.children == []


async def test_docker_schema2_manifest_and_list(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": c, "size": 2},
           "layers": []}
    d = await reg.push_manifest("a", "d", doc, DOCKER_MANIFEST)
    lst = {"schemaVersion": 2, "mediaType": DOCKER_LIST,
           "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": d, "size": 10,
                          "platform": {"architecture": "amd64", "os": "linux"}}]}
    await reg.push_manifest("a", "list", lst, DOCKER_LIST)
    async with reg.http.get("/v2/a/manifests/list", headers={"Accept": DOCKER_LIST}) as r:
        assert r.status == 200 and r.headers["Content-Type"] == DOCKER_LIST


async def test_content_negotiation(reg: Running) -> None:
    await reg.push_image("a", "v1", [b"l"])
    for accept, ok in ((OCI_MANIFEST, True), ("*/*", True), (f"{DOCKER_MANIFEST}, {OCI_MANIFEST}", True),
                       (DOCKER_MANIFEST, False), ("application/json", True), (None, True)):
        headers = {"Accept": accept} if accept else {}
        async with reg.http.get("/v2/a/manifests/v1", headers=headers) as r:
            assert (r.status == 200) == ok, accept
            if not ok:
                assert await error_code(r) == "MANIFEST_UNKNOWN"


async def test_artifact_type_and_subject(reg: Running) -> None:
    subject = await reg.push_image("a", "v1", [b"l"])
    empty = await reg.push_blob("a", b"{}")
    doc = image_manifest(empty, 2, [], config_type="application/vnd.oci.empty.v1+json",
                         artifactType="application/vnd.example.sbom",
                         subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
                         annotations={"org.example": "yes"})
    async with reg.http.put("/v2/a/manifests/sbom", data=json.dumps(doc), headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201
        assert r.headers["OCI-Subject"] == subject
        sbom = r.headers["Docker-Content-Digest"]
    async with reg.http.get(f"/v2/a/referrers/{subject}") as r:
        assert r.status == 200 and r.headers["Content-Type"] == OCI_INDEX
        index = await r.json()
    assert index["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": sbom, "size": len(json.dumps(doc)),
                                   "artifactType": "application/vnd.example.sbom",
                                   "annotations": {"org.example": "yes"}}]


async def test_subject_may_be_absent(reg: Running) -> None:
    empty = await reg.push_blob("a", b"{}")
    ghost = sha256(b"not pushed yet")
    doc = image_manifest(empty, 2, [], subject={"mediaType": OCI_MANIFEST, "digest": ghost, "size": 1})
    async with reg.http.put("/v2/a/manifests/sig", data=json.dumps(doc), headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201 and r.headers["OCI-Subject"] == ghost


async def test_malformed_manifests_are_rejected_and_store_nothing(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    bad_bodies = [
        b"not json", b"[1,2]", b'{"schemaVersion": 1}', b'{"schemaVersion": 3}',
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode(),  # no config
        json.dumps(image_manifest(c, 2, [{"digest": "sha256:bad", "size": 1, "mediaType": "x"}])).encode(),
        json.dumps(image_manifest(c, 2, [{"digest": c, "size": -1, "mediaType": "x"}])).encode(),
        json.dumps(image_manifest(c, 2, "notalist")).encode(),  # type: ignore[arg-type]
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}).encode(),
        b"\xff\xfe\x00",
    ]
    for body in bad_bodies:
        async with reg.http.put("/v2/a/manifests/bad", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 400, body
            assert await error_code(r) == "MANIFEST_INVALID", body
    # Declared type disagreeing with the document, and an unsupported type.
    ok = json.dumps(image_manifest(c, 2, [])).encode()
    for ctype in (OCI_INDEX, "application/vnd.docker.distribution.manifest.v1+prettyjws"):
        async with reg.http.put("/v2/a/manifests/bad", data=ok, headers={"Content-Type": ctype}) as r:
            assert r.status == 400, ctype
    nomt = json.dumps({k: v for k, v in image_manifest(c, 2, []).items() if k != "mediaType"}).encode()
    async with reg.http.put("/v2/a/manifests/bad", data=nomt, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 400 and await error_code(r) == "MANIFEST_INVALID"
    assert reg.store.index.counters["manifests"] == 0
    async with reg.http.get("/v2/a/manifests/bad") as r:
        assert r.status == 404
    # A generic or wrong Content-Type is forgiven when the document names its own type; that type is served.
    async with reg.http.put("/v2/a/manifests/ok", data=ok, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 201
    async with reg.http.head("/v2/a/manifests/ok") as r:
        assert r.headers["Content-Type"] == OCI_MANIFEST


async def test_oversized_manifest_is_413(make_server) -> None:
    reg = await make_server(max_manifest_size=1000)
    c = await reg.push_blob("a", b"{}")
    doc = image_manifest(c, 2, [], annotations={"pad": "x" * 2000})
    async with reg.http.put("/v2/a/manifests/big", data=json.dumps(doc), headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 413 and await error_code(r) == "MANIFEST_INVALID"

    async def chunked():
        yield json.dumps(doc).encode()

    async with reg.http.put("/v2/a/manifests/big", data=chunked(), headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 413


async def test_invalid_tags(reg: Running) -> None:
    c = await reg.push_blob("a", b"{}")
    body = json.dumps(image_manifest(c, 2, [])).encode()
    for tag in (".hidden", "-dash", "a" * 129, "with%20space"):
        async with reg.http.put(f"/v2/a/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 400, tag
        async with reg.http.get(f"/v2/a/manifests/{tag}") as r:
            assert r.status == 404, tag


async def test_tag_move_and_delete(reg: Running) -> None:
    d1 = await reg.push_image("a", "latest", [b"one"])
    d2 = await reg.push_image("a", "latest", [b"two"])
    async with reg.http.head("/v2/a/manifests/latest") as r:
        assert r.headers["Docker-Content-Digest"] == d2
    async with reg.http.get(f"/v2/a/manifests/{d1}") as r:
        assert r.status == 200  # the old manifest stays reachable by digest
    async with reg.http.delete("/v2/a/manifests/latest") as r:
        assert r.status == 202
    async with reg.http.get("/v2/a/manifests/latest") as r:
        assert r.status == 404
    async with reg.http.get(f"/v2/a/manifests/{d2}") as r:
        assert r.status == 200
    async with reg.http.delete(f"/v2/a/manifests/{d2}") as r:
        assert r.status == 202
    async with reg.http.get(f"/v2/a/manifests/{d2}") as r:
        assert r.status == 404
    async with reg.http.delete(f"/v2/a/manifests/{d2}") as r:
        assert r.status == 404 and await error_code(r) == "MANIFEST_UNKNOWN"


async def test_delete_child_drops_index_that_lists_it(reg: Running) -> None:
    child = await reg.push_image("a", "child", [b"layer"])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 10}]}
    await reg.push_manifest("a", "multi", index, OCI_INDEX)
    async with reg.http.delete(f"/v2/a/manifests/{child}") as r:
        assert r.status == 202
    async with reg.http.get("/v2/a/manifests/multi") as r:
        assert r.status == 404


async def test_buildkit_recorded_bodies_round_trip(reg: Running) -> None:
    """The exact cache manifests a recent BuildKit pushed: accepted, and served byte for byte."""
    for path in sorted(BODIES.glob("*-PUT-*.json")):
        body = path.read_bytes()
        doc = json.loads(body)
        entries = doc.get("layers", []) + ([doc["config"]] if "config" in doc else []) + doc.get("manifests", [])
        repo = f"cache/{path.stem.lower().replace('_', '-')}"
        for d in entries:
            # The recorded blobs are not in the recording, so each entry points at a placeholder blob pushed for
            # real; every other part of the document (media types, annotations, order) is kept.
            data = hashlib.sha256(d["digest"].encode()).digest() * 4
            d["digest"] = await reg.push_blob(repo, data)
            d["size"] = len(data)
        new_body = json.dumps(doc, indent=1).encode()
        media_type = doc["mediaType"]
        digest = await reg.push_manifest(repo, "main", new_body, media_type)
        async with reg.http.head(f"/v2/{repo}/manifests/main", headers={"Accept": "*/*"}) as r:
            assert r.headers["Docker-Content-Digest"] == digest
            assert r.headers["Content-Type"] == media_type
            assert r.headers["Content-Length"] == str(len(new_body))
        async with reg.http.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": f"{media_type}, */*"}) as r:
            assert await r.read() == new_body


async def test_oversized_buildkit_cache_is_accepted_but_counted(reg: Running) -> None:
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": await reg.push_blob("c", b"l"),
               "size": 1, "annotations": {"pad": "x" * 1_100_000}}]
    cfg = await reg.push_blob("c", b"{}")
    doc = image_manifest(cfg, 2, layers, config_type="application/vnd.buildkit.cacheconfig.v0")
    await reg.push_manifest("c", "big", doc)
    value = reg.store.metrics.oversized_cache.labels("manifest")._value.get()
    assert value == 1
