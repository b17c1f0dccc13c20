"""Read-through of one blob: streamed from the shared tier into ``uploads/`` while clients read it as it grows.

One :class:`BlobFetch` per digest at a time (the tier keeps a dict of them), whoever asks: every concurrent GET
of that digest, a HEAD that found it remotely, a manifest being made local, a prefetch. The fetch runs on its own
task, so a client that goes away does not stop it. Bytes are hashed as they arrive; at the end the digest is
checked, the file fsynced and installed through the store's verified path (``Store.install_fetched``: rename into
``blobs/``, index). A mismatch or a broken transfer fails the fetch: readers' responses are cut off (the client
sees a truncated body, never wrong bytes passing for right ones) and nothing is stored.

Readers hold their own duplicate of the file descriptor, so the rename at the end does not disturb them. Every
response holds back its last byte until the whole blob has verified, so a Range request near the start of a large
blob being fetched waits for the end of the transfer before it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from cachesvc.api.responses import FileBodyResponse
from cachesvc.remote import keys
from cachesvc.remote.objects import RemoteUnavailable

if TYPE_CHECKING:
    from cachesvc.remote.tier import RemoteTier

log = logging.getLogger("cachesvc.remote")

SEND_CHUNK = 1024 * 1024
STALL_TIMEOUT = 60.0  # a reader waits at most this long for the fetch to make progress


class FetchFailed(Exception):
    """The blob could not be fetched (not remote, unreachable, or its bytes did not match the digest)."""


class BlobFetch:
    """One blob being copied from the shared tier into the local store."""

    def __init__(self, tier: RemoteTier, digest: str, repo: str) -> None:
        self.tier = tier
        self.digest = digest
        self.repos = [repo]
        self.path = str(tier.store.layout.uploads / f"remote-{uuid.uuid4().hex}")
        self.fd = -1
        self.size: int | None = None
        self.written = 0
        self.done = False
        self.error: str | None = None
        self.started = asyncio.get_running_loop().create_future()  # resolves to the size, or FetchFailed
        self.finished = asyncio.get_running_loop().create_future()  # resolves once installed, or FetchFailed
        self._progress = asyncio.Event()
        self.urgent = asyncio.Event()  # a client waits on it: do not queue it behind background fetches
        self.task: asyncio.Task[None] | None = None

    # -- the fetch (its own task) ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                opened = await self.tier.remote.open(keys.blob(self.digest), lookup=True)
            except RemoteUnavailable as e:
                raise FetchFailed(str(e)) from None
            if opened is None:
                raise FetchFailed("not in the shared tier")
            size, chunks = opened
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            self.size = size
            self.started.set_result(size)
            hasher = hashlib.new(self.digest.partition(":")[0])
            try:
                async for chunk in chunks:
                    if self.written + len(chunk) > size:
                        raise FetchFailed("the shared tier sent more bytes than the object's size")
                    await loop.run_in_executor(None, self._write, chunk, hasher)
                    self._notify()
            except RemoteUnavailable as e:
                raise FetchFailed(f"transfer broke off: {e}") from None
            actual = f"{hasher.name}:{hasher.hexdigest()}"
            if self.written != size or actual != self.digest:
                self.tier.metrics.remote_fetches.labels("blob", "corrupt").inc()
                raise FetchFailed(f"shared tier copy does not match: {self.written} bytes hashing to {actual}")
            await loop.run_in_executor(None, os.fsync, self.fd)
            await self.tier.store.install_fetched(self.repos[0], self.digest, self.path, size)
            for repo in self.repos[1:]:
                self.tier.store.index.link_blob(self.digest, repo, self.tier.store.grace_ms)
            self.done = True
            self.tier.metrics.remote_fetches.labels("blob", "ok").inc()
            self.finished.set_result(None)
        except BaseException as e:
            self.error = str(e) if isinstance(e, FetchFailed) else f"{type(e).__name__}: {e}"
            if not isinstance(e, FetchFailed | asyncio.CancelledError):
                log.exception("fetching %s from the shared tier failed", self.digest)
            else:
                log.warning("fetching %s from the shared tier failed: %s", self.digest, self.error)
            failure = FetchFailed(self.error)
            for fut in (self.started, self.finished):
                if not fut.done():
                    fut.set_exception(failure)
                    fut.exception()  # retrieved: waiters may be gone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.tier.fetch_ended(self)
            self._notify()
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _write(self, data: bytes, hasher: hashlib._Hash) -> None:
        view = memoryview(data)
        offset = self.written
        while view:
            n = os.pwrite(self.fd, view, offset)
            offset += n
            view = view[n:]
        hasher.update(data)
        self.written = offset

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # -- readers -------------------------------------------------------------------------------------------------
    def reader_fd(self) -> int:
        """A descriptor of the file for one reader (call before any await after finding this fetch)."""
        return os.dup(self.fd)

    async def wait_beyond(self, offset: int, *, verified: bool = False) -> None:
        """Until more than ``offset`` bytes are written (with ``verified``: until the fetch is over), or the fetch
        failed; a fetch that makes no progress for STALL_TIMEOUT fails the wait."""
        while self.error is None and not self.done and (verified or self.written <= offset):
            try:
                await asyncio.wait_for(self._progress.wait(), STALL_TIMEOUT)
            except TimeoutError:
                raise FetchFailed("no progress from the shared tier") from None
        if self.error is not None:
            raise FetchFailed(self.error)


class FetchResponse(FileBodyResponse):
    """A 200 or 206 streaming ``count`` bytes from ``offset`` of a blob while it is being fetched."""

    def __init__(self, fetch: BlobFetch, fd: int, offset: int, count: int, *, status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(fd, offset, count, status=status, headers=headers)
        self.fetch = fetch

    async def _stream(self, request: BaseRequest, writer: AbstractStreamWriter) -> None:
        """Send bytes as they arrive, but hold the last byte until the whole blob matched its digest: a client
        never receives a complete body that did not verify."""
        fetch = self.fetch
        pos, end = self._offset, self._offset + self._count
        while pos < end:
            limit = end if fetch.done else min(fetch.written, end - 1)
            if pos >= limit:
                try:
                    await fetch.wait_beyond(pos, verified=pos >= end - 1)
                except FetchFailed as e:
                    raise ConnectionResetError(f"shared-tier fetch failed: {e}") from None
                continue
            data = os.pread(self._fd, min(SEND_CHUNK, limit - pos), pos)
            if not data:
                raise ConnectionResetError("fetched file shorter than expected")
            await writer.write(data)
            pos += len(data)
