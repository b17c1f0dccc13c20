"""Responses that serve blob bytes straight from the file: zero-copy ``sendfile`` for anything but tiny blobs.

uvloop (used for its much lower per-request cost) has no native ``loop.sendfile``, so on uvloop the kernel
``sendfile(2)`` loop runs in a worker thread on a duplicate of the socket descriptor; the stock asyncio loop
uses its own native implementation. Either way no blob byte passes through Python. Blobs compressed at rest
(``cachesvc/store/compression.py``) cannot be sent that way: :class:`DecompressingResponse` streams their
decompressed frames instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from cachesvc.store.seekable import SeekableReader

INLINE_LIMIT = 256 * 1024  # below this a pread + write beats a hop to a worker thread
_SENDFILE_SLICE = 16 * 1024 * 1024
STALL_TIMEOUT = 60.0  # a client that accepts no byte for this long is dropped

_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="cachesvc-sendfile")


def _sendfile_loop(sock_fd: int, fd: int, offset: int, count: int, stop: threading.Event) -> int:
    """Blocking sendfile of ``count`` bytes on a non-blocking socket; owns (and closes) both descriptors."""
    sent = 0
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        waited = 0.0
        while sent < count and not stop.is_set():
            try:
                n = os.sendfile(sock_fd, fd, offset + sent, min(count - sent, _SENDFILE_SLICE))
            except BlockingIOError:
                if poller.poll(1000):
                    waited = 0.0
                else:
                    waited += 1.0
                    if waited >= STALL_TIMEOUT:
                        raise TimeoutError("client accepted no data for too long") from None
                continue
            if n == 0:
                raise ConnectionResetError("blob file shorter than expected")
            sent += n
    finally:
        os.close(sock_fd)
        os.close(fd)
    return sent


class FileBodyResponse(web.StreamResponse):
    """A 200 or 206 whose body is ``count`` bytes from ``offset`` of an open file it owns.

    The body is written during ``prepare`` by :meth:`_stream` (one implementation per way of sending); the file
    descriptor is closed when the response ends, however it ends.
    """

    def __init__(self, fd: int, offset: int, count: int, *, status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status=status, headers=headers)
        self._fd = fd
        self._offset = offset
        self._count = count
        self.content_length = count

    def close_file(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # the body went out on the first call
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            assert writer is not None
            if request.method == "HEAD" or self._count == 0:
                return writer
            await self._stream(request, writer)
            await super().write_eof()
            return writer
        finally:
            self.close_file()

    async def _stream(self, request: BaseRequest, writer: AbstractStreamWriter) -> None:
        raise NotImplementedError


class BlobResponse(FileBodyResponse):
    """A plain blob file's bytes: one pread for tiny bodies, zero-copy sendfile otherwise."""

    async def _stream(self, request: BaseRequest, writer: AbstractStreamWriter) -> None:
        if self._count <= INLINE_LIMIT:
            data = os.pread(self._fd, self._count, self._offset)
            if len(data) != self._count:
                raise ConnectionResetError("blob file shorter than expected")
            await writer.write(data)
        else:
            await self._sendfile(request)

    async def _sendfile(self, request: BaseRequest) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.BaseEventLoop):
            with os.fdopen(os.dup(self._fd), "rb") as f:
                await loop.sendfile(transport, f, self._offset, self._count)
            return
        sock = transport.get_extra_info("socket")
        if sock is None:  # pragma: no cover - every TCP/Unix transport has one
            raise ConnectionResetError("no socket")
        while transport.get_write_buffer_size() > 0:  # headers must reach the socket before the body
            await asyncio.sleep(0.0005)
        sock_fd = os.dup(sock.fileno())
        fd, self._fd = self._fd, -1  # the worker owns the file descriptor from here
        stop = threading.Event()
        try:
            await loop.run_in_executor(_pool, _sendfile_loop, sock_fd, fd, self._offset, self._count, stop)
        except asyncio.CancelledError:
            stop.set()
            raise


