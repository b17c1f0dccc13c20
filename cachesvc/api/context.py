"""What every handler is given: the store, the settings, the metrics, and small request helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp.web_request import BaseRequest

from cachesvc.api.errors import RegistryError
from cachesvc.metrics import Metrics
from cachesvc.settings import Settings
from cachesvc.store.store import Store
from cachesvc.traffic import Traffic

try:
    from aiohttp.web import RequestKey
except ImportError:  # pragma: no cover - aiohttp < 3.12
    RequestKey = None  # type: ignore[assignment,misc]

# Per-request notes handlers leave for the access log and metrics.
CACHE_RESULT = RequestKey("cache", str) if RequestKey else "cache"  # "hit" or "miss"
BYTES_IN = RequestKey("bytes_in", int) if RequestKey else "bytes_in"


@dataclass
class Registry:
    """The per-process registry: handlers reach the store and settings through it."""

    store: Store
    settings: Settings
    metrics: Metrics
    traffic: Traffic

    def lookup(self, request: BaseRequest, repo: str, kind: str, hit: bool) -> None:
        """Count a blob or manifest lookup as a cache hit or miss (metrics, traffic table, access log)."""
        result = "hit" if hit else "miss"
        self.metrics.lookups.labels(kind, result).inc()
        self.traffic.record(repo, hit)
        request[CACHE_RESULT] = result

    def served(self, repo: str, nbytes: int) -> None:
        self.metrics.bytes_served.inc(nbytes)
        self.traffic.served(repo, nbytes)


async def body_chunks(request: BaseRequest) -> AsyncIterator[bytes]:
    """The request body as it arrives, never whole in memory."""
    async for chunk in request.content.iter_any():
        yield chunk


def declared_length(request: BaseRequest) -> int | None:
    """The Content-Length the client declared, or None for a chunked body."""
    raw = request.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise RegistryError("SIZE_INVALID", {"reason": "Content-Length is not a number"})
    return int(raw)


def query_value(request: BaseRequest, name: str) -> str | None:
    """A query parameter's first value, decoded."""
    return request.query.get(name)
