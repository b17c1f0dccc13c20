"""The OCI Distribution error codes, the HTTP status each maps to, and their JSON body.

Handlers raise :class:`RegistryError`; one middleware turns it into the spec's ``{"errors": [...]}`` body, so every
error a client sees has the same shape whatever layer it came from.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# code -> (default HTTP status, message); the codes and messages are those of the spec's error-code table.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (404, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (415, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "RANGE_INVALID": (416, "requested range not satisfiable"),
    "STORAGE_FULL": (507, "insufficient storage: the cache is full and nothing more can be evicted"),
    "UNAVAILABLE": (503, "service unavailable"),
    "UNKNOWN": (500, "unknown error"),
}


class RegistryError(Exception):
    """An error with a spec code; ``status`` overrides the code's default where the spec asks for another."""

    def __init__(self, code: str, detail: Any = None, *, message: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        default_status, default_message = ERROR_CODES[code]
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}
        self.more_details: list[Any] = []
        super().__init__(f"{code}: {self.message}" + (f" ({detail})" if detail is not None else ""))

    def body(self) -> dict[str, Any]:
        entries = []
        for detail in [self.detail, *self.more_details]:
            entry: dict[str, Any] = {"code": self.code, "message": self.message}
            if detail is not None:
                entry["detail"] = detail
            entries.append(entry)
        return {"errors": entries}

    def response(self, *, head: bool = False) -> web.Response:
        payload = json.dumps(self.body()).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **self.headers}
        if head:
            # HEAD answers carry no body but keep the length of the one a GET would have had.
            return web.Response(status=self.status, headers={**headers, "Content-Length": str(len(payload))})
        return web.Response(status=self.status, body=payload, headers=headers)


def for_each(code: str, details: list[Any], *, status: int | None = None) -> RegistryError:
    """One response listing an error of the same code for each item (e.g. every blob a manifest lacks)."""
    err = RegistryError(code, details[0] if details else None, status=status)
    err.more_details = list(details[1:])
    return err
