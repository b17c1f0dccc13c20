"""Last-use recording without a RocksDB write per request.

Reads and writes note what they used in memory; a background task folds those notes into the index in one batch
every few seconds. A crash loses at most that many seconds of recency (never data): the LRU order is a little
stale, which eviction tolerates. Leases are consulted from memory too, so they protect a blob the instant the
client was told it exists, before any flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cachesvc.store.index import Index
from cachesvc.tasks import cancel_and_wait

log = logging.getLogger("cachesvc.recency")


class Recency:
    """In-memory last-use and lease notes, flushed to the index in batches."""

    def __init__(self, index: Index, *, grace_ms: int, clock: Callable[[], float], interval: float = 2.0) -> None:
        self.index = index
        self.grace_ms = grace_ms
        self.clock = clock
        self.interval = interval
        self.manifests: dict[tuple[str, str], int] = {}
        self.leases: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        # Shared tier (cachesvc/remote/tier.py Markers): told which manifests were used, once per flush.
        self.on_flush: Callable[[dict[tuple[str, str], int]], None] | None = None

    def touch_manifest(self, repo: str, digest: str) -> None:
        self.manifests[(repo, digest)] = int(self.clock() * 1000)

    def lease_blob(self, digest: str) -> None:
        """A client was just told this blob exists: keep it for the grace period, so the manifest that client
        pushes next finds it. A lease is not ended early by some manifest referencing the blob: with several
        builders exporting the same base layers, one builder's manifest would end another builder's lease."""
        self.leases[digest] = int(self.clock() * 1000) + self.grace_ms

    def lease_of(self, digest: str) -> int:
        """The lease noted in memory and not yet flushed (the index holds the flushed ones)."""
        return self.leases.get(digest, 0)

    def flush(self) -> None:
        manifests, self.manifests = self.manifests, {}
        leases, self.leases = self.leases, {}
        try:
            self.index.touch_manifests(manifests)
            self.index.extend_leases(leases)
        except Exception:
            # Keep the notes for the next attempt rather than lose them.
            for k, v in manifests.items():
                self.manifests[k] = max(v, self.manifests.get(k, 0))
            for k, v in leases.items():
                self.leases[k] = max(v, self.leases.get(k, 0))
            raise
        if self.on_flush is not None and manifests:
            self.on_flush(manifests)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.flush()
            except Exception:
                log.exception("recency flush failed; will retry")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self.flush()
