"""Compression at rest: blobs pushed uncompressed (BuildKit ``compression=uncompressed``, buildah
``--disable-compression``) are kept zstd-compressed on disk and served as the exact bytes that were pushed.

Why: on a co-located cache, gzip is the slowest part of a cache export (tens of MB/s per core on the builder);
pushing plain tar skips it, and compressing here, later, at zstd's fastest level (hundreds of MB/s) gets most of
the disk back without the builder paying for it.

What happens to a new blob (``--compress-at-rest auto``, the default):

1. ``Store._install`` indexes it with a ``compress:<digest>`` queue key in the same batch, then hands the
   digest to :class:`Compressor`; the upload is answered without waiting for anything else.
2. The worker takes one blob at a time, once uploads have been quiet for :data:`QUIET_SECONDS` (an export is
   never slowed by its own compression; after :data:`MAX_DEFER` it goes ahead anyway, in threads at a lower
   CPU priority). It sniffs the content: gzip, zstd, xz, bzip2 and lz4 magic numbers mean *already compressed*
   (left alone); tar headers and JSON are candidates; anything else must show a saving on a few samples first.
3. It writes the seekable zstd form (``seekable.py``) to ``uploads/zst-<hex>``, keeping it only if it saves at
   least :data:`MIN_SAVING`; fsyncs it and verifies it by decompressing and re-hashing it against the digest.
4. The swap, crash-safe at every step: a ``swap:<digest>`` intent (WAL fsynced) -> rename the copy to
   ``blobs/…/<hex>.zst`` -> one index batch sets ``stored_size`` and ``disk_bytes`` and the per-repository
   saved bytes -> fsync the directory and the WAL -> the plain file goes to the trash (readers that opened it
   keep streaming it) -> the intent is forgotten. At start, :meth:`Compressor.repair` finishes or undoes each
   intent left by a crash, so a blob always has exactly one whole form that its record describes.

The digest, size and media type a client sees never change; ``GET`` streams decompressed frames (see
``cachesvc.api.responses.DecompressingResponse``) and a ``Range`` decompresses only the frames it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachesvc.store.blobs import CHUNK, fsync_dir
from cachesvc.store.seekable import LEVEL, SeekableError, SeekableReader, compress_fd
from cachesvc.tasks import cancel_and_wait

if TYPE_CHECKING:
    from cachesvc.store.store import Store

log = logging.getLogger("cachesvc.compression")

MIN_SIZE = 512  # smaller blobs are not worth a second file's bookkeeping
MIN_SAVING = 0.10  # keep the compressed form only if it is at least this much smaller
QUIET_SECONDS = 2.0  # start compressing once no upload has been open or finished for this long...
MAX_DEFER = 60.0  # ...or after waiting this long regardless
SAMPLE_ABOVE = 16 * 1024 * 1024  # content of an unknown kind this large is sampled before compressing it all
SAMPLE_SIZE = 256 * 1024
BACKFILL_BATCH = 500  # blob records read per step of the one-off scan after compression was off
NICE = 10  # compression threads yield the CPU to requests and to the builder

ALREADY_COMPRESSED = ("gzip", "zstd", "xz", "bzip2", "lz4")
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


def sniff(head: bytes) -> str:
    """What the first bytes of a blob say it is: a compressed format, ``tar``, ``json``, or ``other``."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F:  # zstd skippable frame
        return "zstd"
    if head[257:262] == b"ustar":
        return "tar"
    text = head.lstrip(b" \t\r\n")
    if text[:1] in (b"{", b"["):
        with contextlib.suppress(UnicodeDecodeError):
            head.decode("utf-8")  # a truncated last character is not worth rejecting JSON over
            return "json"
        with contextlib.suppress(UnicodeDecodeError):
            head[:-3].decode("utf-8")
            return "json"
    return "other"


@dataclass(slots=True)
class Outcome:
    """What the worker did with one blob (also the ``result`` label of the metrics)."""

    result: str  # compressed, already_compressed, small, incompressible, no_gain, corrupt, failed, gone
    kind: str = "-"
    stored_size: int | None = None
    tmp: str | None = None


def _lower_priority() -> None:
    """Thread initializer: Linux schedules threads individually, so this nices only compression threads."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


def default_workers() -> int:
    """Frame-compression threads: leave at least one core to requests and the builder, at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


