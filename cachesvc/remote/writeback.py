"""Write-behind: what clients store locally is uploaded to the shared tier in the background, in order.

The queue is the ``remote_queue`` column family (key: 8-byte big-endian sequence number; value: the JSON of an
:class:`Entry`), so a restart resumes where it stopped. Entries are written when the local store has the blob or
manifest; the store's own answer does not wait for the upload, and nothing here ever fails a client request.

Invariants kept towards the shared tier:

* a blob is uploaded only after its bytes were re-hashed and matched its digest (a multipart upload whose last
  part would not match is aborted, so it never becomes visible);
* a manifest is uploaded only once every blob (and, for an index, every child manifest) it references is
  confirmed present remotely, uploading any that are missing first; blobs that were already there are checked
  again after the manifest went up, so a concurrent ``remote-gc`` cannot leave it dangling;
* a tag is last-writer-wins by push time: a tag object is only replaced by a push at least as recent.

Workers take entries in sequence order. Any failure to reach the object store pauses the whole queue with
exponential backoff (0.5 s doubling to 15 s) and the entry is retried; an entry whose local content is gone
(evicted, deleted) is dropped with a warning.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cachesvc.remote import keys
from cachesvc.remote.objects import MULTIPART_THRESHOLD, RemoteUnavailable
from cachesvc.store.records import ManifestRecord
from cachesvc.tasks import cancel_and_wait

if TYPE_CHECKING:
    from cachesvc.remote.tier import RemoteTier

log = logging.getLogger("cachesvc.remote")

QUEUE_CF = "remote_queue"
_SEQ = struct.Struct(">Q")
READ_CHUNK = 1024 * 1024
CONFIRM_TTL = 60.0  # seconds a blob or manifest confirmed remote is trusted without asking again
MAX_BACKOFF = 15.0

#: Set while the tier itself stores something it fetched from the shared tier: that must not be queued back.
FROM_REMOTE: contextvars.ContextVar[bool] = contextvars.ContextVar("cachesvc_from_remote", default=False)


class Permanent(Exception):
    """The entry can never be uploaded (its local content is gone or corrupt): it is dropped."""


@dataclass(slots=True)
class Entry:
    kind: str  # "blob" or "manifest"
    repo: str
    digest: str
    size: int = 0
    tag: str | None = None
    pushed_at: int = 0  # ms: the local push, for last-writer-wins tags
    enqueued: int = 0  # ms

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        return cls(**json.loads(data))


class WriteBehind:
    """The persisted upload queue and its workers."""

    def __init__(self, tier: RemoteTier, concurrency: int) -> None:
        self.tier = tier
        self.store = tier.store
        self.remote = tier.remote
        self.metrics = tier.metrics
        self.concurrency = concurrency
        self.entries: dict[int, Entry] = {}  # in sequence order
        self.active: set[int] = set()
        self._seq = 0
        self._changed = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._confirmed: dict[str, float] = {}  # remote key -> monotonic time it was confirmed present
        self._inflight: dict[str, asyncio.Future[None]] = {}  # remote key -> its upload (one at a time)
        self.paused_until = 0.0
        self.backoff = 0.0
        self.last_error = ""
        self._warned = -1e18
        self.uploaded = 0
        self.dropped = 0

    # -- the queue -----------------------------------------------------------------------------------------
    def open(self) -> None:
        """Load what is still queued (the queue is the work in flight, so its size is bounded by the backlog)."""
        for key, value in self.store.index.scan(QUEUE_CF):
            seq = _SEQ.unpack(key)[0]
            try:
                self.entries[seq] = Entry.decode(value)
            except (ValueError, TypeError) as e:
                log.warning("dropping unreadable write-behind entry %d: %s", seq, e)
                self._delete(seq)
            self._seq = seq + 1
        if self.entries:
            log.info("write-behind: resuming %d queued upload(s) to %s", len(self.entries), self.remote.url)

    def _put(self, entry: Entry) -> None:
        seq = self._seq
        self._seq += 1
        m = self.store.index.mutation()
        m.put(QUEUE_CF, _SEQ.pack(seq), entry.encode())
        self.store.index.write(m)
        self.entries[seq] = entry
        self._wake()

    def _delete(self, seq: int) -> None:
        m = self.store.index.mutation()
        m.delete(QUEUE_CF, _SEQ.pack(seq))
        self.store.index.write(m)
        self.entries.pop(seq, None)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def depth(self) -> int:
        return len(self.entries)

    def lag(self) -> float:
        """Seconds the oldest queued entry has waited (0 when the queue is empty)."""
        for entry in self.entries.values():
            return max(0.0, time.time() - entry.enqueued / 1000)
        return 0.0

    # -- hooks called by the store (synchronously, right after the local write) ------------------------------
    def blob_stored(self, repo: str, digest: str, size: int) -> None:
        if FROM_REMOTE.get():
            return
        self._put(Entry("blob", repo, digest, size, enqueued=int(time.time() * 1000)))

    def manifest_stored(self, repo: str, digest: str, tag: str | None, rec: ManifestRecord) -> None:
        if FROM_REMOTE.get():
            return
        now = int(time.time() * 1000)  # wall time: pushes are ordered across builders by it (last writer wins)
        self._put(Entry("manifest", repo, digest, rec.size, tag=tag, pushed_at=now, enqueued=now))

    # -- workers -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        await cancel_and_wait(self._workers)
        self._workers.clear()

    def _take(self) -> int | None:
        for seq in self.entries:
            if seq not in self.active:
                return seq
        return None

    async def _worker(self) -> None:
        while True:
            now = time.monotonic()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            seq = self._take()
            if seq is None:
                await self._changed.wait()
                continue
            entry = self.entries[seq]
            self.active.add(seq)
            try:
                await self._process(entry)
            except RemoteUnavailable as e:
                self._failed(entry, str(e))
            except Permanent as e:
                log.warning("write-behind: dropping %s %s@%s: %s", entry.kind, entry.repo, entry.digest, e)
                self.metrics.remote_uploads.labels(entry.kind, "dropped").inc()
                self.dropped += 1
                self._delete(seq)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or an unexpected local error: keep the entry, retry later
                log.exception("write-behind: %s %s@%s failed", entry.kind, entry.repo, entry.digest)
                self._failed(entry, f"{type(e).__name__}: {e}")
            else:
                if self.backoff:
                    log.info("write-behind: uploading again; %d queued", len(self.entries) - 1)
                self.backoff = 0.0
                self.metrics.remote_uploads.labels(entry.kind, "ok").inc()
                self.uploaded += 1
                self._delete(seq)
            finally:
                self.active.discard(seq)
                self._wake()

    def _failed(self, entry: Entry, error: str) -> None:
        self.metrics.remote_uploads.labels(entry.kind, "retry").inc()
        first = self.backoff == 0.0
        self.backoff = min(MAX_BACKOFF, max(0.5, self.backoff * 2))
        self.paused_until = max(self.paused_until, time.monotonic() + self.backoff)
        now = time.monotonic()
        # One warning when uploads start failing, then one a minute while they keep failing.
        level = logging.WARNING if first or now - self._warned >= 60.0 else logging.DEBUG
        if level == logging.WARNING:
            self._warned = now
        log.log(level, "write-behind: %s %s@%s not uploaded (%s); retrying in %.1fs, %d queued", entry.kind,
                entry.repo, entry.digest, error, self.backoff, len(self.entries))
        self.last_error = error

    async def _process(self, entry: Entry) -> None:
        if entry.kind == "blob":
            await self.ensure_blob(entry.digest)
            return
        index = self.store.index
        rec = index.manifest(entry.repo, entry.digest)
        if rec is None:
            raise Permanent("the manifest is no longer stored locally")
        await self.ensure_manifest(entry.repo, entry.digest, rec)
        if entry.tag:
            await self._put_tag(entry.repo, entry.tag, entry.digest, entry.pushed_at, rec.media_type)
        self.tier.markers.note(entry.repo, entry.digest)

    # -- making sure something is in the shared tier -------------------------------------------------------------
    def _fresh(self, key: str) -> bool:
        at = self._confirmed.get(key)
        return at is not None and time.monotonic() - at < CONFIRM_TTL

    def _confirm(self, key: str) -> None:
        if len(self._confirmed) > 200_000:
            self._confirmed.clear()
        self._confirmed[key] = time.monotonic()

    async def _once(self, key: str, work: Any) -> bool:
        """Run ``work`` (a coroutine function) for ``key`` unless it was confirmed recently; concurrent callers
        for the same key share one run. Returns whether the object was already there."""
        if self._fresh(key):
            return True
        running = self._inflight.get(key)
        if running is not None:
            await asyncio.shield(running)
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            existed = await work()
            self._confirm(key)
            fut.set_result(None)
            return bool(existed)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else RemoteUnavailable("cancelled"))
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(key, None)

    async def ensure_blob(self, digest: str) -> bool:
        """Make sure the shared tier holds this blob; returns whether it was there already."""
        key = keys.blob(digest)

        async def work() -> bool:
            if await self.remote.head(key) is not None:
                return True
            await self._upload_blob(digest, key)
            return False

        return await self._once(key, work)

    async def ensure_manifest(self, repo: str, digest: str, rec: ManifestRecord, depth: int = 0) -> None:
        """Blobs and child manifests first, then the manifest; then re-check blobs that pre-existed."""
        key = keys.manifest(repo, digest)
        if self._fresh(key):
            return
        existed = await self._gather([self.ensure_blob(b) for b in rec.blobs])
        for child in rec.children:
            crec = self.store.index.manifest(repo, child)
            if crec is None:
                if await self.remote.head(keys.manifest(repo, child)) is None:
                    raise Permanent(f"child manifest {child} is neither stored locally nor in the shared tier")
                continue
            if depth > 8:
                raise Permanent("index nesting too deep")
            await self.ensure_manifest(repo, child, crec, depth + 1)
        body = self.store.index.body(repo, digest)
        if body is None:
            raise Permanent("the manifest is no longer stored locally")

        async def work() -> bool:
            if await self.remote.head(key) is not None:
                return True
            await self.remote.put(key, body, content_type=rec.media_type)
            return False

        await self._once(key, work)
        # Blobs that were already remote may have been collected by remote-gc meanwhile: check them once more.
        again = [b for b, was in zip(rec.blobs, existed, strict=True) if was]
        if again:
            for b in again:
                self._confirmed.pop(keys.blob(b), None)
            await self._gather([self.ensure_blob(b) for b in again])

    async def _gather(self, aws: list[Any], limit: int = 16) -> list[bool]:
        sem = asyncio.Semaphore(limit)

        async def one(aw: Any) -> bool:
            async with sem:
                return bool(await aw)

        return list(await asyncio.gather(*(one(aw) for aw in aws)))

    async def _put_tag(self, repo: str, tag: str, digest: str, pushed_at: int, media_type: str) -> None:
        key = keys.tag(repo, tag)
        got = await self.remote.get(key)
        if got is not None:
            current = keys.TagRecord.decode(got[0])
            if current is not None and current.pushed_at >= pushed_at:
                if current.digest != digest:
                    log.info("write-behind: %s:%s not moved to %s: a later push (%s) is already in the shared tier",
                             repo, tag, digest, current.digest)
                    self.metrics.remote_uploads.labels("tag", "superseded").inc()
                return
        await self.remote.put(key, keys.TagRecord(digest, pushed_at, media_type).encode(),
                              content_type="application/json")

    # -- reading the local blob, verified --------------------------------------------------------------------------
    async def _upload_blob(self, digest: str, key: str) -> None:
        rec = self.store.index.blob(digest)
        if rec is None:
            raise Permanent("the blob is no longer stored locally")
        reader = LocalBlob(self.store, digest, rec.size)
        loop = asyncio.get_running_loop()
        if rec.size <= MULTIPART_THRESHOLD:
            data = await loop.run_in_executor(None, reader.read_all)
            await self.remote.put(key, data)
            return
        try:
            await self.remote.put_stream(key, reader.chunks(), rec.size)
        except RemoteUnavailable:
            if reader.error is not None:
                raise Permanent(reader.error) from None
            raise
        if reader.error is not None:  # pragma: no cover - the failing iterator makes the upload fail first
            raise Permanent(reader.error)


class LocalBlob:
    """A stored blob's original bytes (decompressed if compressed at rest), re-hashed while read: a blob that no
    longer matches its digest is never uploaded."""

    def __init__(self, store: Any, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.error: str | None = None

    def _pieces(self) -> Any:
        try:
            fd, compressed = self.store.files.open_any(self.digest)
        except FileNotFoundError:
            raise Permanent("the blob file is gone") from None
        try:
            if compressed:
                from cachesvc.store.seekable import SeekableReader

                for piece in SeekableReader(fd).iter_range(0, self.size):
                    yield bytes(piece)
                return
            offset = 0
            while True:
                data = os.pread(fd, READ_CHUNK, offset)
                if not data:
                    return
                offset += len(data)
                yield data
        finally:
            os.close(fd)

    def _check(self, hasher: Any, n: int) -> None:
        actual = f"{hasher.name}:{hasher.hexdigest()}"
        if n != self.size or actual != self.digest:
            self.error = f"local blob is corrupt ({n} bytes, {actual}); not uploading it"
            raise Permanent(self.error)

    def read_all(self) -> bytes:
        hasher = hashlib.new(self.digest.partition(":")[0])
        data = b"".join(self._pieces())
        hasher.update(data)
        self._check(hasher, len(data))
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """Chunks read (and hashed) in a worker thread; the last one is held back until the digest matched."""
        loop = asyncio.get_running_loop()
        hasher = hashlib.new(self.digest.partition(":")[0])
        pieces = self._pieces()
        n = 0

        def step() -> bytes | None:
            piece = next(pieces, None)
            if piece is not None:
                hasher.update(piece)
            return piece

        held: bytes | None = None
        try:
            while True:
                piece = await loop.run_in_executor(None, step)
                if piece is None:
                    break
                n += len(piece)
                if held is not None:
                    yield held
                held = piece
            self._check(hasher, n)
        except Permanent as e:
            self.error = self.error or str(e)
            raise
        finally:
            pieces.close()
        if held is not None:
            yield held
