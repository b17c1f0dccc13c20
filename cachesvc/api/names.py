"""Parsing and validation of the untrusted names in a request: repository names, tags, digests, references.

Everything here is pure and raises :class:`RegistryError` with the spec's code, so a malformed value never
reaches the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cachesvc.api.errors import RegistryError

# The spec's grammar (distribution-spec v1.1, "Pulling manifests").
NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
MAX_NAME_LENGTH = 255

# Algorithms we can verify, with the exact length and alphabet of their encoded part.
SUPPORTED_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[a-f0-9]+")


@dataclass(frozen=True, slots=True)
class Digest:
    """A verified ``algorithm:hex`` content digest of an algorithm we support."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_name(name: str) -> str:
    """The repository name, or NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError("NAME_INVALID", {"name": name[:300]})
    return name


def parse_digest(text: str, *, code: str = "DIGEST_INVALID") -> Digest:
    """A digest we can verify, or the given error code (DIGEST_INVALID unless the caller needs another)."""
    m = DIGEST_RE.fullmatch(text)
    if not m:
        raise RegistryError(code, {"digest": text[:300], "reason": "malformed digest"})
    algorithm, encoded = m.group(1), m.group(2)
    expected = SUPPORTED_ALGORITHMS.get(algorithm)
    if expected is None:
        raise RegistryError(code, {"digest": text[:300], "reason": f"unsupported digest algorithm {algorithm!r}"},
                            message="unsupported digest algorithm")
    if len(encoded) != expected or not _HEX_RE.fullmatch(encoded):
        raise RegistryError(code, {"digest": text[:300], "reason": f"{algorithm} wants {expected} lowercase hex"})
    return Digest(algorithm, encoded)


def is_digest_like(reference: str) -> bool:
    """A manifest reference is a digest when it contains ':' (tags cannot)."""
    return ":" in reference


def parse_reference(reference: str, *, for_write: bool = False) -> tuple[str | None, Digest | None]:
    """``(tag, None)`` or ``(None, digest)`` for a manifest reference.

    A malformed tag can name nothing, so reads answer it as an unknown manifest (404) and writes as an invalid one.
    """
    if is_digest_like(reference):
        return None, parse_digest(reference)
    if not TAG_RE.fullmatch(reference):
        if for_write:
            raise RegistryError("MANIFEST_INVALID", {"tag": reference[:300], "reason": "invalid tag"},
                                message="invalid tag name")
        raise RegistryError("MANIFEST_UNKNOWN", {"tag": reference[:300]})
    return reference, None
