"""``cachesvc fsck``: re-hash every blob against its digest and check that the index and the files agree.

A blob compressed at rest is hashed decompressed (what clients get); a damaged compressed file counts as corrupt.

Problems found: a blob whose bytes no longer hash to its digest (``corrupt``), an indexed blob whose file is
gone (``missing``), a file under ``blobs/`` the index does not know, or a second form of a blob besides the
one its record describes (``stray``), a manifest that names a blob
or child it no longer has (``broken``). With ``repair``: corrupt blobs are moved to ``quarantine/``, corrupt and
missing blobs are dropped together with every manifest that needs them (those become clean misses), stray files
are removed, broken manifests are dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cachesvc.store.compression import hash_blob
from cachesvc.store.records import BlobRecord, ManifestRecord
from cachesvc.store.seekable import SeekableError

Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class FsckReport:
    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    corrupt: int = 0
    missing: int = 0
    stray: int = 0
    broken: int = 0
    quarantined: int = 0
    dropped_manifests: int = 0
    removed_stray: int = 0
    seconds: float = 0.0
    problems: list[dict[str, str]] = field(default_factory=list)


def content_hex(files: Any, digest: str, algorithm: str) -> str | None:
    """Hex digest of the blob's content (decompressed if compressed at rest); None when no file is there."""
    h = hashlib.new(algorithm)
    try:
        if not hash_blob(files, digest, h.update):
            return None
    except SeekableError as e:
        return f"<unreadable compressed file: {e}>"
    return h.hexdigest()


async def fsck(store: Any, *, repair: bool, emit: Emit) -> FsckReport:
    """Check everything; report progress through ``emit`` as it goes."""
    index, files = store.index, store.files
    loop = asyncio.get_running_loop()
    report = FsckReport()
    started = last_emit = time.monotonic()
    total = index.counters["blobs"]

    async def problem(kind: str, what: str) -> None:
        report.problems.append({"kind": kind, "what": what})
        await emit({"type": "problem", "kind": kind, "what": what})

    digests = [(k.decode(), BlobRecord.decode(v)) for k, v in index.scan("blobs")]
    for digest, rec in digests:
        algorithm, _, hex_digest = digest.partition(":")
        actual = await loop.run_in_executor(None, content_hex, files, digest, algorithm)
        report.blobs += 1
        report.bytes += rec.size
        if index.blob(digest) is None:  # evicted while we were hashing
            continue
        if actual is None:
            report.missing += 1
            await problem("missing", digest)
            if repair:
                report.dropped_manifests += len(store.lose_blob(digest, "file missing (fsck)").manifests)
        elif actual != hex_digest:
            report.corrupt += 1
            await problem("corrupt", f"{digest} hashes to {algorithm}:{actual}")
            if repair:
                if files.quarantine(digest):
                    report.quarantined += 1
                report.dropped_manifests += len(store.lose_blob(digest, "corrupt (fsck)").manifests)
        if time.monotonic() - last_emit > 0.25:
            last_emit = time.monotonic()
            await emit({"type": "progress", "done": report.blobs, "total": total, "bytes": report.bytes})
    await emit({"type": "progress", "done": report.blobs, "total": max(total, report.blobs), "bytes": report.bytes})

    # Files the index does not know. A rename-in and its index write happen without a pause in between, so
    # a file seen here without a record is really stray (or was dropped a moment ago and is on its way out).
    for algorithm_dir in sorted(os.scandir(store.layout.blobs), key=lambda e: e.name):
        if not algorithm_dir.is_dir():
            continue
        for shard in os.scandir(algorithm_dir.path):
            for entry in os.scandir(shard.path):
                compressed = entry.name.endswith(".zst")
                digest = f"{algorithm_dir.name}:{entry.name.removesuffix('.zst')}"
                rec = index.blob(digest)
                if rec is None and store.reclaimer.is_pending(digest):
                    continue  # dropped a moment ago; the reclaimer is removing it
                if rec is None:
                    report.stray += 1
                    await problem("stray", entry.path)
                    if repair and files.to_trash(digest):
                        report.removed_stray += 1
                elif compressed != (rec.stored_size != rec.size) and store.compressor.busy != digest:
                    # The form the record does not describe, outside a swap in progress (a crashed swap is
                    # repaired at start, so this is left over from something else).
                    report.stray += 1
                    await problem("stray", entry.path)
                    if repair and files.trash_form(digest, compressed):
                        report.removed_stray += 1

    for key, value in list(index.scan("manifests")):
        repo, digest = key.decode().split("\0")
        rec = ManifestRecord.decode(value)
        report.manifests += 1
        lacking = [b for b in rec.blobs if index.linked_size(b, repo) is None]
        lacking += [c for c in rec.children if index.manifest(repo, c) is None]
        if lacking and index.manifest(repo, digest) is not None:
            report.broken += 1
            await problem("broken", f"{repo}@{digest} lacks {', '.join(lacking)}")
            if repair:
                removed = index.delete_manifest(repo, digest)
                if removed is not None:
                    report.dropped_manifests += len(removed.manifests)
                    store._after_removal(removed)
    if repair:
        await loop.run_in_executor(None, files.empty_trash)
    report.seconds = time.monotonic() - started
    return report
