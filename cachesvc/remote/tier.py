"""The shared tier as the HTTP handlers and the store see it: read-through on local misses, write-behind of what
clients store, use markers, prefetch.

The handlers call in here only on a local miss (their hit paths are unchanged); everything bounded by
``--remote-timeout`` so an unreachable object store makes a miss a quick 404. See the package docstring for the
object layout and the guarantees.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest, parse_reference
from cachesvc.remote import keys
from cachesvc.remote.fetch import BlobFetch, FetchFailed, FetchResponse
from cachesvc.remote.objects import Remote, RemoteUnavailable
from cachesvc.remote.writeback import FROM_REMOTE, WriteBehind
from cachesvc.store.manifests import ParsedManifest, parse_manifest
from cachesvc.tasks import cancel_and_wait

if TYPE_CHECKING:
    from cachesvc.api.context import Registry
    from cachesvc.metrics import Metrics
    from cachesvc.settings import Settings
    from cachesvc.store.store import Store, StoredManifest

log = logging.getLogger("cachesvc.remote")

MANIFEST_CACHE_SECONDS = 30.0  # a verified remote manifest is answered from memory this long
MANIFEST_CACHE_ENTRIES = 512
MANIFEST_CACHE_BYTES = 32 * 1024 * 1024  # and at most this many bytes of manifest bodies
TAG_CACHE_SECONDS = 2.0  # a remote tag resolution is reused this long (HEAD then GET by BuildKit)
MAX_DEPTH = 4  # index nesting followed when checking a remote manifest is whole


@dataclass
class RemoteManifest:
    """A manifest read from the shared tier, verified, whose blobs and children are all available."""

    repo: str
    digest: str
    media_type: str
    body: bytes
    parsed: ParsedManifest
    children: dict[str, RemoteManifest | None] = field(default_factory=dict)  # None: the child is local

    def all_blobs(self) -> list[str]:
        out = list(self.parsed.blobs)
        for child in self.children.values():
            if child is not None:
                out += child.all_blobs()
        return list(dict.fromkeys(out))


class RemoteTier:
    """One process's view of the shared tier (``--remote``)."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, remote: Remote | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.remote = remote or Remote(settings.remote, endpoint=settings.remote_endpoint,
                                       region=settings.remote_region, timeout=settings.remote_timeout,
                                       on_bytes=self._bytes)
        if remote is not None and remote.on_bytes is None:
            remote.on_bytes = self._bytes
        self.read_only = settings.remote_mode == "read-only"
        self.timeout = settings.remote_timeout
        self.writeback: WriteBehind | None = None if self.read_only else WriteBehind(self,
                                                                                   settings.remote_concurrency)
        self.markers = Markers(self, settings.remote_touch_interval)
        from cachesvc.remote.prefetch import Prefetcher

        self.prefetcher = Prefetcher(self)
        self.fetches: dict[str, BlobFetch] = {}
        self.fetch_slots = asyncio.Semaphore(max(4, 2 * settings.remote_concurrency))
        self._manifests: dict[tuple[str, str], asyncio.Future[RemoteManifest | None]] = {}
        self._manifest_cache: collections.OrderedDict[tuple[str, str], tuple[float, RemoteManifest]] = \
            collections.OrderedDict()
        self._manifest_cache_bytes = 0
        self._tags: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._materializing: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False

    # -- life cycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Hook into the store and start background work; an unreachable object store is logged, not fatal."""
        self.store.write_behind = self.writeback
        self.store.recency.on_flush = self.markers.note_many
        self.metrics.remote_queue_depth.set_function(lambda: self.writeback.depth if self.writeback else 0)
        self.metrics.remote_queue_lag.set_function(lambda: self.writeback.lag() if self.writeback else 0.0)
        if self.writeback is not None:
            self.writeback.open()
            self.writeback.start()
        self.markers.start()
        self.started = True
        self.spawn(self._probe())
        if self.settings.prefetch:
            self.spawn(self.prefetcher.prefetch_patterns(list(self.settings.prefetch)))

    async def close(self) -> None:
        self.started = False
        if self.writeback is not None:
            await self.writeback.stop()
        await self.markers.stop()
        tasks = list(self._tasks) + [f.task for f in self.fetches.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.store.write_behind = None
        self.store.recency.on_flush = None
        # obstore's I/O threads may still be waking the loop for what was just cancelled: let them finish while
        # it runs (a thread reaching for the GIL once the interpreter is finalizing aborts the process).
        await asyncio.sleep(0.05)

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _probe(self) -> None:
        try:
            await self.remote.head(keys.TAGS + ".probe")
        except RemoteUnavailable as e:
            log.warning("shared tier %s not reachable at start (%s): local hits are served, misses are 404 "
                        "until it is", self.remote.url, e)
        else:
            log.info("shared tier %s (%s, endpoint %s)", self.remote.url, self.settings.remote_mode,
                     self.remote.endpoint or "AWS")

    def _bytes(self, direction: str, n: int) -> None:
        self.metrics.remote_bytes.labels(direction).inc(n)

    # -- blobs ---------------------------------------------------------------------------------------------------
    def link_local(self, repo: str, digest: str) -> bool:
        """A blob stored locally but not yet visible in ``repo`` (the shared tier's blobs are global): link it."""
        if self.store.index.blob(digest) is None or not self.store.files.exists(digest):
            return False
        return self.store.index.link_blob(digest, repo, self.store.grace_ms)

    def fetch(self, repo: str, digest: str, *, background: bool = False) -> BlobFetch:
        """The fetch of ``digest`` in progress, or a new one (concurrent misses share one transfer)."""
        running = self.fetches.get(digest)
        if running is not None:
            if repo not in running.repos:
                running.repos.append(repo)
            if not background:
                running.urgent.set()
            return running
        fetch = BlobFetch(self, digest, repo)
        if not background:
            fetch.urgent.set()
        self.fetches[digest] = fetch
        fetch.task = asyncio.get_running_loop().create_task(self._run_fetch(fetch))
        return fetch

    async def _run_fetch(self, fetch: BlobFetch) -> None:
        """Background fetches take one of a bounded number of slots; a client waiting on one jumps the line."""
        acquire = asyncio.ensure_future(self.fetch_slots.acquire())
        urgent = asyncio.ensure_future(fetch.urgent.wait())
        try:
            await asyncio.wait({acquire, urgent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            urgent.cancel()
            if not acquire.done():
                acquire.cancel()
        held = acquire.done() and not acquire.cancelled()
        try:
            await fetch.run()
        finally:
            if held:
                self.fetch_slots.release()

    def fetch_ended(self, fetch: BlobFetch) -> None:
        if self.fetches.get(fetch.digest) is fetch:
            del self.fetches[fetch.digest]

    async def blob_size(self, repo: str, digest: str) -> tuple[int | None, str]:
        """HEAD on a local miss: ``(size, tier)`` if the blob is local in another repository (``local``) or in the
        shared tier (``shared``), else ``(None, "miss")``. A remote hit starts fetching it in the background, since
        a push that skips it will reference it next."""
        if self.link_local(repo, digest):
            return self.store.blob_size(repo, digest), "local"
        running = self.fetches.get(digest)
        if running is not None and running.size is not None:
            if repo not in running.repos:
                running.repos.append(repo)
            return running.size, "shared"
        try:
            info = await self.remote.head(keys.blob(digest), lookup=True)
        except RemoteUnavailable as e:
            log.debug("HEAD %s: %s", digest, e)
            return None, "miss"
        if info is None:
            return None, "miss"
        self.fetch(repo, digest, background=True)
        return info.size, "shared"

    async def get_blob(self, reg: Registry, request: BaseRequest, repo: str,
                       digest: str) -> web.StreamResponse | None:
        """GET on a local miss: a response streaming the blob while it is fetched, or None when the handler should
        look locally again (the blob turned out local) or answer 404."""
        if self.link_local(repo, digest):
            return None
        fetch = self.fetch(repo, digest)
        try:
            size = await asyncio.wait_for(asyncio.shield(fetch.started), self.timeout + 1.0)
        except (FetchFailed, TimeoutError):
            return None
        if fetch.fd < 0:  # finished (or failed) before this reader got its turn
            return None
        fd = fetch.reader_fd()
        from cachesvc.api.blobs import _blob_headers
        from cachesvc.api.ranges import parse_range

        headers = _blob_headers(digest)
        range_header = request.headers.get("Range")
        try:
            span = parse_range(range_header, size) if range_header else None
        except RegistryError:
            FetchResponse(fetch, fd, 0, 0).close_file()
            raise
        offset, count, status = (0, size, 200) if span is None else (*span, 206)
        if span is not None:
            headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
        reg.lookup(request, repo, "blob", True, "shared")
        reg.served(repo, count)
        return FetchResponse(fetch, fd, offset, count, status=status, headers=headers)

    async def ensure_local_blob(self, repo: str, digest: str, on_done: Callable[[str, int], None] | None = None,
                                ) -> None:
        """Make a blob local and visible in ``repo`` (fetching it if needed); raises FetchFailed."""
        if self.store.index.linked_size(digest, repo) is not None and self.store.files.exists(digest):
            pass
        elif not self.link_local(repo, digest):
            fetch = self.fetch(repo, digest, background=True)
            await asyncio.shield(fetch.finished)
        if on_done is not None:
            rec = self.store.index.blob(digest)
            on_done(digest, rec.size if rec else 0)

    # -- manifests -----------------------------------------------------------------------------------------------
    async def manifest(self, repo: str, reference: str) -> StoredManifest | None:
        """A manifest (by tag or digest) missing locally, from the shared tier if it is whole there; it is then
        made local in the background (its blobs fetched, then the manifest stored, the tag set if free)."""
        from cachesvc.store.store import StoredManifest

        tag, ref_digest = parse_reference(reference)
        try:
            digest = str(ref_digest) if ref_digest is not None else await self.resolve_tag(repo, tag or "")
            if digest is None:
                return None
            found = await self.remote_manifest(repo, digest)
        except RemoteUnavailable as e:
            log.debug("manifest %s:%s: %s", repo, reference, e)
            self.metrics.remote_fetches.labels("manifest", "unavailable").inc()
            return None
        if found is None:
            return None
        self.materialize_soon(repo, tag, found)
        self.markers.note(repo, digest)
        return StoredManifest(found.digest, found.media_type, found.body)

    async def resolve_tag(self, repo: str, tag: str, *, lookup: bool = True) -> str | None:
        key = (repo, tag)
        cached = self._tags.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < TAG_CACHE_SECONDS:
            return cached[1]
        got = await self.remote.get(keys.tag(repo, tag), lookup=lookup)
        rec = keys.TagRecord.decode(got[0]) if got is not None else None
        digest = rec.digest if rec is not None else None
        if len(self._tags) > 10_000:
            self._tags.clear()
        self._tags[key] = (now, digest)
        return digest

    async def remote_manifest(self, repo: str, digest: str, *, lookup: bool = True,
                              depth: int = 0) -> RemoteManifest | None:
        """Read, verify and check a manifest of the shared tier: None unless its bytes match its digest and every
        blob and child it needs is available locally or remotely. Concurrent callers share one check."""
        key = (repo, digest)
        hit = self._manifest_cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < MANIFEST_CACHE_SECONDS:
            return hit[1]
        running = self._manifests.get(key)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[RemoteManifest | None] = asyncio.get_running_loop().create_future()
        self._manifests[key] = fut
        try:
            found = await self._load_manifest(repo, digest, lookup, depth)
            fut.set_result(found)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else RemoteUnavailable("cancelled"))
            fut.exception()
            raise
        finally:
            self._manifests.pop(key, None)
        if found is not None:
            old = self._manifest_cache.pop(key, None)
            if old is not None:
                self._manifest_cache_bytes -= len(old[1].body)
            self._manifest_cache[key] = (time.monotonic(), found)
            self._manifest_cache_bytes += len(found.body)
            while self._manifest_cache and (len(self._manifest_cache) > MANIFEST_CACHE_ENTRIES
                                            or self._manifest_cache_bytes > MANIFEST_CACHE_BYTES):
                _k, (_t, dropped) = self._manifest_cache.popitem(last=False)
                self._manifest_cache_bytes -= len(dropped.body)
        return found

    async def _load_manifest(self, repo: str, digest: str, lookup: bool, depth: int) -> RemoteManifest | None:
        got = await self.remote.get(keys.manifest(repo, digest), lookup=lookup)
        if got is None:
            self.metrics.remote_fetches.labels("manifest", "missing").inc()
            return None
        body, attrs, _info = got
        algorithm = digest.partition(":")[0]
        try:
            actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        except ValueError:
            return None
        if actual != digest:
            log.error("shared tier manifest %s@%s does not match its digest (%s): not served", repo, digest, actual)
            self.metrics.remote_fetches.labels("manifest", "corrupt").inc()
            return None
        media_type = attrs.get("Content-Type", "")
        try:
            parsed = parse_manifest(body, media_type if media_type.startswith("application/vnd.") else None)
        except RegistryError as e:
            log.error("shared tier manifest %s@%s is not a valid manifest: %s", repo, digest, e)
            return None
        found = RemoteManifest(repo, digest, parsed.media_type, body, parsed)
        # Every blob must be somewhere: local (any repository) or in the shared tier.
        remote_blobs = [b for b in dict.fromkeys(parsed.blobs) if self.store.index.blob(b) is None
                        and b not in self.fetches]
        sem = asyncio.Semaphore(16)

        async def present(b: str) -> bool:
            async with sem:
                return await self.remote.head(keys.blob(b), lookup=lookup) is not None

        results = await asyncio.gather(*(present(b) for b in remote_blobs))
        absent = [b for b, ok in zip(remote_blobs, results, strict=True) if not ok]
        if absent:
            log.warning("shared tier manifest %s@%s lacks %d blob(s) (e.g. %s): not served", repo, digest,
                        len(absent), absent[0])
            self.metrics.remote_fetches.labels("manifest", "incomplete").inc()
            return None
        for child in dict.fromkeys(parsed.children):
            if self.store.index.manifest(repo, child) is not None:
                found.children[child] = None
                continue
            if depth >= MAX_DEPTH:
                return None
            sub = await self.remote_manifest(repo, child, lookup=lookup, depth=depth + 1)
            if sub is None:
                self.metrics.remote_fetches.labels("manifest", "incomplete").inc()
                return None
            found.children[child] = sub
        self.metrics.remote_fetches.labels("manifest", "ok").inc()
        return found

    def materialize_soon(self, repo: str, tag: str | None, found: RemoteManifest) -> asyncio.Task[bool]:
        key = (repo, found.digest)
        running = self._materializing.get(key)
        if running is not None and not running.done():
            return running
        task = self.spawn(self.materialize(repo, tag, found))
        self._materializing[key] = task
        task.add_done_callback(lambda _t: self._materializing.pop(key, None))
        return task

    async def materialize(self, repo: str, tag: str | None, found: RemoteManifest,
                          on_blob: Callable[[str, int], None] | None = None) -> bool:
        """Make a remote manifest local: children first, then its blobs, then the manifest itself (through the
        store's own checks) with the tag if the local store has none for it. Never queued back for upload."""
        try:
            for child in found.children.values():
                if child is not None:
                    await self.materialize(repo, None, child, on_blob)
            await asyncio.gather(*(self.ensure_local_blob(repo, b, on_blob) for b in dict.fromkeys(found.parsed.blobs)))
            current = self.store.index.tag(repo, tag) if tag else None
            local_tag = tag if tag and current in (None, found.digest) else None
            token = FROM_REMOTE.set(True)
            try:
                await self.store.put_manifest(repo, local_tag, parse_digest(found.digest), found.body,
                                              found.media_type)
            finally:
                FROM_REMOTE.reset(token)
            return True
        except (FetchFailed, RemoteUnavailable, RegistryError, OSError) as e:
            log.warning("could not make %s@%s local from the shared tier: %s", repo, found.digest, e)
            return False

    async def fill_missing(self, repo: str, body: bytes, content_type: str | None) -> bool:
        """A pushed manifest references blobs or manifests missing locally (a client skipped uploading what a HEAD
        found in the shared tier): make them local. Returns whether it is worth storing the manifest again."""
        try:
            parsed = parse_manifest(body, content_type)
        except RegistryError:
            return False
        index = self.store.index
        jobs = [self.ensure_local_blob(repo, b) for b in dict.fromkeys(parsed.blobs)
                if index.linked_size(b, repo) is None]
        filled = False
        try:
            await asyncio.gather(*jobs)
            filled = bool(jobs)
            for child in dict.fromkeys(parsed.children):
                if index.manifest(repo, child) is not None:
                    continue
                found = await self.remote_manifest(repo, child)
                if found is None or not await self.materialize(repo, None, found):
                    return False
                filled = True
        except (FetchFailed, RemoteUnavailable) as e:
            log.info("push of a manifest in %s references content the shared tier could not provide: %s", repo, e)
            return False
        return filled

    # -- status --------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        wb = self.writeback
        return {
            "url": str(self.remote.url), "endpoint": self.remote.endpoint or "AWS", "mode": self.settings.remote_mode,
            "reachable": not self.remote.down,
            "queue": {"depth": wb.depth if wb else 0, "lag_seconds": round(wb.lag(), 3) if wb else 0.0,
                      "active": len(wb.active) if wb else 0, "uploaded": wb.uploaded if wb else 0,
                      "dropped": wb.dropped if wb else 0, "last_error": wb.last_error if wb else "",
                      "paused_for": round(max(0.0, wb.paused_until - time.monotonic()), 1) if wb else 0.0},
            "fetches": [{"digest": f.digest, "size": f.size, "written": f.written} for f in self.fetches.values()],
            "prefetch": self.prefetcher.status(),
        }


class Markers:
    """Last-use markers (``used/<repo>/<digest>``), refreshed at most once per interval per manifest: what
    ``remote-gc`` reads to know a root is still in use, whichever node used it. Local hits count (through the
    store's recency flush) as much as shared-tier hits. Read-only nodes write none."""

    def __init__(self, tier: RemoteTier, interval: float) -> None:
        self.tier = tier
        self.interval = interval
        self.last: dict[tuple[str, str], float] = {}
        self.pending: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def note(self, repo: str, digest: str) -> None:
        if self.tier.read_only:
            return
        key = (repo, digest)
        now = time.monotonic()
        if now - self.last.get(key, -1e18) < self.interval:
            return
        if len(self.last) > 200_000:
            self.last.clear()
        self.last[key] = now
        self.pending[key] = int(time.time() * 1000)
        self._wake.set()

    def note_many(self, touches: dict[tuple[str, str], int]) -> None:
        for repo, digest in touches:
            self.note(repo, digest)

    def start(self) -> None:
        if not self.tier.read_only:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self.pending = self.pending, {}
            failed = False
            for (repo, digest), when in batch.items():
                try:
                    await self.tier.remote.put(keys.used(repo, digest), json.dumps({"used": when}).encode(),
                                               content_type="application/json")
                    self.written += 1
                except RemoteUnavailable as e:
                    log.debug("use marker for %s@%s not written: %s", repo, digest, e)
                    self.last.pop((repo, digest), None)
                    self.pending.setdefault((repo, digest), when)
                    failed = True
            if failed:
                await asyncio.sleep(5.0)
                self._wake.set()
