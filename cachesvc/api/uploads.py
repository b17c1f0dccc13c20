"""Blob upload resource: ``POST /v2/<name>/blobs/uploads/`` and ``GET``/``PATCH``/``PUT``/``DELETE`` on a session.

Sessions carry no state in their URL's query, so a client that re-encodes or reorders the query string of a
``Location`` (containerd does) still reaches the same session.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import BYTES_IN, CACHE_RESULT, Registry, declared_length
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import DIGEST_RE, parse_digest, parse_name
from cachesvc.api.ranges import parse_content_range
from cachesvc.store.uploads import Session


def _session_headers(repo: str, session: Session) -> dict[str, str]:
    offset = session.record.offset
    return {
        "Location": f"/v2/{repo}/blobs/uploads/{session.id}",
        "Range": f"0-{offset - 1 if offset > 0 else 0}",
        "Docker-Upload-UUID": session.id,
        "Blob-Upload-Session-ID": session.id,
        "Content-Length": "0",
    }


def _created(repo: str, digest: str) -> web.Response:
    return web.Response(status=201, headers={
        "Location": f"/v2/{repo}/blobs/{digest}",
        "Docker-Content-Digest": digest,
        "Content-Length": "0",
    })


async def start_upload(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    mount, from_repo = request.query.get("mount"), request.query.get("from")
    # A mount that cannot be done (bad arguments, blob not there) falls back to a plain upload (spec).
    if mount is not None and from_repo and DIGEST_RE.fullmatch(mount) and _valid_name(from_repo):
        digest = str(parse_digest(mount, code="BLOB_UNKNOWN")) if _valid_digest(mount) else None
        if digest is not None and reg.store.mount(repo, digest, from_repo):
            request[CACHE_RESULT] = "hit"
            return _created(repo, digest)
    digest_param = request.query.get("digest")
    if digest_param is not None:
        digest = parse_digest(digest_param)
        size = await reg.store.write_blob(repo, digest, reg.body(request), declared_length(request))
        request[BYTES_IN] = size
        return _created(repo, str(digest))
    session = reg.store.uploads.open(repo)
    return web.Response(status=202, headers=_session_headers(repo, session))


def _valid_digest(text: str) -> bool:
    try:
        parse_digest(text)
    except RegistryError:
        return False
    return True


def _valid_name(name: str) -> bool:
    try:
        parse_name(name)
    except RegistryError:
        return False
    return True


async def upload_status(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    session = reg.store.uploads.get(p["session"], repo)
    return web.Response(status=204, headers=_session_headers(repo, session))


def _chunk_range(request: BaseRequest, session: Session) -> tuple[int | None, int | None]:
    """The chunk's declared start and length, from Content-Range and Content-Length (416 when unusable)."""
    length = declared_length(request)
    header = request.headers.get("Content-Range")
    if header is None:
        return None, length
    try:
        start, span = parse_content_range(header)
    except ValueError as e:
        raise _range_error(session, str(e)) from None
    if length is not None and length != span:
        raise RegistryError("SIZE_INVALID", {"reason": f"Content-Range spans {span} bytes, Content-Length "
                                             f"is {length}"})
    if start != session.record.offset:
        raise _range_error(session, f"chunk starts at {start}, upload is at {session.record.offset}")
    return start, span


def _range_error(session: Session, reason: str) -> RegistryError:
    headers = _session_headers(session.record.repo, session)
    headers.pop("Content-Length")
    return RegistryError("BLOB_UPLOAD_INVALID", {"reason": reason}, status=416, headers=headers)


async def patch_upload(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    session = reg.store.uploads.get(p["session"], repo)
    async with session.lock:
        start, length = _chunk_range(request, session)
        before = session.record.offset
        await reg.store.append_upload(session, reg.body(request), start, length)
        request[BYTES_IN] = session.record.offset - before
        return web.Response(status=202, headers=_session_headers(repo, session))


async def finish_upload(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    session = reg.store.uploads.get(p["session"], repo)
    digest_param = request.query.get("digest")
    if digest_param is None:
        raise RegistryError("DIGEST_INVALID", {"reason": "PUT must name the digest (?digest=)"})
    digest = parse_digest(digest_param)
    async with session.lock:
        start, length = _chunk_range(request, session)
        has_body = length != 0 and (length is not None or request.body_exists)
        before = session.record.offset
        await reg.store.finish_upload(session, digest, reg.body(request) if has_body else None, start, length)
        request[BYTES_IN] = session.record.offset - before
    return _created(repo, str(digest))


async def cancel_upload(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    session = reg.store.uploads.get(p["session"], repo)
    async with session.lock:
        reg.store.uploads.close(session, remove_file=True)
    return web.Response(status=204, headers={"Content-Length": "0"})
