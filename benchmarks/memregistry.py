"""A minimal in-memory OCI registry: the floor any registry can reach in the build benchmark.

Blobs and manifests live in dicts; there is no disk, no index, no eviction, no auth. It implements what
docker (push, pull, inline cache), buildah (``--cache-to/--cache-from``) and skopeo use: ``/v2/``, blob
HEAD/GET/DELETE, uploads (monolithic ``POST ?digest=``, ``POST`` + ``PATCH``... + ``PUT ?digest=``, status,
cancel, cross-repository mount), manifests HEAD/GET/PUT/DELETE by tag and digest, and tag listing. Every upload
is verified against its digest (sha256), as a real registry must. ``GET /_mem/stats`` returns the bytes it
received and sent and its request count.

Run: ``python -m benchmarks.memregistry --listen 127.0.0.1:5002``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

from aiohttp import web

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
DIGEST = r"sha256:[a-f0-9]{64}"
BLOB_RE = re.compile(rf"^({NAME})/blobs/({DIGEST})$")
UPLOADS_RE = re.compile(rf"^({NAME})/blobs/uploads/?$")
UPLOAD_RE = re.compile(rf"^({NAME})/blobs/uploads/([a-f0-9-]+)$")
MANIFEST_RE = re.compile(rf"^({NAME})/manifests/([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}|{DIGEST})$")
TAGS_RE = re.compile(rf"^({NAME})/tags/list$")
CHUNK = 1 << 20


@dataclass
class Upload:
    """An upload session: the bytes so far and their running hash."""

    data: bytearray = field(default_factory=bytearray)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)


@dataclass
class Store:
    """Everything the registry holds, plus traffic counters."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, body)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> tag -> digest
    uploads: dict[str, Upload] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0


STORE: web.AppKey[Store] = web.AppKey("store", Store)


def error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=API_HEADERS)


async def read_into(request: web.Request, up: Upload, store: Store) -> None:
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return
        up.data += chunk
        up.hasher.update(chunk)
        store.bytes_in += len(chunk)


def finish(store: Store, repo: str, up: Upload, digest: str) -> web.Response:
    if "sha256:" + up.hasher.hexdigest() != digest:
        return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
    store.blobs.setdefault(digest, bytes(up.data))
    return web.Response(status=201, headers={**API_HEADERS, "Location": f"/v2/{repo}/blobs/{digest}",
                                             "Docker-Content-Digest": digest, "Content-Length": "0"})


def session_headers(repo: str, sid: str, size: int) -> dict[str, str]:
    return {**API_HEADERS, "Location": f"/v2/{repo}/blobs/uploads/{sid}", "Docker-Upload-UUID": sid,
            "Range": f"0-{max(size - 1, 0)}", "Content-Length": "0"}


async def handle(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.requests += 1
    tail = request.match_info["tail"]
    method = request.method
    if tail == "":
        return web.json_response({}, headers=API_HEADERS)

    m = BLOB_RE.match(tail)
    if m:
        repo, digest = m.groups()
        blob = store.blobs.get(digest)
        if method == "DELETE":
            if store.blobs.pop(digest, None) is None:
                return error(404, "BLOB_UNKNOWN", "blob unknown")
            return web.Response(status=202, headers=API_HEADERS)
        if blob is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        headers = {**API_HEADERS, "Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(blob))}
        if method == "HEAD":
            return web.Response(status=200, headers=headers)
        store.bytes_out += len(blob)
        return web.Response(status=200, body=blob, headers=headers)

    m = UPLOADS_RE.match(tail)
    if m and method == "POST":
        repo = m.group(1)
        mount, digest = request.query.get("mount"), request.query.get("digest")
        if mount and mount in store.blobs:
            return web.Response(status=201, headers={**API_HEADERS, "Location": f"/v2/{repo}/blobs/{mount}",
                                                     "Docker-Content-Digest": mount, "Content-Length": "0"})
        up = Upload()
        if digest:
            await read_into(request, up, store)
            return finish(store, repo, up, digest)
        sid = str(uuid.uuid4())
        store.uploads[sid] = up
        return web.Response(status=202, headers=session_headers(repo, sid, 0))

    m = UPLOAD_RE.match(tail)
    if m:
        repo, sid = m.groups()
        up = store.uploads.get(sid)
        if up is None:
            return error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        if method == "PATCH":
            await read_into(request, up, store)
            return web.Response(status=202, headers=session_headers(repo, sid, len(up.data)))
        if method == "PUT":
            digest = request.query.get("digest", "")
            await read_into(request, up, store)
            del store.uploads[sid]
            return finish(store, repo, up, digest)
        if method == "GET":
            return web.Response(status=204, headers=session_headers(repo, sid, len(up.data)))
        if method == "DELETE":
            del store.uploads[sid]
            return web.Response(status=204, headers=API_HEADERS)

    m = MANIFEST_RE.match(tail)
    if m:
        repo, ref = m.groups()
        if method == "PUT":
            body = await request.read()
            store.bytes_in += len(body)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if ref.startswith("sha256:") and ref != digest:
                return error(400, "DIGEST_INVALID", "manifest digest did not match")
            media_type = request.headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            store.manifests[digest] = (media_type, body)
            if not ref.startswith("sha256:"):
                store.tags.setdefault(repo, {})[ref] = digest
            return web.Response(status=201, headers={**API_HEADERS, "Location": f"/v2/{repo}/manifests/{digest}",
                                                     "Docker-Content-Digest": digest, "Content-Length": "0"})
        digest = ref if ref.startswith("sha256:") else store.tags.get(repo, {}).get(ref, "")
        found = store.manifests.get(digest)
        if method == "DELETE":
            if found is None:
                return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            store.manifests.pop(digest, None)
            for tags in store.tags.values():
                for tag in [t for t, d in tags.items() if d == digest]:
                    del tags[tag]
            return web.Response(status=202, headers=API_HEADERS)
        if found is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown to registry")
        media_type, body = found
        headers = {**API_HEADERS, "Docker-Content-Digest": digest, "Content-Type": media_type,
                   "Content-Length": str(len(body))}
        if method == "HEAD":
            return web.Response(status=200, headers=headers)
        store.bytes_out += len(body)
        return web.Response(status=200, body=body, headers=headers)

    m = TAGS_RE.match(tail)
    if m and method == "GET":
        repo = m.group(1)
        return web.json_response({"name": repo, "tags": sorted(store.tags.get(repo, {}))}, headers=API_HEADERS)
    return error(404, "NAME_UNKNOWN" if method == "GET" else "UNSUPPORTED", f"{method} /v2/{tail}")


async def stats(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response({"blobs": len(store.blobs), "blob_bytes": sum(map(len, store.blobs.values())),
                              "manifests": len(store.manifests), "bytes_in": store.bytes_in,
                              "bytes_out": store.bytes_out, "requests": store.requests})


def make_app() -> web.Application:
    app = web.Application(client_max_size=0)
    app[STORE] = Store()
    app.router.add_get("/_mem/stats", stats)
    app.router.add_route("*", "/v2/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memregistry", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:5002", help="HOST:PORT (default 127.0.0.1:5002)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    web.run_app(make_app(), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
