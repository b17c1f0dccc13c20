"""Parsers for the byte-range headers of the API: ``Range`` on blob GETs and ``Content-Range`` on chunk uploads."""

from __future__ import annotations

import re

from cachesvc.api.errors import RegistryError

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
MAX_INT = 2**63 - 1


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(offset, count)`` for a single-range ``Range`` header on a blob of ``size`` bytes.

    Returns None when the whole blob should be sent (several ranges: allowed to be ignored by RFC 9110);
    raises RANGE_INVALID (416) for a malformed or unsatisfiable range.
    """
    header = header.strip()
    if "," in header:
        return None
    m = _RANGE_RE.fullmatch(header)
    if not m or (not m.group(1) and not m.group(2)):
        raise RegistryError("RANGE_INVALID", {"range": header[:200]}, headers={"Content-Range": f"bytes */{size}"})
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            raise RegistryError("RANGE_INVALID", {"range": header[:200]},
                                headers={"Content-Range": f"bytes */{size}"})
        n = min(n, size)
        return size - n, n
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RegistryError("RANGE_INVALID", {"range": header[:200]}, headers={"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


def parse_content_range(header: str) -> tuple[int, int]:
    """``(start, length)`` from an upload chunk's ``Content-Range: <start>-<end>`` (inclusive end)."""
    m = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if not m:
        raise ValueError(f"malformed Content-Range {header[:100]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start or end > MAX_INT:
        raise ValueError(f"Content-Range end before start in {header[:100]!r}")
    return start, end - start + 1
