"""The request sequence a recent BuildKit sends for a registry cache (../shared/buildkit trace), end to end.

Every step answers as the trace's registry did: HEAD 404 then POST + one PUT per missing blob, the config last,
manifest HEAD then PUT; on import HEAD by tag (with BuildKit's Accept list), GET by digest, config, layers.
"""

from __future__ import annotations

import json
import os

from tests.support.inproc import Running, sha256

IMPORT_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                 "application/vnd.docker.distribution.manifest.list.v2+json, "
                 "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*")
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"


async def export(reg: Running, repo: str, tag: str, blobs: list[tuple[str, bytes]], manifest: bytes,
                 manifest_type: str) -> tuple[int, str]:
    """BuildKit's export: returns (blobs uploaded, manifest digest)."""
    uploaded = 0
    for media_type, data in blobs:
        digest = sha256(data)
        async with reg.http.head(f"/v2/{repo}/blobs/{digest}", headers={"Accept": f"{media_type}, */*"}) as r:
            if r.status == 200:
                continue
            assert r.status == 404
        async with reg.http.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}) as r:
            assert r.status == 202
            location = r.headers["Location"]
        sep = "&" if "?" in location else "?"
        async with reg.http.put(f"{location}{sep}digest={digest.replace(':', '%3A')}", data=data,
                                headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201 and r.headers["Docker-Content-Digest"] == digest
        uploaded += 1
    async with reg.http.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": f"{manifest_type}, */*"}) as r:
        if r.status == 200 and r.headers["Docker-Content-Digest"] == sha256(manifest):
            return uploaded, sha256(manifest)
    async with reg.http.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={"Content-Type": manifest_type}) as r:
        assert r.status == 201, await r.text()
        return uploaded, r.headers["Docker-Content-Digest"]


async def import_(reg: Running, repo: str, tag: str) -> dict[str, bytes] | None:
    """BuildKit's import: None when the cache ref is unknown (a cold build, not an error)."""
    async with reg.http.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": IMPORT_ACCEPT}) as r:
        if r.status == 404:
            return None
        assert r.status == 200
        digest, ctype = r.headers["Docker-Content-Digest"], r.headers["Content-Type"]
        assert int(r.headers["Content-Length"]) > 0
    async with reg.http.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": f"{ctype}, */*"}) as r:
        assert r.status == 200
        body = await r.read()
        assert sha256(body) == digest
    doc = json.loads(body)
    descs = doc.get("layers", []) + ([doc["config"]] if "config" in doc else []) + doc.get("manifests", [])
    got = {}
    for d in descs:
        async with reg.http.get(f"/v2/{repo}/blobs/{d['digest']}", headers={"Accept": f"{d['mediaType']}, */*"}) as r:
            assert r.status == 200, d
            data = await r.read()
            assert sha256(data) == d["digest"] and len(data) == d["size"]
            got[d["digest"]] = data
    return got


def cache_manifest(layers: list[bytes], config: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": CACHE_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": sha256(x), "size": len(x),
                    "annotations": {"buildkit/createdat": "2026-11-27T00:48:05Z"}} for x in layers],
    }, indent=1).encode()


async def test_buildkit_cache_export_import_reexport(reg: Running) -> None:
    layers = [os.urandom(n) for n in (84, 14532, 1_051_142, 9_473_544)]
    config = json.dumps({"layers": [{"blob": sha256(x)} for x in layers]}).encode()
    manifest = cache_manifest(layers, config)
    blobs = [(LAYER, x) for x in layers] + [(CACHE_CONFIG, config)]

    assert await import_(reg, "cache/app", "main") is None  # first-ever build: cold, not an error
    oci = "application/vnd.oci.image.manifest.v1+json"
    uploaded, digest = await export(reg, "cache/app", "main", blobs, manifest, oci)
    assert uploaded == 5 and digest == sha256(manifest)

    await reg.restart()
    got = await import_(reg, "cache/app", "main")
    assert got is not None and set(got) == {sha256(x) for x in layers} | {sha256(config)}

    # Re-export after a cached build: every blob HEADs 200 and is skipped; the manifest changes.
    manifest2 = cache_manifest(layers, config).replace(b"2026-11-27T00:48:05Z", b"2026-11-28T00:00:00Z")
    uploaded, digest2 = await export(reg, "cache/app", "main", blobs, manifest2,
                                     "application/vnd.oci.image.manifest.v1+json")
    assert uploaded == 0 and digest2 != digest
    # Another branch mounts nothing but finds the blobs only after uploading them into its own repository.
    uploaded, _ = await export(reg, "cache/app-feature", "feature", blobs, manifest2,
                               "application/vnd.oci.image.manifest.v1+json")
    assert uploaded == 5
    assert reg.store.index.counters["blobs"] == 5  # stored once


async def test_legacy_index_form_and_missing_blob(reg: Running) -> None:
    layers = [os.urandom(2000), os.urandom(3000)]
    config = b'{"legacy": true}'
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                                       "digest": sha256(x), "size": len(x)} for x in layers]
                        + [{"mediaType": CACHE_CONFIG, "digest": sha256(config), "size": len(config)}]}).encode()
    blobs = [("application/vnd.oci.image.layer.v1.tar+zstd", x) for x in layers] + [(CACHE_CONFIG, config)]
    await export(reg, "cache/legacy", "main", blobs, index, "application/vnd.oci.image.index.v1+json")
    assert await import_(reg, "cache/legacy", "main") is not None
    # A layer lost on disk: the next import sees a clean miss (a cold build), never a manifest whose layer 404s.
    os.unlink(reg.store.files.path(sha256(layers[1])))
    reg.clock.advance(60)
    assert await import_(reg, "cache/legacy", "main") is None
    async with reg.http.get(f"/v2/cache/legacy/blobs/{sha256(layers[0])}") as r:
        assert r.status == 200  # the other blobs are untouched (they just lost their manifest)
