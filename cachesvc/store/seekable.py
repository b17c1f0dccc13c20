"""The on-disk form of a blob compressed at rest: the zstd *seekable format*, so any byte range can be served by
decompressing only the frames that hold it.

Layout of ``blobs/<alg>/<xx>/<hex>.zst`` (the format of zstd's ``contrib/seekable_format``, so ``zstd -d`` reads
the file back to the original blob and other tools that know the format can seek in it)::

    frame 0 | frame 1 | ... | frame n-1 | seek table

* every frame is an ordinary, independent zstd frame of :data:`FRAME_SIZE` decompressed bytes (the last one may
  be shorter), with its content size and an XXH64 content checksum in the frame, so a damaged frame is an error
  at decompression, never wrong bytes;
* the seek table is a zstd *skippable* frame (ignored by plain zstd decoders)::

      u32 LE 0x184D2A5E   skippable-frame magic
      u32 LE             length of what follows (8 x n + 9)
      n x (u32 LE compressed size, u32 LE decompressed size)
      u32 LE n           number of frames
      u8     0           descriptor (bit 7 would mean per-entry checksums: not used)
      u32 LE 0x8F92EAB1  seekable magic

A reader locates the table from the last 9 bytes, checks that the sizes add up to the file's length, and maps a
decompressed offset to its frame with a binary search over the cumulative sizes.

Memory is bounded on both sides: compression holds a few frames per thread, a range read one compressed and one
decompressed frame at a time.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import zstandard

FRAME_SIZE = 2 * 1024 * 1024  # decompressed bytes per frame: small enough for ranges, large enough for speed
LEVEL = 1  # zstd's fastest positive level: ~3x on layer tars at hundreds of MB/s per core
SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
_FOOTER = struct.Struct("<IBI")  # frames, descriptor, seekable magic
_HEADER = struct.Struct("<II")  # skippable magic, frame size
_ENTRY = struct.Struct("<II")  # compressed size, decompressed size
MAX_FRAMES = 1 << 24  # 32 TiB of 2 MiB frames: a larger count means a damaged table, not a real blob


class SeekableError(ValueError):
    """The file is not a well-formed seekable zstd file (truncated, damaged, or something else)."""


@dataclass(slots=True)
class SeekTable:
    """Sizes of every frame, with cumulative offsets for seeking."""

    compressed: list[int] = field(default_factory=list)
    decompressed: list[int] = field(default_factory=list)
    c_offsets: list[int] = field(default_factory=list)  # start of frame i in the file (n + 1 entries)
    d_offsets: list[int] = field(default_factory=list)  # start of frame i in the blob (n + 1 entries)

    @classmethod
    def build(cls, frames: list[tuple[int, int]]) -> SeekTable:
        t = cls([c for c, _ in frames], [d for _, d in frames], [0], [0])
        for c, d in frames:
            t.c_offsets.append(t.c_offsets[-1] + c)
            t.d_offsets.append(t.d_offsets[-1] + d)
        return t

    @property
    def size(self) -> int:
        """Decompressed size: the blob's size."""
        return self.d_offsets[-1]

    @property
    def frames_size(self) -> int:
        return self.c_offsets[-1]

    def encode(self) -> bytes:
        n = len(self.compressed)
        body = b"".join(_ENTRY.pack(c, d) for c, d in zip(self.compressed, self.decompressed, strict=True))
        body += _FOOTER.pack(n, 0, SEEKABLE_MAGIC)
        return _HEADER.pack(SKIPPABLE_MAGIC, len(body)) + body

    def frame_at(self, offset: int) -> int:
        """Index of the frame holding decompressed byte ``offset``."""
        return bisect.bisect_right(self.d_offsets, offset) - 1

    @classmethod
    def read(cls, fd: int) -> SeekTable:
        """Parse and check the table at the end of an open file."""
        file_size = os.fstat(fd).st_size
        if file_size < _HEADER.size + _FOOTER.size:
            raise SeekableError("file too short for a seek table")
        n, descriptor, magic = _FOOTER.unpack(os.pread(fd, _FOOTER.size, file_size - _FOOTER.size))
        if magic != SEEKABLE_MAGIC:
            raise SeekableError("no seekable-format footer")
        if descriptor & 0x80 or n > MAX_FRAMES:
            raise SeekableError(f"unsupported seek table (descriptor {descriptor:#x}, {n} frames)")
        table_len = _HEADER.size + n * _ENTRY.size + _FOOTER.size
        if table_len > file_size:
            raise SeekableError("seek table longer than the file")
        raw = os.pread(fd, table_len, file_size - table_len)
        skip_magic, frame_len = _HEADER.unpack_from(raw)
        if skip_magic != SKIPPABLE_MAGIC or frame_len != table_len - _HEADER.size:
            raise SeekableError("seek table frame header does not match its footer")
        frames = [_ENTRY.unpack_from(raw, _HEADER.size + i * _ENTRY.size) for i in range(n)]
        table = cls.build(frames)
        if table.frames_size + table_len != file_size:
            raise SeekableError(f"frames add up to {table.frames_size + table_len} bytes, file has {file_size}")
        return table


