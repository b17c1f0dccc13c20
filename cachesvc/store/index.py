"""The metadata index in RocksDB: the only module that knows its key schema.

Column families (keys are bytes; ``\\0`` separates parts, since no repository name, tag or digest contains it;
``<t>`` is a big-endian unsigned 64-bit time in milliseconds, so byte order is time order):

================  =====================================  =======================================================
column family     key                                    value
================  =====================================  =======================================================
blobs             ``<digest>``                           :class:`BlobRecord` (size, times, lease, orphan time,
                                                         how many ``blob_refs`` and ``links`` keys it has)
links             ``<digest>\\0<repo>``                   size (8 bytes LE): the blob is visible in that repo
manifests         ``<repo>\\0<digest>``                   :class:`ManifestRecord` (media type, size, references)
bodies            ``<repo>\\0<digest>``                   the manifest's exact bytes
tags              ``<repo>\\0<tag>``                      manifest digest
manifest_tags     ``<repo>\\0<digest>\\0<tag>``            empty: reverse of ``tags``
blob_refs         ``<digest>\\0<repo>\\0<manifest digest>`` empty: that manifest references the blob
child_refs        ``<repo>\\0<child>\\0<parent>``          empty: index ``parent`` lists manifest ``child``
referrers         ``<repo>\\0<subject>\\0<digest>``        descriptor JSON of a manifest whose subject is ``subject``
lru               ``<t last use><repo>\\0<digest>``       empty: one entry per *root*, ordered by last use
repo_lru          ``<repo>\\0<t last use><digest>``       empty: the same roots, per repository (for quotas)
orphans           ``<t eligible><digest>``               empty: blobs no manifest references, by when they may go
uploads           ``<session id>``                       :class:`UploadRecord`
repos             ``<repo>``                              bytes (8, signed LE) of the blobs visible in it and its
                                                         manifests: per-repository usage, for quotas and reports
remote_queue      ``<seq>`` (8 bytes BE)                  JSON of a write-behind entry (blob or manifest to upload
                                                         to the shared tier; ``cachesvc/remote/writeback.py``)
meta              ``counter:<name>``                      signed 64-bit LE counters (stored bytes, blob count…)
                  ``unlink:<digest>``                     a blob file to remove (crash-safe deletion intent)
                  ``commit:<digest>``                     a blob file being renamed in (crash-safe add intent)
                  ``pin:<pattern>``                       a pin added at run time (``cachesvc pin``)
                  ``compress:<digest>``                   empty: a new blob queued for compression at rest
                  ``swap:<digest>``                       a blob being swapped to its compressed file (intent)
                  ``saved:<repo>``                        signed 64-bit LE: bytes that compression at rest saves
                                                         on the blobs visible in ``repo`` (disk = usage - saved)
                  ``compress_mode``                       ``auto``/``off``: the mode the store last ran with
                  ``compress_backfill``                   digest to resume a one-off scan of ``blobs`` from, for
                                                         blobs stored while compression was off
================  =====================================  =======================================================

A *root* is a manifest that is tagged, or that no index in its repository lists; exactly the roots have an
``lru`` entry, so the least recently used root is the first key of ``lru`` (O(log n), no scan), and the blobs
that may go are the first keys of ``orphans``. Every mutation is one :class:`Mutation` written as one atomic
RocksDB WriteBatch, with the counters in the same batch, so a crash leaves either all of it or none of it.
Mutations are written on the event-loop thread without awaiting, so they never interleave. Eviction builds its
batches (all reads) in a worker thread, or in a helper process reading a follower of this index (``follow``,
``store/planner.py``), and writes one only if nothing was written since it began reading (``write_if_current``);
otherwise it builds it again.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from cachesvc.priority import lower_threads_named
from cachesvc.store.records import BlobRecord, ManifestRecord, UploadRecord

SEP = b"\x00"
COLUMN_FAMILIES = ("blobs", "links", "manifests", "bodies", "tags", "manifest_tags", "blob_refs", "child_refs",
                   "referrers", "lru", "repo_lru", "orphans", "uploads", "repos", "meta",
                   "remote_queue")
COUNTERS = ("stored_bytes", "disk_bytes", "blob_bytes", "manifest_bytes", "blobs", "manifests", "roots",
            "compressed_blobs")
_T = struct.Struct(">Q")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")


BLOCK_CACHE_BYTES = 32 * 1024 * 1024
FOLLOWER_CACHE_BYTES = 8 * 1024 * 1024
MEMTABLE_BUDGET = 32 * 1024 * 1024


def _options(cache: Cache) -> Options:
    """Per-column-family tuning: bloom filters make point lookups of absent keys (most HEAD misses, every
    "is this still referenced?" check) cost one probe instead of one per SST file; index and filter blocks live
    in the bounded block cache so memory does not grow with the number of files."""
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    # Partitioned index and filters: a 64 MiB table's index and filter are ~2 MiB each; whole, a lookup that
    # misses the cache reads and parses them both (hundreds of microseconds, and they crowd data out of the
    # cache). In 4 KiB partitions under a small pinned top level, a lookup loads only the partitions it needs.
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(4096)
    table.set_pin_top_level_index_and_filter(True)
    opts = Options(raw_mode=True)
    opts.set_block_based_table_factory(table)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_level_compaction_dynamic_level_bytes(True)
    opts.set_write_buffer_size(16 * 1024 * 1024)
    return opts


def t_key(ms: int) -> bytes:
    return _T.pack(max(0, ms))


def _k(*parts: str) -> bytes:
    return SEP.join(p.encode() for p in parts)


def _split(key: bytes, n: int) -> list[str]:
    return [p.decode() for p in key.split(SEP, n - 1)]


@dataclass(slots=True)
class Removed:
    """What a mutation took away: for metrics, logs and the files to delete after the batch is written."""

    manifests: list[tuple[str, str, int]]
    blobs: list[tuple[str, int]]
    orphans: list[str]


class Mutation:
    """A WriteBatch that can read its own writes, so multi-step changes (cascades) see a consistent state."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.writes_seen = index.writes  # read before any key: see Index.write_if_current
        self.batch = WriteBatch(raw_mode=True)
        self.overlay: dict[str, dict[bytes, bytes | None]] = {}  # per column family: key -> value (None: deleted)
        self.deltas: dict[str, int] = {}
        self.removed = Removed([], [], [])
        self._iters: dict[str, Any] = {}
        # Set by plan_manifest_deletion: the in-memory leases; blobs a deletion leaves unreferenced and
        # unprotected are dropped in the same batch instead of waiting in the orphan index.
        self.lease_of: Callable[[str], int] | None = None
        # When set: every key this mutation puts or deletes, per column family (eviction's helper splits one
        # mutation into consecutive batches by it).
        self.journal: dict[str, set[bytes]] | None = None

    @classmethod
    def replay(cls, index: Index, ops: dict[str, dict[bytes, bytes | None]], deltas: dict[str, int],
               removed: Removed, writes_seen: int) -> Mutation:
        """A mutation planned elsewhere, for ``index`` to write: ``ops`` holds the final value of every key it
        touched (None: deleted; a batch's order matters only within a key). Only written, never read from.
        ``writes_seen``: the writer's count when the planning began, for :meth:`Index.write_if_current`."""
        m = cls(index)
        m.writes_seen = writes_seen
        batch, handles = m.batch, index.handles
        for cf, items in ops.items():
            handle = handles[cf]
            for key, value in items.items():
                if value is None:
                    batch.delete(key, handle)
                else:
                    batch.put(key, value, handle)
        m.deltas = dict(deltas)
        m.removed = removed
        return m

    # -- raw access ------------------------------------------------------------------------------------
    def get(self, cf: str, key: bytes) -> bytes | None:
        mine = self.overlay.get(cf)
        if mine is not None and key in mine:
            return mine[key]
        return self.index.cf[cf].get(key)

    def put(self, cf: str, key: bytes, value: bytes = b"") -> None:
        self.overlay.setdefault(cf, {})[key] = value
        self.batch.put(key, value, self.index.handles[cf])
        if self.journal is not None:
            self.journal.setdefault(cf, set()).add(key)

    def delete(self, cf: str, key: bytes) -> None:
        self.overlay.setdefault(cf, {})[key] = None
        self.batch.delete(key, self.index.handles[cf])
        if self.journal is not None:
            self.journal.setdefault(cf, set()).add(key)

    def count(self, name: str, delta: int) -> None:
        self.deltas[name] = self.deltas.get(name, 0) + delta

    def close_iterators(self) -> None:
        """Done reading: iterators pin the database open and its files in memory. Closed when the batch is
        written or dropped, and by eviction's worker as soon as it has built one, since freeing what an
        iterator pinned can take a while and should not land on the loop that writes the batch."""
        self._iters.clear()

    def _iter(self, cf: str) -> Any:
        """One iterator per column family, reused for the whole mutation."""
        it = self._iters.get(cf)
        if it is None:
            it = self._iters[cf] = self.index.cf[cf].iter(ReadOptions())
        return it

    def _stored(self, cf: str, prefix: bytes, values: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Stored ``(key, value)`` under ``prefix`` (values read only when asked for: ``b""`` otherwise)."""
        it = self._iter(cf)
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value() if values else b""
            it.next()

    def _stored_keys(self, cf: str, prefix: bytes) -> Iterator[bytes]:
        return (k for k, _ in self._stored(cf, prefix))

    def keys_with_prefix(self, cf: str, prefix: bytes) -> list[bytes]:
        """Keys under ``prefix`` as this mutation sees them (stored ones, minus deleted, plus added)."""
        return [k for k, _ in self.items_with_prefix(cf, prefix)]

    def items_with_prefix(self, cf: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` under ``prefix`` as this mutation sees them, in key order."""
        mine = self.overlay.get(cf, {})
        found: dict[bytes, bytes] = {}
        for k, v in self._stored(cf, prefix, values=True):
            if k not in mine:
                found[k] = v
        found.update((k, v) for k, v in mine.items() if v is not None and k.startswith(prefix))
        return sorted(found.items())

    def has_prefix(self, cf: str, prefix: bytes) -> bool:
        mine = self.overlay.get(cf, {})
        for k, v in mine.items():
            if v is not None and k.startswith(prefix):
                return True
        return any(mine.get(k, b"") is not None for k in self._stored_keys(cf, prefix))

    # -- derived indexes -------------------------------------------------------------------------------
    def add_root(self, repo: str, digest: str, last_used: int) -> None:
        key = t_key(last_used) + _k(repo, digest)
        if self.get("lru", key) is None:
            self.put("lru", key)
            self.put("repo_lru", repo.encode() + SEP + t_key(last_used) + digest.encode())
            self.count("roots", 1)

    def remove_root(self, repo: str, digest: str, last_used: int) -> None:
        key = t_key(last_used) + _k(repo, digest)
        if self.get("lru", key) is not None:
            self.delete("lru", key)
            self.delete("repo_lru", repo.encode() + SEP + t_key(last_used) + digest.encode())
            self.count("roots", -1)

    def is_root_entry(self, repo: str, digest: str, last_used: int) -> bool:
        return self.get("lru", t_key(last_used) + _k(repo, digest)) is not None

    def repo_usage(self, repo: str, delta: int) -> None:
        """Adjust a repository's usage (creating its entry: repositories are listed from these)."""
        raw = self.get("repos", repo.encode())
        self.put("repos", repo.encode(), _I64.pack((_I64.unpack(raw)[0] if raw else 0) + delta))

    # -- typed access ----------------------------------------------------------------------------------
    def blob(self, digest: str) -> BlobRecord | None:
        raw = self.get("blobs", digest.encode())
        return BlobRecord.decode(raw) if raw else None

    def put_blob(self, digest: str, rec: BlobRecord) -> None:
        self.put("blobs", digest.encode(), rec.encode())

    def manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        raw = self.get("manifests", _k(repo, digest))
        return ManifestRecord.decode(raw) if raw else None


class WalSyncer:
    """Group commit: callers that need their writes durable share one WAL fsync instead of paying one each."""

    def __init__(self, db: Rdict) -> None:
        self.db = db
        self._next: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        fut = self._next
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._next is not None:
            fut, self._next = self._next, None
            try:
                await asyncio.to_thread(self.db.flush_wal, True)
            except Exception as e:  # pragma: no cover - disk failure
                fut.set_exception(e)
            else:
                fut.set_result(None)


class Index:
    """Typed reads and atomic mutations of the metadata; see the module docstring for the schema."""

    def __init__(self, path: Path, *, clock: Callable[[], float], follow: Path | None = None) -> None:
        """Open the index for reading and writing, or with ``follow`` (a directory of its own) as a read-only
        follower in another process: it sees what the writer wrote up to its last :meth:`catch_up`."""
        self.path = Path(path)
        self.clock = clock
        cache = Cache(FOLLOWER_CACHE_BYTES if follow else BLOCK_CACHE_BYTES)  # shared by every column family
        opts = _options(cache)
        opts.create_if_missing(follow is None)
        opts.create_missing_column_families(follow is None)
        opts.set_keep_log_file_num(3)
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET)  # all column families' memtables together
        opts.set_max_background_jobs(2)
        opts.set_max_total_wal_size(64 * 1024 * 1024)
        # A follower keeps every table file it knows open (max_open_files -1, the default), so one the writer
        # compacts away meanwhile stays readable until the next catch-up.
        access = AccessType.secondary(str(follow)) if follow else AccessType.read_write()
        self.db = Rdict(str(self.path), opts, column_families={name: _options(cache) for name in COLUMN_FAMILIES},
                        access_type=access)
        self.cf = {name: self.db.get_column_family(name) for name in COLUMN_FAMILIES}
        self.handles = {name: self.db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self.write_options = WriteOptions()
        self.write_options.sync = False
        self.syncer = WalSyncer(self.db)
        if follow is None:
            lower_threads_named("rocksdb:")  # flushes and compactions yield the CPU to request serving
        self.counters = {name: self._read_counter(name) for name in COUNTERS}
        self.writes = 0  # mutations written so far: lets a batch built off the loop tell whether it is stale
        self._pins: list[str] | None = None

    def close(self) -> None:
        """Flush and release the database (column-family handles and iterators hold it open, so they go first:
        a dropped batch's iterators can sit in a reference cycle until a collection)."""
        import gc

        gc.collect()
        self.db.flush_wal(True)
        for cf in self.cf.values():
            cf.close()
        self.cf.clear()
        self.handles.clear()
        self.db.close()
        del self.db
        gc.collect()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def catch_up(self) -> None:
        """A follower: see everything the writer has written so far (its WAL tail and new table files)."""
        self.db.try_catch_up_with_primary()

    # -- plumbing ----------------------------------------------------------------------------------------
    def _read_counter(self, name: str) -> int:
        raw = self.cf["meta"].get(b"counter:" + name.encode())
        return _I64.unpack(raw)[0] if raw else 0

    def scan(self, cf: str, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Items of ``cf`` under ``prefix`` in key order, from ``start`` (inclusive) if given."""
        it = self.cf[cf].iter(ReadOptions())
        it.seek(start if start is not None and start > prefix else prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def scan_keys(self, cf: str, prefix: bytes) -> Iterator[bytes]:
        for key, _ in self.scan(cf, prefix):
            yield key

    def mutation(self) -> Mutation:
        return Mutation(self)

    def write(self, m: Mutation, *, read_by_plans: bool = True) -> None:
        """Apply a mutation atomically (not yet fsynced: ``await sync()`` for that). On the loop thread only.

        ``read_by_plans=False``: the mutation touches only keys that no batch built off the loop reads (the
        intents of files already removed), so it does not make one stale (see :meth:`write_if_current`)."""
        new = {name: self.counters[name] + d for name, d in m.deltas.items() if d}
        for name, value in new.items():
            m.batch.put(b"counter:" + name.encode(), _I64.pack(value), self.handles["meta"])
        m.close_iterators()
        self.db.write(m.batch, self.write_options)
        if read_by_plans:
            self.writes += 1  # after the write: a mutation built meanwhile sees a different count at commit
        self.counters.update(new)

    def write_if_current(self, m: Mutation) -> bool:
        """Write a mutation built off the loop, unless anything was written since it started reading (its
        reads could be stale then; the caller builds it again). On the loop thread only."""
        if m.writes_seen != self.writes:
            m.close_iterators()
            return False
        self.write(m)
        return True

    async def sync(self) -> None:
        """Wait until everything written so far survives power loss (group-committed WAL fsync)."""
        await self.syncer.sync()

    # -- hot reads ---------------------------------------------------------------------------------------
    def linked_size(self, digest: str, repo: str) -> int | None:
        """Size of the blob if it is visible in ``repo``: one point lookup, for HEAD/GET blob."""
        raw = self.cf["links"].get(_k(digest, repo))
        return _U64.unpack(raw)[0] if raw is not None else None

    def blob(self, digest: str) -> BlobRecord | None:
        raw = self.cf["blobs"].get(digest.encode())
        return BlobRecord.decode(raw) if raw else None

    def tag(self, repo: str, tag: str) -> str | None:
        raw = self.cf["tags"].get(_k(repo, tag))
        return raw.decode() if raw else None

    def manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        raw = self.cf["manifests"].get(_k(repo, digest))
        return ManifestRecord.decode(raw) if raw else None

    def body(self, repo: str, digest: str) -> bytes | None:
        return self.cf["bodies"].get(_k(repo, digest))

    def manifest_head(self, repo: str, digest: str) -> tuple[str, int] | None:
        rec = self.manifest(repo, digest)
        return (rec.media_type, rec.size) if rec else None

    def repo_exists(self, repo: str) -> bool:
        return self.cf["repos"].get(repo.encode()) is not None

    def is_root(self, repo: str, digest: str, last_used: int) -> bool:
        return self.cf["lru"].get(t_key(last_used) + _k(repo, digest)) is not None

    def repo_usages(self) -> Iterator[tuple[str, int]]:
        """Every repository with its usage in bytes (an operator listing; O(repositories))."""
        for key, value in self.scan("repos"):
            yield key.decode(), _I64.unpack(value)[0] if value else 0

    def repo_roots_by_age(self, repo: str) -> Iterator[tuple[int, str]]:
        """One repository's roots from least to most recently used: ``(last use ms, digest)``."""
        prefix = repo.encode() + SEP
        for key in self.scan_keys("repo_lru", prefix):
            rest = key[len(prefix):]
            yield _T.unpack(rest[:8])[0], rest[8:].decode()

    def upload(self, session_id: str) -> UploadRecord | None:
        raw = self.cf["uploads"].get(session_id.encode())
        return UploadRecord.decode(raw) if raw else None

    # -- listings ----------------------------------------------------------------------------------------
    def tags(self, repo: str, last: str | None = None, limit: int | None = None) -> list[str]:
        prefix = repo.encode() + SEP
        start = prefix + last.encode() + SEP if last else None  # first key after ``last``
        out: list[str] = []
        for key, _ in self.scan("tags", prefix, start):
            out.append(key[len(prefix):].decode())
            if limit is not None and len(out) >= limit:
                break
        return out

    def repos(self, last: str | None = None, limit: int | None = None) -> list[str]:
        start = last.encode() + SEP if last else None
        out: list[str] = []
        for key, _ in self.scan("repos", b"", start):
            out.append(key.decode())
            if limit is not None and len(out) >= limit:
                break
        return out

    def tags_of(self, repo: str, digest: str) -> list[str]:
        prefix = _k(repo, digest) + SEP
        return [k[len(prefix):].decode() for k in self.scan_keys("manifest_tags", prefix)]

    def referrers(self, repo: str, subject: str) -> list[dict[str, Any]]:
        prefix = _k(repo, subject) + SEP
        return [json.loads(v) for _, v in self.scan("referrers", prefix)]

    def manifests_using_blob(self, digest: str) -> list[tuple[str, str]]:
        prefix = digest.encode() + SEP
        out = []
        for key in self.scan_keys("blob_refs", prefix):
            repo, mdigest = _split(key[len(prefix):], 2)
            out.append((repo, mdigest))
        return out

    def roots_by_age(self, start: bytes | None = None) -> Iterator[tuple[bytes, int, str, str]]:
        """Roots from least to most recently used: ``(lru key, last use ms, repo, digest)``."""
        for key, _ in self.scan("lru", b"", start):
            repo, digest = _split(key[8:], 2)
            yield key, _T.unpack(key[:8])[0], repo, digest

    def due_orphans(self, now_ms: int) -> Iterator[tuple[bytes, str]]:
        """Unreferenced blobs whose grace has run out by ``now_ms``."""
        for key, _ in self.scan("orphans"):
            if _T.unpack(key[:8])[0] > now_ms:
                break
            yield key, key[8:].decode()

    def pins(self) -> list[str]:
        """Run-time pins; read on each eviction decision, so kept in memory after the first read."""
        if self._pins is None:
            self._pins = [k[len(b"pin:"):].decode() for k in self.scan_keys("meta", b"pin:")]
        return self._pins

    def set_pin(self, pattern: str, pinned: bool) -> bool:
        """Add or remove a run-time pin; returns whether anything changed."""
        key = b"pin:" + pattern.encode()
        present = self.cf["meta"].get(key) is not None
        if present == pinned:
            return False
        m = self.mutation()
        if pinned:
            m.put("meta", key)
        else:
            m.delete("meta", key)
        self.write(m)
        self._pins = None
        return True

    def pending_unlinks(self) -> list[str]:
        return [k[len(b"unlink:"):].decode() for k in self.scan_keys("meta", b"unlink:")]

    def pending_commits(self) -> list[str]:
        return [k[len(b"commit:"):].decode() for k in self.scan_keys("meta", b"commit:")]

    def uploads(self) -> Iterator[tuple[str, UploadRecord]]:
        for key, value in self.scan("uploads"):
            yield key.decode(), UploadRecord.decode(value)

    # -- blob mutations ------------------------------------------------------------------------------------
    def begin_commit(self, digest: str) -> None:
        """Record that a blob file is about to be renamed in, so a crash before the index knows it is undone."""
        m = self.mutation()
        m.put("meta", b"commit:" + digest.encode())
        self.write(m)

    def add_blob(self, digest: str, size: int, repo: str, grace_ms: int, *, compress: bool = False) -> bool:
        """Index a verified blob file (new or already known) and make it visible in ``repo``; with ``compress``,
        a new blob is queued for compression at rest in the same batch."""
        m = self.mutation()
        now = self.now_ms()
        rec = m.blob(digest)
        created = rec is None
        if rec is None:
            rec = BlobRecord(size=size, created=now, last_used=now, refs=0, links=0)
            m.count("stored_bytes", size)
            m.count("disk_bytes", size)
            m.count("blob_bytes", size)
            m.count("blobs", 1)
            if compress:
                m.put("meta", b"compress:" + digest.encode())
        self._link(m, digest, repo, rec)
        self._lease(m, digest, rec, now + grace_ms)
        m.delete("meta", b"commit:" + digest.encode())
        self.write(m)
        return created

    def link_blob(self, digest: str, repo: str, grace_ms: int) -> bool:
        """Cross-repository mount: make a known blob visible in ``repo``. False when the blob is unknown."""
        m = self.mutation()
        rec = m.blob(digest)
        if rec is None:
            return False
        self._link(m, digest, repo, rec)
        self._lease(m, digest, rec, self.now_ms() + grace_ms)
        self.write(m)
        return True

    def _link(self, m: Mutation, digest: str, repo: str, rec: BlobRecord) -> None:
        """Make ``digest`` visible in ``repo``; counts it in ``rec`` (the caller writes the record)."""
        if m.get("links", _k(digest, repo)) is None:
            self._links_of(m, digest, rec)
            m.put("links", _k(digest, repo), _U64.pack(rec.size))
            rec.links += 1
            m.repo_usage(repo, rec.size)
            if rec.size != rec.stored_size:
                self._repo_saved(m, repo, rec.size - rec.stored_size)

    @staticmethod
    def _refs_of(m: Mutation, digest: str, rec: BlobRecord) -> int:
        """How many manifests reference the blob, counted into ``rec`` if it predates the count. Call it before
        the mutation changes the blob's references, so the count it takes matches what it then adjusts."""
        if rec.refs < 0:
            rec.refs = len(m.keys_with_prefix("blob_refs", digest.encode() + SEP))
        return rec.refs

    @staticmethod
    def _links_of(m: Mutation, digest: str, rec: BlobRecord) -> int:
        """How many repositories the blob is visible in; as :meth:`_refs_of`."""
        if rec.links < 0:
            rec.links = len(m.keys_with_prefix("links", digest.encode() + SEP))
        return rec.links

    def _lease(self, m: Mutation, digest: str, rec: BlobRecord, until: int, *, held: bool = False) -> None:
        """Protect a blob until ``until`` (an upload lease, or with ``held`` a HEAD/GET one; see BlobRecord);
        an unreferenced blob's orphan time moves with its leases."""
        rec.last_used = max(rec.last_used, self.now_ms())
        if held:
            rec.held_until = max(rec.held_until, until)
        else:
            rec.lease_until = max(rec.lease_until, until)
        if self._refs_of(m, digest, rec) > 0:
            m.put_blob(digest, rec)
            return
        new_at = max(rec.orphan_at, until)
        if new_at != rec.orphan_at:
            if rec.orphan_at:
                m.delete("orphans", t_key(rec.orphan_at) + digest.encode())
            rec.orphan_at = new_at
            m.put("orphans", t_key(new_at) + digest.encode())
        m.put_blob(digest, rec)

    def extend_leases(self, leases: dict[str, int]) -> None:
        """Persist HEAD/GET leases and blob last-use gathered in memory (one batch per recency flush)."""
        if not leases:
            return
        m = self.mutation()
        for digest, until in leases.items():
            rec = m.blob(digest)
            if rec is not None and (rec.held_until < until or (rec.orphan_at and rec.orphan_at < until)):
                self._lease(m, digest, rec, until, held=True)
        self.write(m)

    def unlink_blob(self, digest: str, repo: str) -> Removed | None:
        """DELETE of a blob in one repository: it stops being visible there, and so does every manifest there
        that needs it (they could no longer be pulled whole). None when it was not visible there."""
        m = self.mutation()
        if m.get("links", _k(digest, repo)) is None:
            return None
        prefix = _k(digest, repo) + SEP
        for key in m.keys_with_prefix("blob_refs", prefix):
            self._delete_manifest(m, repo, key[len(prefix):].decode())
        rec = m.blob(digest)
        self._unlink(m, digest, repo, rec)
        if rec is not None:
            m.put_blob(digest, rec)
        self.write(m)
        return m.removed

    def drop_blob(self, digest: str) -> Removed:
        """Remove a blob everywhere (evicted, or found missing/corrupt on disk), and every manifest using it."""
        m = self.mutation()
        for repo, mdigest in self.manifests_using_blob(digest):
            self._delete_manifest(m, repo, mdigest)
        self._drop_blob(m, digest)
        self.write(m)
        return m.removed

    def _drop_blob(self, m: Mutation, digest: str, rec: BlobRecord | None = None, repo: str | None = None) -> None:
        """Remove a blob's record and links (its file goes after the write: the ``unlink:`` intent).

        ``repo``: a repository it is visible in, because a manifest there referenced it (a manifest is stored
        only when its blobs are visible in its repository, and a blob stops being visible in one only after the
        manifests there that use it are gone). When that is its only link, nothing needs to be read to find it."""
        rec = rec or m.blob(digest)
        if rec is None:
            return
        if repo is not None and rec.links == 1:
            self._unlink(m, digest, repo, rec, _U64.pack(rec.size))  # a link's value is the blob's size
        else:
            prefix = digest.encode() + SEP
            for key, raw in m.items_with_prefix("links", prefix):
                self._unlink(m, digest, key[len(prefix):].decode(), rec, raw)
        if rec.orphan_at:
            m.delete("orphans", t_key(rec.orphan_at) + digest.encode())
        m.delete("blobs", digest.encode())
        m.put("meta", b"unlink:" + digest.encode())
        m.count("stored_bytes", -rec.size)
        m.count("disk_bytes", -rec.stored_size)
        m.count("blob_bytes", -rec.size)
        m.count("blobs", -1)
        if rec.stored_size != rec.size:
            m.count("compressed_blobs", -1)
        m.removed.blobs.append((digest, rec.stored_size))

    def _unlink(self, m: Mutation, digest: str, repo: str, rec: BlobRecord | None, raw: bytes | None = None) -> None:
        """Stop ``digest`` being visible in ``repo`` (``raw``: its link value, when the caller has it); counts it
        in ``rec`` (the caller writes or deletes the record)."""
        if raw is None:
            raw = m.get("links", _k(digest, repo))
        if raw is not None:
            if rec is not None:
                self._links_of(m, digest, rec)
            m.delete("links", _k(digest, repo))
            m.repo_usage(repo, -_U64.unpack(raw)[0])
            if rec is not None:
                rec.links = max(0, rec.links - 1)
                if rec.stored_size != rec.size:
                    self._repo_saved(m, repo, rec.stored_size - rec.size)

    def forget_unlink(self, digests: list[str]) -> None:
        """The files are gone: drop their intents. Eviction's batches only ever add intents (blindly, for
        blobs in the index, whose old intents the reclaimer does not report while they are pending again)."""
        m = self.mutation()
        for d in digests:
            m.delete("meta", b"unlink:" + d.encode())
        self.write(m, read_by_plans=False)

    def forget_commit(self, digest: str) -> None:
        m = self.mutation()
        m.delete("meta", b"commit:" + digest.encode())
        self.write(m)

    def drop_orphan(self, key: bytes, digest: str, lease_until: int) -> Removed | None:
        """Remove one due orphan unless it got referenced or leased since; then move its key to the lease end."""
        m = self.mutation()
        rec = m.blob(digest)
        if rec is None or rec.orphan_at == 0 or self._refs_of(m, digest, rec) > 0:
            m.delete("orphans", key)
            if rec is not None and rec.orphan_at and t_key(rec.orphan_at) + digest.encode() == key:
                rec.orphan_at = 0
                m.put_blob(digest, rec)
            self.write(m)
            return None
        until = max(rec.protected_until(), lease_until)
        if until > self.now_ms():
            self._lease(m, digest, rec, until, held=True)
            self.write(m)
            return None
        self._drop_blob(m, digest, rec)
        self.write(m)
        return m.removed

    # -- manifest mutations --------------------------------------------------------------------------------
    def put_manifest(self, repo: str, digest: str, rec: ManifestRecord, body: bytes, tag: str | None,
                     referrer: dict[str, Any] | None) -> bool:
        """Store a verified manifest (its references already checked) and point ``tag`` at it."""
        m = self.mutation()
        existing = m.manifest(repo, digest)
        created = existing is None
        if existing is None:
            m.put("manifests", _k(repo, digest), rec.encode())
            m.put("bodies", _k(repo, digest), body)
            m.count("stored_bytes", rec.size)
            m.count("disk_bytes", rec.size)
            m.count("manifest_bytes", rec.size)
            m.count("manifests", 1)
            for blob in dict.fromkeys(rec.blobs):
                brec = m.blob(blob)
                if brec is not None:
                    self._refs_of(m, blob, brec)
                m.put("blob_refs", _k(blob, repo, digest))
                if brec is not None:
                    brec.refs += 1
                    # Referenced now: out of the orphan index, and its upload lease has done its job (a HEAD
                    # lease, held_until, stays: see BlobRecord).
                    if brec.orphan_at:
                        m.delete("orphans", t_key(brec.orphan_at) + blob.encode())
                    brec.orphan_at = 0
                    brec.lease_until = 0
                    m.put_blob(blob, brec)
            for child in dict.fromkeys(rec.children):
                m.put("child_refs", _k(repo, child, digest))
                crec = m.manifest(repo, child)
                if crec is not None:
                    self._refresh_root(m, repo, child, crec)
            if rec.subject and referrer is not None:
                m.put("referrers", _k(repo, rec.subject, digest), json.dumps(referrer).encode())
            m.repo_usage(repo, rec.size)
        else:
            rec = existing
            rec.last_used = self.now_ms()
            m.put("manifests", _k(repo, digest), rec.encode())
        if tag is not None:
            self._tag(m, repo, tag, digest)
        self._refresh_root(m, repo, digest, rec, old_last_used=existing.last_used if existing else None)
        self.write(m)
        return created

    def _tag(self, m: Mutation, repo: str, tag: str, digest: str) -> None:
        old = m.get("tags", _k(repo, tag))
        if old is not None and old.decode() != digest:
            old_digest = old.decode()
            m.delete("manifest_tags", _k(repo, old_digest, tag))
            orec = m.manifest(repo, old_digest)
            if orec is not None:
                self._refresh_root(m, repo, old_digest, orec)
        m.put("tags", _k(repo, tag), digest.encode())
        m.put("manifest_tags", _k(repo, digest, tag))

    def _is_root(self, m: Mutation, repo: str, digest: str) -> bool:
        key = _k(repo, digest) + SEP
        return m.has_prefix("manifest_tags", key) or not m.has_prefix("child_refs", key)

    def _refresh_root(self, m: Mutation, repo: str, digest: str, rec: ManifestRecord,
                      old_last_used: int | None = None) -> None:
        """Keep the ``lru`` entry present exactly when the manifest is a root, at its current last use."""
        if old_last_used is not None and old_last_used != rec.last_used:
            m.remove_root(repo, digest, old_last_used)
        if self._is_root(m, repo, digest):
            m.add_root(repo, digest, rec.last_used)
        else:
            m.remove_root(repo, digest, rec.last_used)

    def delete_tag(self, repo: str, tag: str) -> bool:
        m = self.mutation()
        raw = m.get("tags", _k(repo, tag))
        if raw is None:
            return False
        digest = raw.decode()
        m.delete("tags", _k(repo, tag))
        m.delete("manifest_tags", _k(repo, digest, tag))
        rec = m.manifest(repo, digest)
        if rec is not None:
            self._refresh_root(m, repo, digest, rec)
        self.write(m)
        return True

    def delete_manifest(self, repo: str, digest: str,
                        lease_of: Callable[[str], int] | None = None) -> Removed | None:
        """Delete a manifest, its tags, the indexes that list it, and children nothing else keeps.

        With ``lease_of`` (the in-memory leases), blobs left unreferenced whose leases have ended are dropped
        in the same batch (eviction: one write per root); otherwise they wait in the orphan index."""
        m = self.plan_manifest_deletion(repo, digest, lease_of)
        if m is None:
            return None
        self.write(m)
        return m.removed

    def plan_manifest_deletion(self, repo: str, digest: str, lease_of: Callable[[str], int] | None = None,
                               m: Mutation | None = None) -> Mutation | None:
        """The batch :meth:`delete_manifest` writes, built but not written (None: no such manifest).

        Building reads only RocksDB, so eviction builds its batches off the loop while the loop serves
        requests, then writes them on the loop with :meth:`write_if_current`. Given ``m``, the deletion is added
        to that batch, seeing what it already deletes (eviction chains several roots into one batch)."""
        m = m or self.mutation()
        if m.manifest(repo, digest) is None:
            return None
        m.lease_of = lease_of
        self._delete_manifest(m, repo, digest)
        m.lease_of = None
        return m

    def _delete_manifest(self, m: Mutation, repo: str, digest: str) -> None:
        rec = m.manifest(repo, digest)
        if rec is None:
            return
        key = _k(repo, digest)
        m.delete("manifests", key)
        m.delete("bodies", key)
        m.remove_root(repo, digest, rec.last_used)
        m.repo_usage(repo, -rec.size)
        for tkey in m.keys_with_prefix("manifest_tags", key + SEP):
            tag = tkey[len(key) + 1:]
            m.delete("manifest_tags", tkey)
            m.delete("tags", repo.encode() + SEP + tag)
        if rec.subject:
            m.delete("referrers", _k(repo, rec.subject, digest))
        m.count("stored_bytes", -rec.size)
        m.count("disk_bytes", -rec.size)
        m.count("manifest_bytes", -rec.size)
        m.count("manifests", -1)
        m.removed.manifests.append((repo, digest, rec.size))
        # Indexes that list this manifest can no longer be served whole: they go too.
        for pkey in m.keys_with_prefix("child_refs", key + SEP):
            m.delete("child_refs", pkey)
            self._delete_manifest(m, repo, pkey[len(key) + 1:].decode())
        now = self.now_ms()
        for blob in dict.fromkeys(rec.blobs):
            brec = m.blob(blob)
            if brec is not None:
                self._refs_of(m, blob, brec)
            m.delete("blob_refs", _k(blob, repo, digest))
            if brec is None:
                continue
            brec.refs = max(0, brec.refs - 1)
            if brec.refs or brec.orphan_at:
                m.put_blob(blob, brec)
            elif m.lease_of is not None and max(brec.protected_until(), m.lease_of(blob)) <= now:
                self._drop_blob(m, blob, brec, repo)  # unreferenced and unprotected: goes in this batch
            else:
                brec.orphan_at = max(now, brec.protected_until())
                m.put("orphans", t_key(brec.orphan_at) + blob.encode())
                m.put_blob(blob, brec)
                m.removed.orphans.append(blob)
        for child in dict.fromkeys(rec.children):
            m.delete("child_refs", _k(repo, child, digest))
            crec = m.manifest(repo, child)
            if crec is None:
                continue
            ckey = _k(repo, child) + SEP
            if not m.has_prefix("child_refs", ckey) and not m.has_prefix("manifest_tags", ckey):
                self._delete_manifest(m, repo, child)

    # -- recency ---------------------------------------------------------------------------------------------
    def touch_manifests(self, touches: dict[tuple[str, str], int]) -> None:
        """Persist last-use times gathered in memory; roots move in the ``lru`` order accordingly."""
        if not touches:
            return
        m = self.mutation()
        for (repo, digest), when in touches.items():
            rec = m.manifest(repo, digest)
            if rec is None or rec.last_used >= when:
                continue
            old = rec.last_used
            rec.last_used = when
            m.put("manifests", _k(repo, digest), rec.encode())
            self._refresh_root(m, repo, digest, rec, old_last_used=old)
        self.write(m)

    # -- upload sessions ---------------------------------------------------------------------------------------
    def put_upload(self, session_id: str, rec: UploadRecord) -> None:
        m = self.mutation()
        m.put("uploads", session_id.encode(), rec.encode())
        self.write(m)

    def delete_upload(self, session_id: str) -> None:
        m = self.mutation()
        m.delete("uploads", session_id.encode())
        self.write(m)

    # -- compression at rest (cachesvc/store/compression.py) ------------------------------------------------
    def _repo_saved(self, m: Mutation, repo: str, delta: int) -> None:
        key = b"saved:" + repo.encode()
        raw = m.get("meta", key)
        value = (_I64.unpack(raw)[0] if raw else 0) + delta
        m.put("meta", key, _I64.pack(value)) if value else m.delete("meta", key)

    def repo_saved_of(self, repo: str) -> int:
        raw = self.cf["meta"].get(b"saved:" + repo.encode())
        return _I64.unpack(raw)[0] if raw else 0

    def repo_saved(self) -> dict[str, int]:
        """Bytes compression saves per repository (only repositories with compressed blobs are listed)."""
        return {k[len(b"saved:"):].decode(): _I64.unpack(v)[0] for k, v in self.scan("meta", b"saved:")}

    def queue_compression(self, digests: list[str], backfill_cursor: str | None = None,
                          backfill_done: bool = False) -> None:
        """Queue blobs for compression at rest (and move the backfill scan's cursor in the same batch)."""
        m = self.mutation()
        for d in digests:
            m.put("meta", b"compress:" + d.encode())
        if backfill_done:
            m.delete("meta", b"compress_backfill")
        elif backfill_cursor is not None:
            m.put("meta", b"compress_backfill", backfill_cursor.encode())
        self.write(m)

    def dequeue_compression(self, digest: str) -> None:
        m = self.mutation()
        m.delete("meta", b"compress:" + digest.encode())
        self.write(m)

    def compression_queue(self) -> list[str]:
        """Blobs waiting for compression: read at start (proportional to the pending work, not the store)."""
        return [k[len(b"compress:"):].decode() for k in self.scan_keys("meta", b"compress:")]

    def meta_value(self, name: str) -> bytes | None:
        return self.cf["meta"].get(name.encode())

    def set_meta_value(self, name: str, value: bytes | None) -> None:
        m = self.mutation()
        m.put("meta", name.encode(), value) if value is not None else m.delete("meta", name.encode())
        self.write(m)

    def blobs_from(self, start: str, limit: int) -> list[tuple[str, BlobRecord]]:
        """Up to ``limit`` blob records in digest order after ``start`` (the backfill scan, a batch at a time)."""
        out: list[tuple[str, BlobRecord]] = []
        begin = start.encode() + b"\x00" if start else None
        for key, value in self.scan("blobs", b"", begin):
            out.append((key.decode(), BlobRecord.decode(value)))
            if len(out) >= limit:
                break
        return out

    def begin_swap(self, digest: str) -> None:
        """Record that a blob's compressed file is about to be renamed in (undone or finished at start)."""
        m = self.mutation()
        m.put("meta", b"swap:" + digest.encode())
        self.write(m)

    def pending_swaps(self) -> list[str]:
        return [k[len(b"swap:"):].decode() for k in self.scan_keys("meta", b"swap:")]

    def forget_swap(self, digest: str) -> None:
        m = self.mutation()
        m.delete("meta", b"swap:" + digest.encode())
        self.write(m)

    def set_stored_size(self, digest: str, stored_size: int) -> BlobRecord | None:
        """A blob's file changed form (compressed, or back to plain after a crash): one batch updates its record,
        ``disk_bytes``, the compressed-blob count, the saved bytes of every repository it is visible in, and
        takes it off the compression queue. None (and no change) when the blob is no longer indexed."""
        m = self.mutation()
        rec = m.blob(digest)
        m.delete("meta", b"compress:" + digest.encode())
        if rec is None:
            self.write(m)
            return None
        delta = stored_size - rec.stored_size
        if delta:
            was, now = rec.stored_size != rec.size, stored_size != rec.size
            rec.stored_size = stored_size
            m.put_blob(digest, rec)
            m.count("disk_bytes", delta)
            if was != now:
                m.count("compressed_blobs", 1 if now else -1)
            prefix = digest.encode() + SEP
            for key in m.keys_with_prefix("links", prefix):
                self._repo_saved(m, key[len(prefix):].decode(), -delta)
        self.write(m)
        return rec
