"""Blob files: streamed in while hashed, verified, fsynced and renamed into place; opened for zero-copy serving.

A file under ``blobs/`` is only ever created by an atomic rename of a fully written, fsynced and verified file,
and only removed once the index has dropped its blob (unlinked by ``reclaim.py``, or renamed into ``trash/``);
readers that already hold it open keep streaming it.
A blob is stored *plain* (``<hex>``) or *compressed at rest* (``<hex>.zst``, see ``compression.py``); readers try
the plain form first, because a swap installs the compressed file before it removes the plain one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

from cachesvc.api.errors import RegistryError
from cachesvc.store.layout import Layout

CHUNK = 1024 * 1024
WRITEBACK_EVERY = 8 * 1024 * 1024


def _libc_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None


_sync_file_range = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range back (Linux ``sync_file_range``), without waiting for it."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
_trash_seq = itertools.count()


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    return hashlib.new(algorithm)


def storage_error(e: OSError, what: str) -> RegistryError:
    """Map a filesystem error to the client-facing error: ENOSPC/EDQUOT are 507, the rest 500."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryError("STORAGE_FULL", {"reason": f"no space left while {what}"})
    return RegistryError("UNKNOWN", {"reason": f"storage error while {what}: {e.strerror}"}, status=500)


class AppendFile:
    """An upload's data file, appended to in order while a running digest is kept.

    Chunks are handed to a worker thread so hashing and writing overlap with receiving the next chunk.
    """

    def __init__(self, path: str, offset: int = 0, hasher: hashlib._Hash | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.offset = offset
        self.hasher = hasher
        self._flushed = offset

    def _pwrite_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            offset += n
            view = view[n:]
        if offset - self._flushed >= WRITEBACK_EVERY:
            # Start writing these pages back now, so the fsync at the end has little left to wait for.
            start_writeback(self.fd, self._flushed, offset - self._flushed)
            self._flushed = offset

    def _submit(self, loop: asyncio.AbstractEventLoop, data: bytes) -> asyncio.Future[Any]:
        """Write and hash one buffer at once on two worker threads (both release the GIL)."""
        offset = self.offset
        self.offset += len(data)
        jobs = [loop.run_in_executor(None, self._pwrite_at, data, offset)]
        if self.hasher is not None:
            jobs.append(loop.run_in_executor(None, self.hasher.update, data))
        return asyncio.gather(*jobs)

    async def write_stream(self, chunks: AsyncIterator[bytes], expected: int | None = None) -> int:
        """Append every chunk; returns bytes written. All or nothing: on any error (including a body whose
        length is not ``expected``) the file and the running digest are cut back to where they started."""
        loop = asyncio.get_running_loop()
        start = self.offset
        saved = self.hasher.copy() if self.hasher is not None else None
        pending: asyncio.Future[None] | None = None
        buf: list[bytes] = []
        buffered = 0
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if expected is not None and received > expected:
                    raise RegistryError("SIZE_INVALID", {"reason": f"body longer than the declared {expected}"})
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= CHUNK:
                    data = b"".join(buf)
                    buf, buffered = [], 0
                    if pending is not None:
                        await pending
                    pending = self._submit(loop, data)
            if pending is not None:
                await pending
                pending = None
            if buf:
                await self._submit(loop, b"".join(buf))
            if expected is not None and received != expected:
                raise RegistryError("SIZE_INVALID", {"reason": f"body of {received} bytes, {expected} declared"})
        except BaseException:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            self.offset = start
            self.hasher = saved
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)
            raise
        return self.offset - start

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.offset = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def fsync(self) -> None:
        os.fsync(self.fd)


def hash_file(path: str, algorithm: str) -> tuple[str, int]:
    """Digest and size of a file, read in chunks (never whole into memory)."""
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class BlobFiles:
    """The content-addressed tree under ``blobs/`` and the moves in and out of it."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def path(self, digest: str) -> str:
        return self.layout.blob_path_str(digest)

    def zpath(self, digest: str) -> str:
        """The compressed-at-rest form's path."""
        return self.layout.blob_zst_path_str(digest)

    def open(self, digest: str) -> int:
        """An fd for reading the plain form; raises FileNotFoundError if it is not there."""
        return os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)

    def open_any(self, digest: str) -> tuple[int, bool]:
        """``(fd, compressed)`` for whichever form exists (plain first); FileNotFoundError if neither does."""
        try:
            return os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC), False
        except FileNotFoundError:
            pass
        try:
            return os.open(self.zpath(digest), os.O_RDONLY | os.O_CLOEXEC), True
        except FileNotFoundError:  # a swap cannot remove both; look once more at the plain form to be sure
            return os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC), False

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest)) or os.path.exists(self.zpath(digest))

    def install_compressed(self, src: str, digest: str) -> str:
        """Rename a fsynced, verified compressed copy into place; returns the directory to fsync."""
        os.rename(src, self.zpath(digest))
        return os.path.dirname(self.zpath(digest))

    def trash_form(self, digest: str, compressed: bool) -> bool:
        """Move one form of a blob to the trash (the other stays served)."""
        dest = self.layout.trash / f"{digest.replace(':', '-')}.{os.getpid()}.{next(_trash_seq)}"
        try:
            os.rename(self.zpath(digest) if compressed else self.path(digest), dest)
            return True
        except FileNotFoundError:
            return False

    def install(self, src: str, digest: str) -> str:
        """Atomically rename a verified, fsynced file into place; returns the directory to fsync."""
        algorithm, _, hex_digest = digest.partition(":")
        directory = self.layout.blob_dir(algorithm, hex_digest)
        try:
            os.rename(src, self.path(digest))
        except FileNotFoundError:
            if os.path.exists(src):
                directory.mkdir(parents=True, exist_ok=True)
                fsync_dir(str(directory.parent))
                os.rename(src, self.path(digest))
            else:
                raise
        return str(directory)

    def to_trash(self, digest: str) -> bool:
        """Move a blob file out of the served tree (instant); the trash is emptied in the background."""
        plain = self.trash_form(digest, False)
        return self.trash_form(digest, True) or plain

    def quarantine(self, digest: str) -> bool:
        algorithm, _, hex_digest = digest.partition(":")
        moved = False
        for src, suffix in ((self.path(digest), ""), (self.zpath(digest), ".zst")):
            try:
                os.rename(src, f"{self.layout.quarantined(algorithm, hex_digest)}{suffix}")
                moved = True
            except FileNotFoundError:
                pass
        return moved

    def empty_trash(self) -> int:
        """Unlink what the trash holds (run in a worker thread); returns the number of files removed."""
        n = 0
        for entry in os.scandir(self.layout.trash):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                n += 1
        return n


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
