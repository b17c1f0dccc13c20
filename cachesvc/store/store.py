"""The store the HTTP handlers talk to: blobs, upload sessions and manifests over one index and one blob tree.

It owns the order of operations that keeps a blob or manifest either complete and verified or invisible:
files are written and fsynced before they are renamed in, the index learns of them only after the rename, and
an answer goes out only once the index change is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cachesvc.api.errors import RegistryError, for_each
from cachesvc.api.names import Digest
from cachesvc.metrics import Metrics
from cachesvc.settings import Settings
from cachesvc.store.blobs import AppendFile, BlobFiles, fsync_dir, hash_file, storage_error
from cachesvc.store.compression import Compressor
from cachesvc.store.eviction import Evictor
from cachesvc.store.index import Index, Removed
from cachesvc.store.layout import Layout
from cachesvc.store.manifests import BUILDKIT_CACHE_CONFIG, ParsedManifest, parse_manifest
from cachesvc.store.recency import Recency
from cachesvc.store.reclaim import Reclaimer
from cachesvc.store.records import ManifestRecord
from cachesvc.store.uploads import Session, UploadSessions
from cachesvc.tasks import cancel_and_wait

log = logging.getLogger("cachesvc.store")

WHOLE_CHECK_INTERVAL = 10.0  # seconds between checks that a served manifest's blob files all exist
BUILDKIT_IMPORT_LIMIT = 1024 * 1024  # BuildKit refuses to import a cache manifest or config larger than this


class OpenedBlob(NamedTuple):
    """A blob opened for serving: ``size`` is the blob's size; with ``compressed`` the fd is its seekable zstd
    form (serve it decompressed), otherwise the plain file (serve it with sendfile)."""

    fd: int
    size: int
    compressed: bool = False


@dataclass(slots=True)
class StoredManifest:
    digest: str
    media_type: str
    body: bytes


class Store:
    """One data directory, opened: every durable operation the registry API needs."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.layout = Layout(settings.root)
        self.grace_ms = int(settings.upload_grace * 1000)
        self._tasks: list[asyncio.Task[None]] = []
        self._verified: dict[tuple[str, str], float] = {}
        # Shared tier (cachesvc/remote/writeback.py), set with --remote: told of each blob and manifest a client
        # stores, to queue its upload. None otherwise.
        self.write_behind: Any = None
        self.opened = False

    # -- life cycle ---------------------------------------------------------------------------------------
    def open(self) -> None:
        self.layout.create()
        self.index = Index(self.layout.index, clock=self.clock)
        self.files = BlobFiles(self.layout)
        self.uploads = UploadSessions(self.index, self.layout, clock=self.clock,
                                      max_sessions=self.settings.max_upload_sessions,
                                      timeout=self.settings.upload_timeout)
        self.recency = Recency(self.index, grace_ms=self.grace_ms, clock=self.clock)
        self.reclaimer = Reclaimer(self.files, self.index.forget_unlink)
        self.evictor = Evictor(self.settings, self.index, self.reclaimer, self.recency, self.metrics,
                               clock=self.clock, root=str(self.layout.root), follow_dir=self.layout.follower)
        self.compressor = Compressor(self, enabled=self.settings.compress_at_rest == "auto")
        self._repair()
        self.compressor.open()
        self.opened = True

    def _repair(self) -> None:
        """Finish or undo what a crash interrupted. Reads only the intent records and ``uploads/``: the cost
        depends on what was in flight, never on how much is stored."""
        for digest in self.index.pending_commits():
            if self.index.blob(digest) is None and self.files.to_trash(digest):
                log.warning("removed %s: renamed in but never indexed before a crash", digest)
            self.index.forget_commit(digest)
        # Files of dropped blobs not yet removed: the reclaimer finishes them, unless the digest was stored again.
        unlinks = self.index.pending_unlinks()
        stored_again = [d for d in unlinks if self.index.blob(d) is not None]
        self.reclaimer.discard(set(unlinks).difference(stored_again))
        self.index.forget_unlink(stored_again)
        self.uploads.repair()

    async def start(self) -> None:
        """Start background work (needs a running loop)."""
        if not self.opened:
            self.open()
        self.recency.start()
        loop = asyncio.get_running_loop()
        self.reclaimer.start(loop)
        self.evictor.start()
        self.compressor.start()
        self._tasks.append(loop.create_task(self._housekeeping()))
        await loop.run_in_executor(None, self.files.empty_trash)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.opened:
            await self.evictor.stop()
            await self.compressor.stop()
            await self.recency.stop()
            await self.reclaimer.stop()
            for session in list(self.uploads.live.values()):
                if session.file is not None:
                    session.file.close()
                    session.file = None
            self.index.close()
            self.opened = False

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(30)
            try:
                n = self.uploads.expire()
                if n:
                    log.info("dropped %d idle upload sessions", n)
                await loop.run_in_executor(None, self.files.empty_trash)
            except Exception:
                log.exception("housekeeping failed")

    # -- blobs --------------------------------------------------------------------------------------------
    def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of a blob visible in ``repo`` (HEAD). Answering leases the blob for the manifest to come."""
        size = self.index.linked_size(digest, repo)
        if size is not None:
            self.recency.lease_blob(digest)
        return size

    def open_blob(self, repo: str, digest: str) -> OpenedBlob | None:
        """``(fd, size, compressed)`` for serving a blob visible in ``repo``; the caller closes the fd.

        A blob the index knows but whose file is gone is dropped with every manifest that needs it, so clients
        get a clean miss instead of a manifest whose layers cannot be fetched.
        """
        size = self.index.linked_size(digest, repo)
        if size is None:
            return None
        try:
            fd, compressed = self.files.open_any(digest)
        except FileNotFoundError:
            self.lose_blob(digest, "file missing")
            return None
        self.recency.lease_blob(digest)
        return OpenedBlob(fd, size, compressed)

    def lose_blob(self, digest: str, why: str) -> Removed:
        removed = self.index.drop_blob(digest)
        self.metrics.lost_blobs.inc()
        log.error("blob %s %s: dropped it and %d manifest(s) that needed it: %s", digest, why,
                  len(removed.manifests), ", ".join(f"{r}@{d}" for r, d, _ in removed.manifests) or "-")
        self._after_removal(removed)
        return removed

    def _after_removal(self, removed: Removed) -> None:
        """Hand dropped blobs' files to the reclaimer (their deletion intents are in the index already)."""
        self.reclaimer.discard(d for d, _ in removed.blobs)

    def check_fits(self, size: int | None) -> None:
        """Refuse at once an upload that could never fit the budget, before reading a byte of it."""
        budget = self.settings.max_size
        if budget and size is not None and size > budget:
            raise RegistryError("STORAGE_FULL", {"reason": f"{size} bytes is more than the whole budget ({budget})"})

    async def write_blob(self, repo: str, digest: Digest, chunks: AsyncIterator[bytes],
                         expected: int | None) -> int:
        """Monolithic upload (POST or PUT with the whole body): stream, verify, install."""
        self.check_fits(expected)
        if expected and not await self.evictor.make_room(expected):
            raise RegistryError("STORAGE_FULL", {"reason": f"no room for {expected} bytes even after eviction"})
        session = self.uploads.open(repo)
        async with session.lock:
            try:
                await self.uploads.append(session, chunks, expected)
                return await self._finish(session, digest)
            except BaseException:
                self.uploads.close(session, remove_file=True)
                raise

    async def append_upload(self, session: Session, chunks: AsyncIterator[bytes], start: int | None,
                            expected: int | None) -> int:
        """PATCH: one chunk in order. ``start`` is the Content-Range start, checked against the offset."""
        if start is not None and start != session.record.offset:
            raise RegistryError("RANGE_INVALID", {"reason": f"chunk starts at {start}, upload is at "
                                                  f"{session.record.offset}"}, status=416)
        if expected is not None:
            self.check_fits(session.record.offset + expected)
        offset = await self.uploads.append(session, chunks, expected)
        if self.settings.max_size and offset > self.settings.max_size:
            self.uploads.close(session, remove_file=True)
            self.check_fits(offset)
        return offset

    async def finish_upload(self, session: Session, digest: Digest, chunks: AsyncIterator[bytes] | None,
                            start: int | None, expected: int | None) -> int:
        """PUT ?digest=: append the final chunk if any, verify the whole upload, install it."""
        if chunks is not None:
            await self.append_upload(session, chunks, start, expected)
        try:
            return await self._finish(session, digest)
        except RegistryError as e:
            if e.code in ("DIGEST_INVALID", "STORAGE_FULL", "UNKNOWN"):
                self.uploads.close(session, remove_file=True)
            raise

    async def _finish(self, session: Session, digest: Digest) -> int:
        loop = asyncio.get_running_loop()
        path = self.uploads.path(session.id)
        file = session.file
        if file is not None and file.hasher is not None and file.hasher.name == digest.algorithm:
            actual, size = file.hasher.hexdigest(), file.offset
        else:
            actual, size = await loop.run_in_executor(None, hash_file, path, digest.algorithm)
        if actual != digest.hex:
            raise RegistryError("DIGEST_INVALID", {"expected": str(digest), "actual": f"{digest.algorithm}:{actual}"})
        try:
            if file is None:
                file = AppendFile(path, size)
            await loop.run_in_executor(None, file.fsync)
            file.close()
            session.file = None
            await self._install(session.record.repo, str(digest), path, size)
        except OSError as e:
            self.evictor.wake.set()
            raise storage_error(e, "storing the blob") from None
        self.uploads.close(session, remove_file=False)
        self.metrics.bytes_received.inc(size)
        if self.write_behind is not None:
            self.write_behind.blob_stored(session.record.repo, str(digest), size)
        return size

    async def install_fetched(self, repo: str, digest: str, path: str, size: int) -> None:
        """Install a blob fetched from the shared tier (cachesvc/remote/fetch.py) through the upload path: the
        caller wrote ``path`` under uploads/, verified its digest and fsynced it."""
        try:
            await self._install(repo, digest, path, size)
        except OSError as e:
            self.evictor.wake.set()
            raise storage_error(e, "storing the blob") from None

    async def _install(self, repo: str, digest: str, path: str, size: int) -> None:
        """Put a verified, fsynced file in place and index it; dedups against a blob already held."""
        existing = self.index.blob(digest)
        if existing is not None and not self.files.exists(digest):
            self.lose_blob(digest, "file missing")
            existing = None
        if existing is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.index.add_blob(digest, size, repo, self.grace_ms)
            await self.index.sync()
            return
        if not await self.evictor.make_room(size):
            raise RegistryError("STORAGE_FULL", {"reason": f"no room for {size} bytes even after eviction"})
        if self.index.blob(digest) is not None:  # stored meanwhile by a concurrent upload
            await self._install(repo, digest, path, size)
            return
        # No await between these three steps: nothing can interleave with the rename.
        self.index.begin_commit(digest)
        self.reclaimer.settle(digest)  # an old file of this digest still waiting for deletion goes first
        directory = self.files.install(path, digest)
        if self.index.add_blob(digest, size, repo, self.grace_ms, compress=self.compressor.enabled):
            self.compressor.enqueue(digest)
        self.evictor.poke()
        loop = asyncio.get_running_loop()
        await asyncio.gather(loop.run_in_executor(None, fsync_dir, directory), self.index.sync())

    def mount(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: only from a repository the blob is visible in."""
        if self.index.linked_size(digest, from_repo) is None:
            return False
        if not self.files.exists(digest):
            self.lose_blob(digest, "file missing")
            return False
        return self.index.link_blob(digest, repo, self.grace_ms)

    def delete_blob(self, repo: str, digest: str) -> bool:
        removed = self.index.unlink_blob(digest, repo)
        if removed is None:
            return False
        self._after_removal(removed)
        return True

    # -- manifests ----------------------------------------------------------------------------------------
    def resolve(self, repo: str, tag: str | None, digest: Digest | None) -> str | None:
        if digest is not None:
            return str(digest)
        assert tag is not None
        return self.index.tag(repo, tag)

    def manifest_head(self, repo: str, digest: str) -> tuple[str, int] | None:
        rec = self.index.manifest(repo, digest)
        if rec is None or not self._whole(repo, digest, rec):
            return None
        self.recency.touch_manifest(repo, digest)
        return rec.media_type, rec.size

    def _whole(self, repo: str, digest: str, rec: ManifestRecord) -> bool:
        """Check (at most every few seconds per manifest) that every blob it needs still has its file, so a
        client is never handed a manifest whose layers 404 half-way through a build."""
        now = self.clock()
        key = (repo, digest)
        if now - self._verified.get(key, -1e18) < WHOLE_CHECK_INTERVAL:
            return True
        for blob in rec.blobs:
            if not self.files.exists(blob):
                self.lose_blob(blob, "file missing")
                return False
        if len(self._verified) > 100_000:
            self._verified.clear()
        self._verified[key] = now
        return True

    def get_manifest(self, repo: str, digest: str) -> StoredManifest | None:
        rec = self.index.manifest(repo, digest)
        if rec is None or not self._whole(repo, digest, rec):
            return None
        body = self.index.body(repo, digest)
        if body is None:  # pragma: no cover - written in one batch with the record
            return None
        self.recency.touch_manifest(repo, digest)
        return StoredManifest(digest, rec.media_type, body)

    async def put_manifest(self, repo: str, tag: str | None, ref_digest: Digest | None, body: bytes,
                           content_type: str | None) -> tuple[str, ParsedManifest]:
        parsed = parse_manifest(body, content_type)
        algorithm = ref_digest.algorithm if ref_digest else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if ref_digest is not None and str(ref_digest) != digest:
            raise RegistryError("DIGEST_INVALID", {"expected": str(ref_digest), "actual": digest})
        missing = [{"digest": b} for b in dict.fromkeys(parsed.blobs) if self.index.linked_size(b, repo) is None]
        missing += [{"digest": c} for c in dict.fromkeys(parsed.children) if self.index.manifest(repo, c) is None]
        if missing:
            raise for_each("MANIFEST_BLOB_UNKNOWN", missing, status=400)
        now = self.index.now_ms()
        rec = ManifestRecord(media_type=parsed.media_type, size=len(body), created=now, last_used=now,
                             blobs=list(dict.fromkeys(parsed.blobs)), children=list(dict.fromkeys(parsed.children)),
                             artifact_type=parsed.artifact_type, subject=parsed.subject)
        referrer = parsed.referrer_descriptor(digest, len(body)) if parsed.subject else None
        self.index.put_manifest(repo, digest, rec, body, tag, referrer)
        if self.write_behind is not None:  # queued in the same WAL sync as the manifest itself
            self.write_behind.manifest_stored(repo, digest, tag, rec)
        self.evictor.poke()
        self._warn_oversized_cache(repo, tag or digest, parsed, len(body))
        self.metrics.bytes_received.inc(len(body))
        await self.index.sync()
        return digest, parsed

    def _warn_oversized_cache(self, repo: str, ref: str, parsed: ParsedManifest, size: int) -> None:
        if parsed.config_media_type != BUILDKIT_CACHE_CONFIG:
            return
        if size > BUILDKIT_IMPORT_LIMIT:
            self.metrics.oversized_cache.labels("manifest").inc()
            log.warning("cache manifest %s:%s is %d bytes, over BuildKit's 1 MiB import limit: BuildKit will "
                        "ignore this cache and build cold", repo, ref, size)
        if parsed.config_size > BUILDKIT_IMPORT_LIMIT:
            self.metrics.oversized_cache.labels("config").inc()
            log.warning("cache config %s of %s:%s is %d bytes, over BuildKit's 1 MiB import limit: BuildKit "
                        "will ignore this cache and build cold", parsed.config_digest, repo, ref,
                        parsed.config_size)

    def delete_manifest(self, repo: str, tag: str | None, digest: Digest | None) -> bool:
        if tag is not None:
            return self.index.delete_tag(repo, tag)
        assert digest is not None
        removed = self.index.delete_manifest(repo, str(digest))
        if removed is None:
            return False
        self._after_removal(removed)
        return True
