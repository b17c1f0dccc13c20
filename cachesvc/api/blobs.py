"""Blob resource: ``HEAD``/``GET``/``DELETE /v2/<name>/blobs/<digest>``."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest, parse_name
from cachesvc.api.ranges import parse_range
from cachesvc.api.responses import BlobResponse


def _blob_headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }


async def head_blob(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    digest = str(parse_digest(p["digest"]))
    size = reg.store.blob_size(repo, digest)
    reg.lookup(request, repo, "blob", size is not None)
    if size is None:
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    return web.Response(status=200, headers={**_blob_headers(digest), "Content-Length": str(size)})


async def get_blob(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    digest = str(parse_digest(p["digest"]))
    opened = reg.store.open_blob(repo, digest)
    reg.lookup(request, repo, "blob", opened is not None)
    if opened is None:
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    fd, size = opened
    headers = _blob_headers(digest)
    range_header = request.headers.get("Range")
    try:
        span = parse_range(range_header, size) if range_header else None
    except RegistryError:
        BlobResponse(fd, 0, 0).close_file()
        raise
    if span is None:
        reg.served(repo, size)
        return BlobResponse(fd, 0, size, headers=headers)
    offset, count = span
    headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    reg.served(repo, count)
    return BlobResponse(fd, offset, count, status=206, headers=headers)


async def delete_blob(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    digest = str(parse_digest(p["digest"]))
    if not reg.store.delete_blob(repo, digest):
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    return web.Response(status=202, headers={"Content-Length": "0"})
