"""Object keys of the shared tier (relative to ``s3://bucket/prefix``); the layout is described in ``__init__``.

Repository names never have a component starting with ``_`` or containing ``:``, tags never contain ``/``, and
digests are ``<alg>/<hex>`` as the last two components, so every key parses back without ambiguity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

BLOBS = "blobs/"
MANIFESTS = "manifests/"
TAGS = "tags/"
USED = "used/"


def _digest_path(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}/{hex_digest}"


def blob(digest: str) -> str:
    return BLOBS + _digest_path(digest)


def manifest(repo: str, digest: str) -> str:
    return f"{MANIFESTS}{repo}/{_digest_path(digest)}"


def tag(repo: str, name: str) -> str:
    return f"{TAGS}{repo}/{name}"


def used(repo: str, digest: str) -> str:
    return f"{USED}{repo}/{_digest_path(digest)}"


def parse_blob(key: str) -> str | None:
    if not key.startswith(BLOBS):
        return None
    parts = key[len(BLOBS):].split("/")
    return f"{parts[0]}:{parts[1]}" if len(parts) == 2 else None


def parse_repo_digest(key: str, root: str) -> tuple[str, str] | None:
    """``manifests/<repo>/<alg>/<hex>`` or ``used/...`` -> ``(repo, digest)``."""
    if not key.startswith(root):
        return None
    parts = key[len(root):].rsplit("/", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    return parts[0], f"{parts[1]}:{parts[2]}"


def parse_tag(key: str) -> tuple[str, str] | None:
    if not key.startswith(TAGS):
        return None
    repo, _, name = key[len(TAGS):].rpartition("/")
    return (repo, name) if repo and name else None


@dataclass(frozen=True, slots=True)
class TagRecord:
    """The body of a tag object: where it points and when it was pushed (last writer, by push time, wins)."""

    digest: str
    pushed_at: int  # ms
    media_type: str = ""

    def encode(self) -> bytes:
        return json.dumps({"digest": self.digest, "pushed_at": self.pushed_at, "media_type": self.media_type},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> TagRecord | None:
        try:
            d: Any = json.loads(data)
            return cls(str(d["digest"]), int(d.get("pushed_at", 0)), str(d.get("media_type", "")))
        except (ValueError, KeyError, TypeError):
            return None