class Compressor:
    """The background worker, its queue, and the crash repair of its swaps (one per open store)."""

    def __init__(self, store: Store, *, enabled: bool, workers: int | None = None) -> None:
        self.store = store
        self.enabled = enabled
        self.workers = workers or default_workers()
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.backfill: str | None = None  # cursor of the one-off scan, None when there is nothing to scan
        self.last_activity = time.monotonic()
        self.busy: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cachesvc-compress", initializer=_lower_priority)
        self._frames = (ThreadPoolExecutor(self.workers, thread_name_prefix="cachesvc-compress-frames",
                                           initializer=_lower_priority) if self.workers > 1 else None)

    # -- life cycle ------------------------------------------------------------------------------------------
    def open(self) -> None:
        """At store open (after the index): finish interrupted swaps, load the queue, note the mode."""
        self.repair()
        index = self.store.index
        mode = b"auto" if self.enabled else b"off"
        if index.meta_value("compress_mode") != mode:
            if self.enabled:  # blobs stored while off (or before this feature) were never queued: scan once
                index.set_meta_value("compress_backfill", b"")
            index.set_meta_value("compress_mode", mode)
        if not self.enabled:
            return
        for digest in index.compression_queue():
            self._push(digest)
        cursor = index.meta_value("compress_backfill")
        self.backfill = cursor.decode() if cursor is not None else None

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._cancel.set()
        await cancel_and_wait([self._task])
        self._task = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._frames is not None:
            self._frames.shutdown(wait=False, cancel_futures=True)

    def repair(self) -> None:
        """Finish or undo swaps a crash interrupted (reads only the ``swap:`` intents)."""
        index, files = self.store.index, self.store.files
        for digest in index.pending_swaps():
            rec = index.blob(digest)
            plain, packed = os.path.exists(files.path(digest)), os.path.exists(files.zpath(digest))
            if rec is None:
                files.to_trash(digest)
            elif rec.stored_size != rec.size:  # the index switched to the compressed file
                if packed:
                    files.trash_form(digest, compressed=False)
                elif plain:  # the compressed file's rename was lost: back to plain, and try again later
                    index.set_stored_size(digest, rec.size)
                    index.queue_compression([digest])
            elif plain:  # the index still describes the plain file: the compressed copy goes
                files.trash_form(digest, compressed=True)
            elif packed:  # only the compressed file is left (it was verified before it was renamed in)
                index.set_stored_size(digest, os.path.getsize(files.zpath(digest)))
            log.warning("repaired an interrupted compression swap of %s", digest)
            index.forget_swap(digest)

    # -- queue -----------------------------------------------------------------------------------------------
    def _push(self, digest: str) -> None:
        if digest not in self.queued:
            self.queued.add(digest)
            self.queue.append(digest)

    def enqueue(self, digest: str) -> None:
        """A new blob was stored (its queue key is already in the index)."""
        self.last_activity = time.monotonic()
        if self.enabled:
            self._push(digest)
            self._wake.set()

    def pending(self) -> int:
        return len(self.queue) + (1 if self.busy else 0)

    async def _run(self) -> None:
        while True:
            try:
                if not self.queue and self.backfill is not None:
                    self._backfill_step()
                    await asyncio.sleep(0)
                    continue
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._wait_quiet()
                async with self._lock:
                    if self.queue:
                        await self._process(self.queue.popleft())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("compression at rest failed; continuing with the next blob")
                await asyncio.sleep(1)

    async def _wait_quiet(self) -> None:
        """Let uploads finish first: compressing during an export would take CPU from the builder."""
        deadline = time.monotonic() + MAX_DEFER
        while (now := time.monotonic()) < deadline:
            idle = now - self.last_activity
            if self.store.uploads.count == 0 and idle >= QUIET_SECONDS:
                return
            await asyncio.sleep(min(max(0.05, QUIET_SECONDS - idle), deadline - now))

    async def drain(self) -> int:
        """Compress everything queued (and finish the backfill scan) now, without the quiet period; returns
        the number of blobs looked at. For tests, benchmarks and operators who want the disk back at once."""
        n = 0
        while self.queue or self.backfill is not None:
            if not self.queue:
                self._backfill_step()
                continue
            async with self._lock:
                if self.queue:
                    await self._process(self.queue.popleft())
                    n += 1
        async with self._lock:  # the background worker may still be on its blob
            pass
        return n

    def _backfill_step(self) -> None:
        """Queue the next batch of plain blobs of the one-off scan (keys and cursor in one batch)."""
        assert self.backfill is not None
        batch = self.store.index.blobs_from(self.backfill, BACKFILL_BATCH)
        todo = [d for d, rec in batch if rec.stored_size == rec.size and d not in self.queued]
        done = len(batch) < BACKFILL_BATCH
        self.store.index.queue_compression(todo, backfill_cursor=batch[-1][0] if batch else None,
                                           backfill_done=done)
        for d in todo:
            self._push(d)
        self.backfill = None if done else batch[-1][0]

    # -- one blob ----------------------------------------------------------------------------------------------
    async def _process(self, digest: str) -> Outcome:
        self.queued.discard(digest)
        store = self.store
        index, files, metrics = store.index, store.files, store.metrics
        rec = index.blob(digest)
        if rec is None or rec.stored_size != rec.size:
            index.dequeue_compression(digest)
            return Outcome("gone")
        try:
            fd = files.open(digest)
        except FileNotFoundError:
            index.dequeue_compression(digest)  # missing files are found and dropped where they are served
            return Outcome("gone")
        self.busy = digest
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._pool, self._compress, fd, digest, rec.size)
            if out.result == "compressed":
                assert out.tmp is not None and out.stored_size is not None
                await self._swap(digest, out.tmp, out.stored_size)
            elif out.result == "corrupt":
                index.dequeue_compression(digest)
                files.quarantine(digest)
                store.lose_blob(digest, "corrupt (found while compressing it)")
            else:
                index.dequeue_compression(digest)
        finally:
            self.busy = None
            elapsed = time.perf_counter() - started
            metrics.compression_seconds.inc(elapsed)
        metrics.compression_results.labels(out.result).inc()
        if out.result == "compressed":
            metrics.compression_input_bytes.inc(rec.size)
        log.debug("compression at rest of %s (%s, %d bytes): %s%s in %.3fs", digest, out.kind, rec.size,
                  out.result, f" -> {out.stored_size} bytes" if out.stored_size else "", elapsed)
        return out

    def _compress(self, fd: int, digest: str, size: int) -> Outcome:
        """In a worker thread: decide, compress to a temporary file, fsync it and verify it."""
        tmp = self.store.layout.compressing(digest)
        try:
            kind = sniff(os.pread(fd, 4096, 0))
            if kind in ALREADY_COMPRESSED:
                return Outcome("already_compressed", kind)
            if size < MIN_SIZE:
                return Outcome("small", kind)
            if kind not in ("tar", "json") and size >= SAMPLE_ABOVE and not self._samples_compress(fd, size):
                return Outcome("incompressible", kind)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                zsize = compress_fd(fd, size, out, pool=self._frames, workers=self.workers, level=LEVEL,
                                    give_up_above=int(size * (1 - MIN_SAVING)), cancel=self._cancel)
                if zsize is not None:
                    os.fsync(out)
            finally:
                os.close(out)
            if zsize is None:
                _unlink(tmp)
                return Outcome("no_gain", kind)
            if not self._verify(tmp, digest, size):
                _unlink(tmp)
                plain_ok = _hash_plain(fd, digest)
                log.error("compressed copy of %s did not verify%s", digest,
                          "" if plain_ok else ": the stored file itself is corrupt")
                return Outcome("failed" if plain_ok else "corrupt", kind)
            return Outcome("compressed", kind, zsize, tmp)
        except BaseException:
            _unlink(tmp)
            raise
        finally:
            os.close(fd)

    def _samples_compress(self, fd: int, size: int) -> bool:
        """Does content of unknown kind compress? Three samples (start, middle, end) decide, cheaply."""
        import zstandard

        c = zstandard.ZstdCompressor(level=LEVEL)
        raw = packed = 0
        for at in (0, size // 2, max(0, size - SAMPLE_SIZE)):
            data = os.pread(fd, SAMPLE_SIZE, at)
            raw += len(data)
            packed += len(c.compress(data))
        return packed <= raw * (1 - MIN_SAVING)

    def _verify(self, tmp: str, digest: str, size: int) -> bool:
        """Decompress the copy and hash it: the only proof that it will serve the digest's exact bytes."""
        algorithm, _, hex_digest = digest.partition(":")
        h = hashlib.new(algorithm)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            reader = SeekableReader(fd)
            if reader.size != size:
                return False
            for piece in reader.iter_range(0, size):
                if self._cancel.is_set():
                    raise InterruptedError("compression cancelled")
                h.update(piece)
        except SeekableError:
            return False
        finally:
            os.close(fd)
        return h.hexdigest() == hex_digest

    async def _swap(self, digest: str, tmp: str, zsize: int) -> None:
        """Replace the plain file by the verified compressed one; see the module docstring for the steps."""
        index, files = self.store.index, self.store.files
        loop = asyncio.get_running_loop()

        def still_plain() -> bool:
            rec = index.blob(digest)
            return rec is not None and rec.stored_size == rec.size

        if not still_plain():
            _unlink(tmp)
            index.dequeue_compression(digest)
            return
        index.begin_swap(digest)
        await index.sync()
        self._checkpoint("intent")
        if not still_plain():  # dropped while the intent was made durable
            _unlink(tmp)
            index.dequeue_compression(digest)
            index.forget_swap(digest)
            return
        # No await between the rename and the index change: nothing can interleave with them.
        directory = files.install_compressed(tmp, digest)
        self._checkpoint("renamed")
        index.set_stored_size(digest, zsize)
        self._checkpoint("indexed")
        await asyncio.gather(loop.run_in_executor(None, fsync_dir, directory), index.sync())
        rec = index.blob(digest)
        if rec is not None:  # (dropped meanwhile: both forms went to the trash with it)
            # Normally the plain file goes; if the blob was dropped and pushed again while we waited, the new
            # plain file is what the record describes and the compressed copy goes instead.
            files.trash_form(digest, compressed=rec.stored_size == rec.size)
        self._checkpoint("trashed")
        index.forget_swap(digest)
        log.debug("swapped %s to its compressed form (%d bytes)", digest, zsize)

    def _checkpoint(self, step: str) -> None:
        """A named point of the swap; tests replace this to crash the process exactly there."""

    # -- reporting ---------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        c = self.store.index.counters
        return {"mode": "auto" if self.enabled else "off", "queued": self.pending(), "busy": self.busy,
                "backfill_pending": self.backfill is not None, "compressed_blobs": c["compressed_blobs"],
                "saved_bytes": c["stored_bytes"] - c["disk_bytes"]}


def repository_figures(store: Store, repos: list[tuple[str, int]] | None = None,
                       limit: int = 20) -> list[dict[str, Any]]:
    """The largest repositories with logical bytes, bytes on disk and bytes saved by compression at rest.

    Logical usage is kept per repository by the index, and saved bytes too (``saved:<repo>``), so this reads the
    repository list (``repos``: already sorted by size, if the caller has it), never the blobs."""
    saved = store.index.repo_saved()
    if repos is None:
        repos = sorted(store.index.repo_usages(), key=lambda ru: ru[1], reverse=True)
    return [{"name": r, "bytes": u, "disk_bytes": u - saved.get(r, 0), "saved_bytes": saved.get(r, 0)}
            for r, u in repos[:limit]]


def refresh_gauges(store: Store) -> None:
    """Before a ``/metrics`` scrape: compression gauges, and per-repository figures for the largest 20."""
    m, c = store.metrics, store.index.counters
    m.compressed_blobs.set(c["compressed_blobs"])
    m.compression_saved_bytes.set(c["stored_bytes"] - c["disk_bytes"])
    m.compression_queue.set(store.compressor.pending())
    m.repository_bytes.clear()
    for row in repository_figures(store):
        m.repository_bytes.labels(row["name"], "logical").set(row["bytes"])
        m.repository_bytes.labels(row["name"], "disk").set(row["disk_bytes"])
        m.repository_bytes.labels(row["name"], "saved").set(row["saved_bytes"])


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _hash_plain(fd: int, digest: str) -> bool:
    algorithm, _, hex_digest = digest.partition(":")
    h = hashlib.new(algorithm)
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest() == hex_digest


def hash_blob(files: Any, digest: str, update: Callable[[bytes | memoryview], object]) -> bool:
    """Feed a stored blob's content (decompressed if it is compressed at rest) to ``update``; False when no file
    is there. Raises :class:`SeekableError` for a damaged compressed file. For fsck."""
    try:
        fd, compressed = files.open_any(digest)
    except FileNotFoundError:
        return False
    try:
        if compressed:
            reader = SeekableReader(fd)
            for piece in reader.iter_range(0, reader.size):
                update(piece)
        else:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                update(chunk)
                offset += len(chunk)
    finally:
        os.close(fd)
    return True
