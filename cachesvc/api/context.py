"""What every handler is given: the store, the settings, the metrics, and small request helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

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
    remote: Any = None  # the shared tier (cachesvc.remote.tier.RemoteTier) with --remote; handlers ask it on misses

    def lookup(self, request: BaseRequest, repo: str, kind: str, hit: bool, tier: str = "local") -> None:
        """Count a blob or manifest lookup as a cache hit or miss (metrics, traffic table, access log); ``tier``
        says where a hit was answered from (``local`` or ``shared``)."""
        result = "hit" if hit else "miss"
        self.metrics.lookup(kind, result, tier if hit else "miss")
        self.traffic.record(repo, hit)
        request[CACHE_RESULT] = result

    def body(self, request: BaseRequest) -> AsyncIterator[bytes]:
        """The request body, cut off if the client trickles (see :func:`body_chunks`)."""
        return body_chunks(request, self.settings.client_timeout)

    def served(self, repo: str, nbytes: int) -> None:
        self.metrics.bytes_served.inc(nbytes)
        self.traffic.served(repo, nbytes)


MIN_RATE = 1024  # bytes/s a body must average once the client timeout has passed


async def body_chunks(request: BaseRequest, timeout: float = 60.0) -> AsyncIterator[bytes]:
    """The request body as it arrives, never whole in memory.

    A client that sends nothing for ``timeout`` seconds, or that averages under MIN_RATE after that long, is cut
    off (408): a trickling client must not hold an upload session and a worker forever."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), timeout)
        except TimeoutError:
            raise _too_slow(f"no data for {timeout:.0f}s") from None
        if not chunk:
            return
        received += len(chunk)
        elapsed = loop.time() - started
        if elapsed > timeout and received < MIN_RATE * elapsed:
            raise _too_slow(f"{received} bytes in {elapsed:.0f}s")
        yield chunk


def _too_slow(reason: str) -> RegistryError:
    return RegistryError("BLOB_UPLOAD_INVALID", {"reason": f"client too slow: {reason}"}, status=408,
                         headers={"Connection": "close"})


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