# -- compression ---------------------------------------------------------------------------------------------
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compression context per thread (contexts are not thread-safe; creating one per frame is waste)."""
    c = getattr(_local, "compressors", None)
    if c is None:
        c = _local.compressors = {}
    if level not in c:
        c[level] = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return c[level]


def _compress_frame(src_fd: int, offset: int, length: int, level: int) -> tuple[bytes, int]:
    data = os.pread(src_fd, length, offset)
    if len(data) != length:
        raise OSError(f"source shorter than expected at {offset}")
    return _compressor(level).compress(data), length


def compress_fd(src_fd: int, size: int, dst_fd: int, *, pool: Executor | None = None, workers: int = 1,
                level: int = LEVEL, frame_size: int = FRAME_SIZE, give_up_above: int | None = None,
                cancel: threading.Event | None = None) -> int | None:
    """Write the seekable form of ``size`` bytes of ``src_fd`` to ``dst_fd`` (from its start); returns the
    compressed file's size, or None as soon as it is certain to exceed ``give_up_above``.

    With a ``pool`` of ``workers`` threads, frames are compressed ``workers`` at a time (zstd releases the GIL);
    at most ``2 x workers`` frames are in memory. Setting ``cancel`` stops it (InterruptedError) between batches.
    """
    frames: list[tuple[int, int]] = []
    written = 0
    starts = list(range(0, size, frame_size))
    batch = max(1, workers) * 2
    for i in range(0, len(starts), batch):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("compression cancelled")
        group = starts[i:i + batch]
        if pool is not None and len(group) > 1:
            futures = [pool.submit(_compress_frame, src_fd, s, min(frame_size, size - s), level) for s in group]
            results = [f.result() for f in futures]
        else:
            results = [_compress_frame(src_fd, s, min(frame_size, size - s), level) for s in group]
        for blob, length in results:
            _write_all(dst_fd, blob, written)
            written += len(blob)
            frames.append((len(blob), length))
        if give_up_above is not None and written > give_up_above:
            return None
    tail = SeekTable.build(frames).encode()
    _write_all(dst_fd, tail, written)
    written += len(tail)
    if give_up_above is not None and written > give_up_above:
        return None
    return written


def compress_bytes(data: bytes, *, level: int = LEVEL, frame_size: int = FRAME_SIZE) -> bytes:
    """The seekable form of ``data`` held in memory (small inputs and tests)."""
    frames, parts = [], []
    for s in range(0, len(data), frame_size):
        piece = data[s:s + frame_size]
        blob = _compressor(level).compress(piece)
        parts.append(blob)
        frames.append((len(blob), len(piece)))
    parts.append(SeekTable.build(frames).encode())
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]


# -- reading -------------------------------------------------------------------------------------------------
def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread, reused across frames and files."""
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


class SeekableReader:
    """Decompressed byte ranges of an open seekable file. :meth:`piece` may run in several threads at once (so
    a response can decompress the next frames in parallel); the iterators are for one thread at a time."""

    def __init__(self, fd: int, table: SeekTable | None = None) -> None:
        self.fd = fd
        self.table = table or SeekTable.read(fd)

    @property
    def size(self) -> int:
        return self.table.size

    def frame(self, i: int) -> bytes:
        """Frame ``i`` decompressed (checked against its checksum and its size in the table)."""
        t = self.table
        raw = os.pread(self.fd, t.compressed[i], t.c_offsets[i])
        if len(raw) != t.compressed[i]:
            raise SeekableError(f"frame {i} truncated")
        try:
            out = _decompressor().decompress(raw)
        except zstandard.ZstdError as e:
            raise SeekableError(f"frame {i}: {e}") from None
        if len(out) != t.decompressed[i]:
            raise SeekableError(f"frame {i} holds {len(out)} bytes, table says {t.decompressed[i]}")
        return out

    def plan(self, offset: int, count: int) -> list[tuple[int, int, int]]:
        """The frames holding ``count`` bytes from ``offset``: ``(frame, start in frame, end in frame)``."""
        if offset < 0 or count < 0 or offset + count > self.size:
            raise ValueError(f"range {offset}+{count} outside a blob of {self.size} bytes")
        out = []
        end = offset + count
        i = self.table.frame_at(offset) if count else 0
        while offset < end:
            start = self.table.d_offsets[i]
            stop = min(end, self.table.d_offsets[i + 1])
            out.append((i, offset - start, stop - start))
            offset = stop
            i += 1
        return out

    def piece(self, i: int, lo: int, hi: int) -> memoryview:
        """Bytes ``lo:hi`` of frame ``i`` (a view: no copy)."""
        data = memoryview(self.frame(i))
        return data if lo == 0 and hi == len(data) else data[lo:hi]

    def iter_range(self, offset: int, count: int) -> Iterator[memoryview]:
        """The ``count`` bytes from ``offset``, one piece per frame."""
        for i, lo, hi in self.plan(offset, count):
            yield self.piece(i, lo, hi)

    def read(self, offset: int, count: int) -> bytes:
        return b"".join(self.iter_range(offset, count))


def hash_fd(fd: int, algorithm_update: Callable[[bytes | memoryview], object]) -> int:
    """Feed the whole decompressed content of an open seekable file to ``algorithm_update``; returns its size."""
    reader = SeekableReader(fd)
    for piece in reader.iter_range(0, reader.size):
        algorithm_update(piece)
    return reader.size