class Verification:
    """``--verify-on-read``: the running digest of a body being sent, checked before its last byte goes out.

    On a mismatch ``on_mismatch`` runs (quarantine the blob, drop what needs it) and the response is aborted, so
    the client sees a truncated transfer (an error it retries), never a complete body with the wrong content.
    """

    def __init__(self, digest: str, on_mismatch: Callable[[str], object]) -> None:
        self.digest = digest
        algorithm, _, self.expected = digest.partition(":")
        self.hasher = hashlib.new(algorithm)
        self.on_mismatch = on_mismatch

    def check(self) -> None:
        actual = self.hasher.hexdigest()
        if actual != self.expected:
            self.on_mismatch(actual)
            raise ConnectionAbortedError(f"blob {self.digest} failed verification on read")


VERIFY_CHUNK = 1024 * 1024


class VerifyingBlobResponse(FileBodyResponse):
    """A whole plain blob read, hashed and sent in chunks (no sendfile: every byte passes the hash); the last
    chunk is held back until the digest matched."""

    def __init__(self, fd: int, size: int, verification: Verification, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(fd, 0, size, headers=headers)
        self.verification = verification

    def _read(self, offset: int) -> bytes:
        data = os.pread(self._fd, min(VERIFY_CHUNK, self._count - offset), offset)
        if not data:
            raise ConnectionResetError("blob file shorter than expected")
        self.verification.hasher.update(data)
        return data

    async def _stream(self, request: BaseRequest, writer: AbstractStreamWriter) -> None:
        loop = asyncio.get_running_loop()
        offset = 0
        held: bytes | None = None
        while offset < self._count:
            data = await loop.run_in_executor(None, self._read, offset)
            offset += len(data)
            if held is not None:
                await writer.write(held)
            held = data
        self.verification.check()
        if held is not None:
            await writer.write(held)


_zstd_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="cachesvc-zstd")
# Frames decompressed in parallel ahead of the one being sent: one stream can then use more than one core for
# zstd (memory: about DECOMPRESS_AHEAD + 1 frames of 2 MiB per response).
DECOMPRESS_AHEAD = max(2, min(4, os.cpu_count() or 2))


class DecompressingResponse(FileBodyResponse):
    """A 200 or 206 whose body is ``count`` bytes from ``offset`` of a blob compressed at rest (seekable zstd).

    Only the frames covering the range are read. Worker threads decompress the next frames (in parallel) while
    the current one is being sent, so memory stays at a few frames per response and the event loop never
    decompresses.
    The response owns ``fd`` and closes it once no worker uses it, however the response ends.
    """

    def __init__(self, fd: int, offset: int, count: int, *, status: int = 200,
                 headers: dict[str, str] | None = None, on_sent: Callable[[int], object] | None = None,
                 verification: Verification | None = None) -> None:
        super().__init__(fd, offset, count, status=status, headers=headers)
        self._on_sent = on_sent
        self._verification = verification  # only for a whole-blob body
        self._reader = SeekableReader(fd)  # the seek table (two small preads): SeekableError before any byte

    async def _stream(self, request: BaseRequest, writer: AbstractStreamWriter) -> None:
        loop = asyncio.get_running_loop()
        reader = self._reader
        plan = iter(reader.plan(self._offset, self._count))
        ahead: collections.deque[asyncio.Future[memoryview]] = collections.deque()

        def submit() -> None:
            nxt = next(plan, None)
            if nxt is not None:
                ahead.append(loop.run_in_executor(_zstd_pool, reader.piece, *nxt))

        for _ in range(DECOMPRESS_AHEAD):
            submit()
        sent = 0
        verification = self._verification
        held: memoryview | None = None
        try:
            while ahead:
                # shielded: a client that goes away cancels this task, not the read a worker is doing on the fd
                piece = await asyncio.shield(ahead[0])
                ahead.popleft()
                submit()
                if verification is None:
                    await writer.write(piece)
                    sent += len(piece)
                    continue
                verification.hasher.update(piece)
                if held is not None:
                    await writer.write(held)
                    sent += len(held)
                held = piece
            if verification is not None:
                verification.check()
                if held is not None:
                    await writer.write(held)
                    sent += len(held)
        finally:
            if ahead:
                # Workers may still read the file: it is closed once they are all done with it.
                fd, self._fd = self._fd, -1
                asyncio.gather(*ahead, return_exceptions=True).add_done_callback(lambda f: _close_after(f, fd))
            if self._on_sent is not None:
                self._on_sent(sent)


def _close_after(fut: asyncio.Future[object], fd: int) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so a failure of an abandoned read is not reported twice
    with contextlib.suppress(OSError):
        os.close(fd)
