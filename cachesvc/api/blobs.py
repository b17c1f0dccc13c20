"""Blob resource: ``HEAD``/``GET``/``DELETE /v2/<name>/blobs/<digest>``."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest, parse_name
from cachesvc.api.ranges import parse_range
from cachesvc.api.responses import BlobResponse, DecompressingResponse, Verification, VerifyingBlobResponse
from cachesvc.store.fsck import content_hex
from cachesvc.store.seekable import SeekableError


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
    tier = "local"
    if size is None and reg.remote is not None:  # shared tier (cachesvc/remote): asked on a local miss only
        size, tier = await reg.remote.blob_size(repo, digest)
    reg.lookup(request, repo, "blob", size is not None, tier)
    if size is None:
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    return web.Response(status=200, headers={**_blob_headers(digest), "Content-Length": str(size)})


async def get_blob(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    digest = str(parse_digest(p["digest"]))
    opened = reg.store.open_blob(repo, digest)
    if opened is None and reg.remote is not None:  # shared tier (cachesvc/remote): asked on a local miss only
        streamed = await reg.remote.get_blob(reg, request, repo, digest)
        if streamed is not None:
            return streamed  # streaming from the shared tier while it is stored locally
        opened = reg.store.open_blob(repo, digest)  # it may have become local meanwhile
    reg.lookup(request, repo, "blob", opened is not None)
    if opened is None:
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    fd, size, compressed = opened
    headers = _blob_headers(digest)
    range_header = request.headers.get("Range")
    try:
        span = parse_range(range_header, size) if range_header else None
    except RegistryError:
        BlobResponse(fd, 0, 0).close_file()
        raise
    offset, count, status = (0, size, 200) if span is None else (*span, 206)
    if span is not None:
        headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    verification = None
    if reg.settings.verify_on_read:
        if span is not None and not await _verify_whole(reg, digest):  # a range: check the whole blob first
            BlobResponse(fd, 0, 0).close_file()
            raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
        if span is None:
            verification = Verification(digest, lambda actual: _quarantine(reg, digest, actual))
    reg.served(repo, count)
    if compressed:  # stored zstd-compressed at rest: stream the original bytes (the same digest and size)
        try:
            return DecompressingResponse(fd, offset, count, status=status, headers=headers,
                                         on_sent=reg.metrics.decompressed_bytes.inc, verification=verification)
        except SeekableError:  # a damaged file: like a missing one, a clean miss for everything that needs it
            BlobResponse(fd, 0, 0).close_file()
            reg.store.files.quarantine(digest)
            reg.store.lose_blob(digest, "compressed file damaged")
            raise RegistryError("BLOB_UNKNOWN", {"digest": digest}) from None
    if verification is not None:
        return VerifyingBlobResponse(fd, size, verification, headers=headers)
    return BlobResponse(fd, offset, count, status=status, headers=headers)


def _quarantine(reg: Registry, digest: str, actual: str) -> None:
    """``--verify-on-read`` found a blob whose bytes no longer match its digest: out of service for good."""
    reg.store.files.quarantine(digest)
    reg.store.lose_blob(digest, f"failed verification on read (content hashes to {actual})")


async def _verify_whole(reg: Registry, digest: str) -> bool:
    """Before answering a range with ``--verify-on-read``: hash the whole blob (ranges cannot be checked)."""
    algorithm = digest.partition(":")[0]
    actual = await asyncio.get_running_loop().run_in_executor(None, content_hex, reg.store.files, digest,
                                                              algorithm)
    if actual is None or actual == digest.partition(":")[2]:
        return actual is not None
    _quarantine(reg, digest, actual)
    return False


async def delete_blob(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    digest = str(parse_digest(p["digest"]))
    if not reg.store.delete_blob(repo, digest):
        raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
    return web.Response(status=202, headers={"Content-Length": "0"})
