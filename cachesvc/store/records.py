"""The values stored in the index, with their binary or JSON encodings.

Kept apart from the key schema so handlers and policies can use the records without knowing how keys are laid out.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

_BLOB_V1 = struct.Struct("<BQQQQQQ")
_BLOB_V2 = struct.Struct("<BQQQQQQQ")
_BLOB = struct.Struct("<BQQQQQQQqq")
_BLOB_VERSION = 3


@dataclass(slots=True)
class BlobRecord:
    """A blob the store holds a verified file for.

    ``orphan_at`` is 0 while some manifest references the blob; otherwise the time (ms) from which it may be
    removed, which is also its key in the orphan index. Two leases keep a blob whose manifests were evicted:
    ``lease_until`` (upload or mount: ends when a manifest references the blob, or at the end of the grace) and
    ``held_until`` (a client was told "exists" by HEAD or GET: lasts the grace period, whatever manifests do,
    since that client's own manifest has not been pushed yet and another builder's cannot end its lease).

    ``refs`` counts the manifests that reference the blob (its ``blob_refs`` keys) and ``links`` the repositories
    it is visible in (its ``links`` keys), so deciding "still referenced?" and finding its only link cost a
    point read instead of an iterator seek. -1: not counted yet (a record written before version 3); the index
    counts it the first time it changes one.
    """

    size: int
    created: int
    last_used: int
    lease_until: int = 0
    orphan_at: int = 0
    stored_size: int = -1
    held_until: int = 0
    refs: int = -1
    links: int = -1

    def __post_init__(self) -> None:
        if self.stored_size < 0:
            self.stored_size = self.size

    def protected_until(self) -> int:
        return max(self.lease_until, self.held_until)

    def encode(self) -> bytes:
        return _BLOB.pack(_BLOB_VERSION, self.size, self.created, self.last_used, self.lease_until,
                          self.orphan_at, self.stored_size, self.held_until, self.refs, self.links)

    @classmethod
    def decode(cls, data: bytes) -> BlobRecord:
        if len(data) == _BLOB.size:
            return cls(*_BLOB.unpack(data)[1:])
        if len(data) == _BLOB_V2.size:
            return cls(*_BLOB_V2.unpack(data)[1:])
        return cls(*_BLOB_V1.unpack(data)[1:])


@dataclass(slots=True)
class ManifestRecord:
    """A manifest stored in one repository: what it is, what it needs, and when it was last used."""

    media_type: str
    size: int
    created: int
    last_used: int
    blobs: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    artifact_type: str | None = None
    subject: str | None = None

    def encode(self) -> bytes:
        d: dict[str, Any] = {"mt": self.media_type, "sz": self.size, "ct": self.created, "lu": self.last_used,
                             "b": self.blobs, "c": self.children}
        if self.artifact_type:
            d["at"] = self.artifact_type
        if self.subject:
            d["s"] = self.subject
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ManifestRecord:
        d = json.loads(data)
        return cls(d["mt"], d["sz"], d["ct"], d["lu"], d.get("b", []), d.get("c", []), d.get("at"), d.get("s"))


@dataclass(slots=True)
class UploadRecord:
    """An open upload session: which repository it targets and how many bytes it holds so far."""

    repo: str
    offset: int
    created: int
    updated: int

    def encode(self) -> bytes:
        return json.dumps({"r": self.repo, "o": self.offset, "c": self.created, "u": self.updated}).encode()

    @classmethod
    def decode(cls, data: bytes) -> UploadRecord:
        d = json.loads(data)
        return cls(d["r"], d["o"], d["c"], d["u"])
