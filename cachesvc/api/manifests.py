"""Manifest resource: ``HEAD``/``GET``/``PUT``/``DELETE /v2/<name>/manifests/<reference>``."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import BYTES_IN, Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_name, parse_reference
from cachesvc.store.manifests import MANIFEST_TYPES


def _acceptable(request: BaseRequest, media_type: str) -> bool:
    """Content negotiation: refuse only a client that lists manifest types and not this one."""
    accept = ",".join(request.headers.getall("Accept", []))
    if not accept:
        return True
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if media_type in offered or "*/*" in offered or "application/*" in offered:
        return True
    return not (offered & MANIFEST_TYPES)


def _lookup(reg: Registry, request: BaseRequest, p: dict[str, str]) -> tuple[str, str | None]:
    repo = parse_name(p["name"])
    tag, digest = parse_reference(p["reference"])
    resolved = reg.store.resolve(repo, tag, digest)
    if resolved is None and reg.remote is None:
        reg.lookup(request, repo, "manifest", False)
        raise RegistryError("MANIFEST_UNKNOWN", {"reference": p["reference"]})
    return repo, resolved


def _headers(digest: str, media_type: str) -> dict[str, str]:
    return {"Docker-Content-Digest": digest, "Content-Type": media_type, "ETag": f'"{digest}"'}


def _not_acceptable(media_type: str) -> RegistryError:
    return RegistryError("MANIFEST_UNKNOWN", {"reason": f"manifest is {media_type}, which the Accept header "
                                              "does not list"})


async def head_manifest(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo, digest = _lookup(reg, request, p)
    head = reg.store.manifest_head(repo, digest) if digest is not None else None
    tier = "local"
    if head is None and reg.remote is not None:  # shared tier (cachesvc/remote): asked on a local miss only
        found = await reg.remote.manifest(repo, p["reference"])
        if found is not None:
            digest, head, tier = found.digest, (found.media_type, len(found.body)), "shared"
    reg.lookup(request, repo, "manifest", head is not None, tier)
    if head is None:
        raise RegistryError("MANIFEST_UNKNOWN", {"reference": p["reference"]})
    media_type, size = head
    if not _acceptable(request, media_type):
        raise _not_acceptable(media_type)
    return web.Response(status=200, headers={**_headers(digest, media_type), "Content-Length": str(size)})


async def get_manifest(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo, digest = _lookup(reg, request, p)
    stored = reg.store.get_manifest(repo, digest) if digest is not None else None
    tier = "local"
    if stored is None and reg.remote is not None:  # shared tier (cachesvc/remote): asked on a local miss only
        stored = await reg.remote.manifest(repo, p["reference"])
        tier = "shared"
    reg.lookup(request, repo, "manifest", stored is not None, tier)
    if stored is None:
        raise RegistryError("MANIFEST_UNKNOWN", {"reference": p["reference"]})
    if not _acceptable(request, stored.media_type):
        raise _not_acceptable(stored.media_type)
    reg.served(repo, len(stored.body))
    headers = _headers(stored.digest, stored.media_type)
    return web.Response(status=200, body=stored.body, headers=headers)


async def put_manifest(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    tag, ref_digest = parse_reference(p["reference"], for_write=True)
    limit = reg.settings.max_manifest_size
    too_large = RegistryError("MANIFEST_INVALID", {"reason": f"manifest larger than {limit} bytes"},
                              message="manifest too large", status=413)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in reg.body(request):
        body += chunk
        if len(body) > limit:
            raise too_large
    content_type = request.headers.get("Content-Type")
    try:
        digest, parsed = await reg.store.put_manifest(repo, tag, ref_digest, bytes(body), content_type)
    except RegistryError as e:
        # Shared tier (cachesvc/remote): the client skipped blobs a HEAD found there; make them local, store again.
        if e.code != "MANIFEST_BLOB_UNKNOWN" or reg.remote is None or \
                not await reg.remote.fill_missing(repo, bytes(body), content_type):
            raise
        digest, parsed = await reg.store.put_manifest(repo, tag, ref_digest, bytes(body), content_type)
    request[BYTES_IN] = len(body)
    headers = {"Location": f"/v2/{repo}/manifests/{digest}", "Docker-Content-Digest": digest,
               "Content-Length": "0"}
    if parsed.subject:
        headers["OCI-Subject"] = parsed.subject
    return web.Response(status=201, headers=headers)


async def delete_manifest(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    tag, digest = parse_reference(p["reference"])
    if not reg.store.delete_manifest(repo, tag, digest):
        raise RegistryError("MANIFEST_UNKNOWN", {"reference": p["reference"]})
    return web.Response(status=202, headers={"Content-Length": "0"})
