"""The object-store client of the shared tier: obstore's S3 store behind a small async API with bounded waits.

Every call either answers (an object, its metadata, or None for "not there") or raises :class:`RemoteUnavailable`;
obstore's own exceptions never leak, so callers cannot mistake a remote 404 for a missing local file (both are
``FileNotFoundError`` subclasses in obstore). Calls made on a client's request path (``lookup=True``) are bounded
by ``--remote-timeout`` and pass through a breaker: after a failure the tier is considered down for a few seconds
and lookups fail at once, so a dead object store turns misses into quick 404s instead of a wait per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

log = logging.getLogger("cachesvc.remote")

T = TypeVar("T")

PART_SIZE = 8 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB)
MULTIPART_THRESHOLD = 16 * 1024 * 1024  # blobs larger than this go up in parts, several at once
BREAKER_SECONDS = 3.0  # after a failed lookup, lookups fail fast for this long


class RemoteUnavailable(Exception):
    """The shared tier could not answer (down, timed out, refused our credentials, or a server error)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # unix time (s)


@dataclass(frozen=True, slots=True)
class RemoteURL:
    """``s3://bucket[/prefix]`` split into its parts."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> RemoteURL:
        parts = urlsplit(url)
        if parts.scheme not in ("s3", "s3a") or not parts.netloc:
            raise ValueError(f"must be s3://BUCKET[/PREFIX], got {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _endpoint(configured: str) -> str:
    """The endpoint in effect: ``--remote-endpoint``, else the usual AWS variables (obstore reads them too)."""
    return configured or os.environ.get("AWS_ENDPOINT_URL_S3", "") or os.environ.get("AWS_ENDPOINT_URL", "")


def _region(configured: str) -> str:
    return configured or os.environ.get("AWS_REGION", "") or os.environ.get("AWS_DEFAULT_REGION", "") or "us-east-1"


class Remote:
    """One bucket and prefix on an S3-compatible object store; keys passed in are relative to the prefix."""

    def __init__(self, url: str, *, endpoint: str = "", region: str = "", timeout: float = 3.0,
                 on_bytes: Any = None) -> None:
        self.url = RemoteURL.parse(url)
        self.endpoint = _endpoint(endpoint)
        self.region = _region(region)
        self.timeout = timeout
        self.on_bytes = on_bytes  # callable(direction, n): metrics of bytes up and down
        self._down_until = 0.0
        kwargs: dict[str, Any] = {"region": self.region}
        if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() in ("1", "true", "yes"):
            # The usual AWS switch: never ask an instance-metadata service for credentials (the client would
            # otherwise try 169.254.169.254 when no key is given).
            kwargs["metadata_endpoint"] = "http://127.0.0.1:9"
        if self.endpoint:
            kwargs["endpoint"] = self.endpoint
            kwargs["virtual_hosted_style_request"] = False
        client = {"allow_http": self.endpoint.startswith("http://"),
                  "connect_timeout": timedelta(seconds=max(0.5, min(timeout, 5.0))),
                  # A stalled transfer is cut after this long without a byte; whole transfers may take long.
                  "read_timeout": timedelta(seconds=max(timeout, 30.0)),
                  "timeout": timedelta(hours=6), "pool_idle_timeout": timedelta(seconds=30)}
        # Few, quick retries: the write-behind queue has its own backoff, and lookups must stay bounded.
        retry = {"max_retries": 1, "retry_timeout": timedelta(seconds=max(timeout, 5.0)),
                 "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=1),
                             "base": 2}}
        self.store = S3Store(self.url.bucket, prefix=self.url.prefix or None, client_options=client,
                             retry_config=retry, **kwargs)

    def __repr__(self) -> str:
        return f"Remote({self.url}, endpoint={self.endpoint or 'AWS'})"

    # -- the breaker and the bounds ------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], lookup: bool) -> T:
        """Await an obstore call: bounded and breaker-guarded on the request path, errors mapped either way."""
        if lookup and self.down:
            raise RemoteUnavailable(f"{what}: shared tier marked down after a recent failure")
        try:
            result = await (asyncio.wait_for(call(), self.timeout) if lookup else call())
        except FileNotFoundError:
            raise
        except TimeoutError:
            self._trip(lookup)
            raise RemoteUnavailable(f"{what}: no answer within {self.timeout:g}s") from None
        except obstore.exceptions.BaseError as e:
            self._trip(lookup)
            raise RemoteUnavailable(f"{what}: {_short(e)}") from None
        except OSError as e:  # connection-level failures surface as OSError subclasses in some paths
            self._trip(lookup)
            raise RemoteUnavailable(f"{what}: {e}") from None
        self._down_until = 0.0
        return result

    def _trip(self, lookup: bool) -> None:
        if lookup:
            self._down_until = time.monotonic() + BREAKER_SECONDS

    # -- reads -------------------------------------------------------------------------------------------------
    async def head(self, key: str, *, lookup: bool = False) -> ObjectInfo | None:
        try:
            meta = await self._call(f"HEAD {key}", lambda: obstore.head_async(self.store, key), lookup)
        except FileNotFoundError:
            return None
        return ObjectInfo(key, int(meta["size"]), meta["last_modified"].timestamp())

    async def get(self, key: str, *, lookup: bool = False) -> tuple[bytes, dict[str, str], ObjectInfo] | None:
        """A small object whole (a manifest, a tag): body, attributes (Content-Type, metadata) and info."""
        async def fetch() -> tuple[bytes, dict[str, str], ObjectInfo]:
            result = await obstore.get_async(self.store, key)
            body = bytes(await result.bytes_async())
            meta = result.meta
            return body, dict(result.attributes), ObjectInfo(key, int(meta["size"]), meta["last_modified"].timestamp())

        try:
            body, attrs, info = await self._call(f"GET {key}", fetch, lookup)
        except FileNotFoundError:
            return None
        self._count("down", len(body))
        return body, attrs, info

    async def open(self, key: str, *, lookup: bool = False) -> tuple[int, AsyncIterator[bytes]] | None:
        """Start streaming an object: ``(size, chunks)``; only the start is bounded by the lookup timeout
        (a stall later is cut by the client's read timeout)."""
        try:
            result = await self._call(f"GET {key}", lambda: obstore.get_async(self.store, key), lookup)
        except FileNotFoundError:
            return None
        return int(result.meta["size"]), self._chunks(key, result.stream(min_chunk_size=1024 * 1024))

    async def _chunks(self, key: str, stream: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                data = bytes(chunk)
                self._count("down", len(data))
                yield data
        except obstore.exceptions.BaseError as e:
            raise RemoteUnavailable(f"GET {key}: {_short(e)}") from None
        except (FileNotFoundError, OSError) as e:
            raise RemoteUnavailable(f"GET {key}: {e}") from None

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` (relative keys), in pages."""
        stream = obstore.list(self.store, prefix, chunk_size=1000)
        while True:
            try:
                batch = await stream.__anext__()
            except StopAsyncIteration:
                return
            except obstore.exceptions.BaseError as e:
                raise RemoteUnavailable(f"LIST {prefix}: {_short(e)}") from None
            for meta in batch:
                yield ObjectInfo(meta["path"], int(meta["size"]), meta["last_modified"].timestamp())

    # -- writes ------------------------------------------------------------------------------------------------
    async def put(self, key: str, data: bytes, *, content_type: str | None = None,
                  metadata: dict[str, str] | None = None) -> None:
        attributes: dict[str, str] = dict(metadata or {})
        if content_type:
            attributes["Content-Type"] = content_type
        await self._call(f"PUT {key}", lambda: obstore.put_async(self.store, key, data,
                                                                 attributes=attributes or None,
                                                                 use_multipart=False), False)
        self._count("up", len(data))

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], size: int) -> None:
        """Upload a large object in parts (several in flight); ``chunks`` must yield exactly ``size`` bytes and
        may raise to abort the upload, which then never becomes visible."""
        counted = self._counting(chunks)
        await self._call(f"PUT {key} (multipart, {size} bytes)",
                         lambda: obstore.put_async(self.store, key, counted, use_multipart=True,
                                                   chunk_size=PART_SIZE, max_concurrency=4), False)

    async def _counting(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._count("up", len(chunk))
            yield chunk

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            await self._call(f"DELETE {len(batch)} objects", lambda b=batch: obstore.delete_async(self.store, b),
                             False)

    def _count(self, direction: str, n: int) -> None:
        if self.on_bytes is not None and n:
            self.on_bytes(direction, n)


def _short(e: BaseException) -> str:
    """obstore's messages carry a multi-line debug dump: keep the first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
