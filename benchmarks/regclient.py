"""Registry operations on top of ``httpclient``, the way BuildKit and containerd issue them."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from benchmarks.httpclient import Body, Connection, HttpError

OCTET = {"Content-Type": "application/octet-stream"}
MANIFEST_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                   "application/vnd.docker.distribution.manifest.list.v2+json, "
                   "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _path_of(location: str) -> str:
    """A Location header (absolute URL or path) as a request path with its query."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_digest(location: str, digest: str) -> str:
    path = _path_of(location)
    return f"{path}{'&' if '?' in path else '?'}digest={digest}"


def head_blob(conn: Connection, repo: str, digest: str) -> int | None:
    """Blob size, or None when the registry does not have it (404)."""
    resp = conn.request("HEAD", f"/v2/{repo}/blobs/{digest}").expect(200, 404, what=f"HEAD blob {digest}")
    return int(resp.headers["content-length"]) if resp.status == 200 else None


def start_upload(conn: Connection, repo: str) -> str:
    resp = conn.request("POST", f"/v2/{repo}/blobs/uploads/").expect(202, what="POST upload")
    return resp.headers["location"]


def push_monolithic(conn: Connection, repo: str, digest: str, body: Body) -> None:
    """POST a session, then one PUT ?digest= carrying the whole blob (what BuildKit does)."""
    location = start_upload(conn, repo)
    conn.request("PUT", _with_digest(location, digest), OCTET, body).expect(201, what="PUT blob")


def push_chunked(conn: Connection, repo: str, digest: str, data: memoryview, chunk: int) -> None:
    """POST a session, PATCH ``chunk``-sized pieces with Content-Range, then an empty PUT ?digest=."""
    location = start_upload(conn, repo)
    for start in range(0, len(data), chunk):
        piece = data[start:start + chunk]
        headers = {**OCTET, "Content-Range": f"{start}-{start + len(piece) - 1}"}
        resp = conn.request("PATCH", _path_of(location), headers, piece).expect(202, what="PATCH chunk")
        location = resp.headers["location"]
    conn.request("PUT", _with_digest(location, digest), OCTET, b"").expect(201, what="PUT (close upload)")


def get_blob(conn: Connection, repo: str, digest: str, *, verify: bool = False,
             byte_range: tuple[int, int] | None = None) -> int:
    """GET a blob (or ``(offset, length)`` of it), dropping the bytes; returns bytes received. ``verify``
    hashes the body and checks it against the digest."""
    headers = {}
    expected = 200
    if byte_range is not None:
        offset, length = byte_range
        headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        expected = 206
    hasher = hashlib.sha256() if verify else None
    resp = conn.request("GET", f"/v2/{repo}/blobs/{digest}", headers, keep_body=False,
                        sink=hasher.update if hasher is not None else None)
    resp.expect(expected, what=f"GET blob {digest}")
    if byte_range is not None and resp.length != byte_range[1]:
        raise HttpError(f"Range GET returned {resp.length} bytes, asked for {byte_range[1]}")
    if hasher is not None and f"sha256:{hasher.hexdigest()}" != digest:
        raise HttpError(f"blob {digest} came back with digest sha256:{hasher.hexdigest()}")
    return resp.length


def put_manifest(conn: Connection, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
    resp = conn.request("PUT", f"/v2/{repo}/manifests/{ref}", {"Content-Type": media_type}, body)
    resp.expect(201, what=f"PUT manifest {repo}:{ref}")
    return resp.headers.get("docker-content-digest", "")


def head_manifest(conn: Connection, repo: str, ref: str) -> bool:
    resp = conn.request("HEAD", f"/v2/{repo}/manifests/{ref}", {"Accept": MANIFEST_ACCEPT})
    return resp.expect(200, 404, what=f"HEAD manifest {repo}:{ref}").status == 200


def get_manifest(conn: Connection, repo: str, ref: str) -> bytes:
    resp = conn.request("GET", f"/v2/{repo}/manifests/{ref}", {"Accept": MANIFEST_ACCEPT})
    return resp.expect(200, what=f"GET manifest {repo}:{ref}").body
