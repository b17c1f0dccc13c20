"""Eviction: keep the store inside its budget by removing whole roots, least recently used first.

Policy (what goes, and why) is decided here; the index's mutations do the deleting, one atomic batch per root,
so a manifest is never served without its blobs: evicting a root removes it, the indexes that list it and the
children nothing else keeps, and then exactly the blobs no remaining manifest references and no lease protects.

Reasons, checked in this order on every pass:

``max_age``  roots unused for ``--max-age`` go even under budget;
``quota``    a ``--repo-quota PATTERN=SIZE`` whose repositories together exceed SIZE evicts their own LRU roots;
``budget``   over ``--max-size``: evict down to ``--evict-to`` x max-size;
``min_free`` free space under ``--root`` below ``--min-free``: evict until free >= min-free / evict-to.

Roots whose tags match a ``--pin`` glob (on ``repo:tag``) are never evicted. Blobs pushed but not referenced by
any manifest yet wait out ``--upload-grace`` (and leases) before they may go.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cachesvc.metrics import Metrics
from cachesvc.priority import lower_this_thread
from cachesvc.settings import Settings
from cachesvc.store.index import Index, Mutation, Removed
from cachesvc.store.recency import Recency
from cachesvc.store.reclaim import Reclaimer
from cachesvc.tasks import cancel_and_wait
from cachesvc.units import parse_size

log = logging.getLogger("cachesvc.eviction")

CHAIN_ROOTS = 32  # roots chained into one batch built off the loop and written at once...
CHAIN_BLOBS = 64  # ...and blobs: the loop writes a batch in one go, so its size bounds that pause
ALL = 1 << 62  # bytes "still to free" when everything the candidates offer goes (max age)
PASS_INTERVAL = 5.0  # seconds between background passes (an upload over budget wakes the evictor at once)
INDEX_RESERVE = 64 * 1024 * 1024  # free space always kept for the index (at most 5 % of a small filesystem)


@dataclass
class Eviction:
    """One evicted root, for logs, ``cachesvc stats`` and the dry run."""

    when: float
    reason: str
    repo: str
    digest: str
    tags: list[str]
    last_used: float
    bytes: int
    blobs: int = 0


@dataclass(slots=True)
class Chained:
    """One root in a chained batch; ``manifests``/``blobs``: where its part of the batch's removals ends."""

    repo: str
    digest: str
    last_used: int
    tags: list[str]
    manifests: int
    blobs: int


@dataclass
class Chain:
    """A deletion batch of several roots, built off the loop, that the loop writes at once."""

    mutation: Mutation
    roots: list[Chained] = field(default_factory=list)
    exhausted: bool = False  # the candidates ran out while it was built


@dataclass
class Quota:
    pattern: str
    limit: int

    def matches(self, repo: str) -> bool:
        return fnmatch.fnmatchcase(repo, self.pattern) or repo.startswith(self.pattern.rstrip("/") + "/")


@dataclass
class Plan:
    """A dry run's answer: what would go, in order, and the usage it starts from."""

    used: int
    budget: int
    free: int
    evictions: list[Eviction] = field(default_factory=list)


class Evictor:
    """Runs eviction passes in the background and on demand (an upload that needs room)."""

    def __init__(self, settings: Settings, index: Index, reclaimer: Reclaimer, recency: Recency,
                 metrics: Metrics, *, clock: Callable[[], float], root: str) -> None:
        self.settings = settings
        self.index = index
        self.reclaimer = reclaimer
        self.recency = recency
        self.metrics = metrics
        self.clock = clock
        self.root = root
        self.quotas = [Quota(p, parse_size(s)) for p, _, s in (q.partition("=") for q in settings.repo_quota)]
        self.recent: collections.deque[Eviction] = collections.deque(maxlen=200)
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._planner = ThreadPoolExecutor(1, "cachesvc-evict", initializer=lower_this_thread)
        self.last_pass = 0.0

    # -- measurements --------------------------------------------------------------------------------------
    def used(self) -> int:
        return self.index.counters["disk_bytes"]

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def min_free_bytes(self) -> int:
        """The free-space floor: ``--min-free``, and never less than a small reserve that keeps room for the
        index's own writes (a RocksDB that hits a full disk stops accepting writes until restarted)."""
        st = os.statvfs(self.root)
        fs_bytes = st.f_blocks * st.f_frsize
        reserve = min(INDEX_RESERVE, int(fs_bytes * 0.05))
        size, fraction = self.settings.min_free
        return max(reserve, int(fs_bytes * fraction) if fraction else size)

    def over_budget(self, extra: int = 0) -> bool:
        budget = self.settings.max_size
        return bool(budget) and self.used() + extra > budget

    def short_of_space(self, extra: int = 0) -> bool:
        floor = self.min_free_bytes()
        return bool(floor) and self.free_bytes() - extra < floor

    def pin_patterns(self) -> list[str]:
        """Pins from the settings plus those an operator added at run time (``cachesvc pin``)."""
        return [*self.settings.pin, *self.index.pins()]

    def pinned(self, repo: str, digest: str) -> bool:
        patterns = self.pin_patterns()
        if not patterns:
            return False
        names = [f"{repo}:{t}" for t in self.index.tags_of(repo, digest)] + [f"{repo}@{digest}"]
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)

    def tag_pinned(self, repo: str, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{repo}:{tag}", p) for p in self.pin_patterns())

    # -- the mechanics of one root -------------------------------------------------------------------------
    def evict_root(self, repo: str, digest: str, last_used: int, reason: str) -> Eviction | None:
        """Remove one root and whatever it alone kept; returns what went (None if it was already gone).

        The candidate came from an ordered scan that requests may have overtaken: a root used since (even if
        that use is not flushed yet) or no longer a root is skipped, unless an operator asked for it by name."""
        chain = self._plan_chain([(last_used, repo, digest)], iter(()), ALL, reason, 1)  # on the loop: never stale
        evicted = self._apply_chain(chain, reason) if chain.roots else None
        return evicted[0] if evicted else None

    async def evict_off_loop(self, candidates: Iterator[tuple[int, str, str]], excess: Callable[[], int],
                             reason: str) -> list[Eviction]:
        """Evict ``candidates`` in order until ``excess()`` (bytes still to free) is <= 0 or they run out.

        Roots are chained into batches built (all their reads) in a worker thread while the loop keeps serving
        requests; the loop only checks and writes each batch, one atomic write for several roots. A batch gone
        stale (something was written meanwhile, or a request used one of its roots or leased one of its blobs)
        is built again; after a few tries its first root is evicted on the loop."""
        loop = asyncio.get_running_loop()
        done: list[Eviction] = []
        retry: list[tuple[int, str, str]] = []
        exhausted = False
        stale = 0
        while (want := excess()) > 0 and (retry or not exhausted):
            limit = 1 if reason == "quota" else CHAIN_ROOTS  # quota usage is not what the batch counts: go singly
            chain = await loop.run_in_executor(self._planner, self._plan_chain, retry, candidates, want, reason,
                                               limit)
            exhausted = chain.exhausted
            retry = []
            if not chain.roots:
                continue
            evicted = self._apply_chain(chain, reason)
            if evicted is not None:
                stale = 0
                done += evicted
                continue
            retry = [(r.last_used, r.repo, r.digest) for r in chain.roots]
            stale += 1
            if stale >= 3:  # written to on every try: take the first root on the loop, then try batches again
                last_used, repo, digest = retry.pop(0)
                if (ev := self.evict_root(repo, digest, last_used, reason)) is not None:
                    done.append(ev)
                stale = 0
        return done

    def _plan_chain(self, retry: list[tuple[int, str, str]], candidates: Iterator[tuple[int, str, str]],
                    want: int, reason: str, limit: int) -> Chain:
        """Chain roots (``retry`` first, then ``candidates``) into one deletion batch (reads only) until they
        free ``want`` bytes, or ``limit`` roots, or :data:`CHAIN_BLOBS` blobs are in it. Runs in the worker
        (evict_off_loop) or, for one root, on the loop (evict_root)."""
        m = self.index.mutation()  # its write count is read before any key: see Index.write_if_current
        chain = Chain(m)
        source = itertools.chain(retry, candidates)
        for last_used, repo, digest in source:
            if self._plan_into(m, repo, digest, last_used, reason):
                removed = m.removed
                chain.roots.append(Chained(repo, digest, last_used, self.index.tags_of(repo, digest),
                                           len(removed.manifests), len(removed.blobs)))
                if (-m.deltas.get("disk_bytes", 0) >= want or len(chain.roots) >= limit
                        or len(removed.blobs) >= CHAIN_BLOBS):
                    break
        else:
            chain.exhausted = True
        m.close_iterators()
        return chain

    def _plan_into(self, m: Mutation, repo: str, digest: str, last_used: int, reason: str) -> bool:
        """Add one root's deletion to ``m`` (reads only; any thread). False when the root is gone, moved on,
        or was used (noted in memory) since the candidate was listed."""
        rec = m.manifest(repo, digest)
        if rec is None:
            return False
        if reason != "manual" and (rec.last_used != last_used or not m.is_root_entry(repo, digest, last_used)
                                   or self._used_since(repo, digest, last_used)):
            return False
        return self.index.plan_manifest_deletion(repo, digest, self.recency.lease_of, m) is not None

    def _used_since(self, repo: str, digest: str, last_used: int) -> bool:
        """A request used the root after ``last_used`` (noted in memory, maybe not flushed to the index yet)."""
        return self.recency.manifests.get((repo, digest), 0) > last_used

    def _apply_chain(self, chain: Chain, reason: str) -> list[Eviction] | None:
        """On the loop: write a batch built off the loop and record its roots. None when it went stale while
        it was built: something was written meanwhile, a request used one of its roots (the next build skips
        it) or a HEAD/GET leased a blob it would drop (the next build keeps that blob)."""
        m = chain.mutation
        now = self.index.now_ms()
        used = reason != "manual" and any(self._used_since(r.repo, r.digest, r.last_used) for r in chain.roots)
        if used or any(self.recency.lease_of(d) > now for d, _ in m.removed.blobs):
            m.close_iterators()
            return None
        if not self.index.write_if_current(m):
            return None
        out = []
        manifests = blobs = 0
        for r in chain.roots:
            removed = Removed(m.removed.manifests[manifests:r.manifests], m.removed.blobs[blobs:r.blobs], [])
            manifests, blobs = r.manifests, r.blobs
            out.append(self._record(removed, r.repo, r.digest, r.tags, r.last_used, reason))
        return out

    def _record(self, removed: Removed, repo: str, digest: str, tags: list[str], last_used: int,
                reason: str) -> Eviction:
        self._reclaim(removed)
        freed = sum(size for _, _, size in removed.manifests) + sum(size for _, size in removed.blobs)
        n_blobs = len(removed.blobs)
        ev = Eviction(self.clock(), reason, repo, digest, tags, last_used / 1000, freed, n_blobs)
        self.recent.append(ev)
        self.metrics.evictions.labels(reason).inc()
        self.metrics.evicted_bytes.labels(reason).inc(freed)
        log.info("evicted %s@%s (tags: %s) for %s: %d bytes, %d blobs", repo, digest, ",".join(tags) or "-",
                 reason, freed, n_blobs)
        return ev

    def _reclaim(self, removed: Removed) -> None:
        self.reclaimer.discard(d for d, _ in removed.blobs)

    def sweep_orphans(self, limit: int = 100_000) -> int:
        """Drop unreferenced blobs whose grace and leases have run out."""
        now = self.index.now_ms()
        n = 0
        for key, digest in list(self._take(self.index.due_orphans(now), limit)):
            removed = self.index.drop_orphan(key, digest, self.recency.lease_of(digest))
            if removed is not None:
                self._reclaim(removed)
                n += len(removed.blobs)
        return n

    @staticmethod
    def _take(it: Iterator[tuple[bytes, str]], limit: int) -> Iterator[tuple[bytes, str]]:
        for i, item in enumerate(it):
            if i >= limit:
                return
            yield item

    # -- policy ----------------------------------------------------------------------------------------------
    def candidates(self, reason: str) -> Iterator[tuple[int, str, str]]:
        """Roots in eviction order for a reason: ``(last use ms, repo, digest)``, pinned ones skipped."""
        if reason == "quota":
            return iter(())
        for _key, t, repo, digest in self.index.roots_by_age():
            if not self.pinned(repo, digest):
                yield t, repo, digest

    def quota_candidates(self, quota: Quota) -> Iterator[tuple[int, str, str]]:
        repos = [r for r, _ in self.index.repo_usages() if quota.matches(r)]
        streams = [((t, r, d) for t, d in self.index.repo_roots_by_age(r)) for r in repos]
        for t, repo, digest in heapq.merge(*streams):
            if not self.pinned(repo, digest):
                yield t, repo, digest

    def quota_usage(self, quota: Quota) -> int:
        """Bytes on disk of the matching repositories (what compression at rest saves is not counted)."""
        return sum(u - self.index.repo_saved_of(r) for r, u in self.index.repo_usages() if quota.matches(r))

    async def run_pass(self, *, need: int = 0) -> list[Eviction]:
        """One eviction pass. Each root goes in one atomic batch; between roots the pass yields to requests
        now and then, so serving continues while it runs."""
        self.last_pass = self.clock()
        done: list[Eviction] = []
        self.sweep_orphans()
        if self.settings.max_age:
            cutoff = self.index.now_ms() - int(self.settings.max_age * 1000)
            done += await self.evict_off_loop(self._until(self.candidates("max_age"), lambda t: t >= cutoff),
                                              lambda: ALL, "max_age")
        for quota in self.quotas:
            if self.quota_usage(quota) > quota.limit:
                target = int(quota.limit * self.settings.evict_to)
                done += await self.evict_off_loop(self.quota_candidates(quota),
                                                  lambda q=quota, t=target: self.quota_usage(q) - t, "quota")
        budget = self.settings.max_size
        if budget and self.used() + need > budget:
            target = int(budget * self.settings.evict_to) - need
            done += await self.evict_off_loop(self.candidates("budget"), lambda: self.used() - target, "budget")
        floor = self.min_free_bytes()
        if floor and self.free_bytes() - need < floor:
            start_used = self.used()
            deficit = int(floor / self.settings.evict_to) - (self.free_bytes() - need)
            done += await self.evict_off_loop(self.candidates("min_free"),
                                              lambda: deficit - (start_used - self.used()), "min_free")
        if done:
            self.sweep_orphans()
        return done

    @staticmethod
    def _until(it: Iterator[tuple[int, str, str]], stop: Callable[[int], bool]) -> Iterator[tuple[int, str, str]]:
        for item in it:
            if stop(item[0]):
                return
            yield item

    async def make_room(self, size: int) -> bool:
        """Before storing ``size`` more bytes: evict if needed; False when it still would not fit."""
        if not self.over_budget(size) and not self.short_of_space(size):
            return True
        done = await self.run_pass(need=size)
        if done:  # the space comes back only once the evicted files are really unlinked
            await self.reclaimer.drained(30)
        return not self.over_budget(size) and not self.short_of_space(size)

    def plan(self) -> Plan:
        """What a pass would evict now, without evicting anything (``cachesvc evict --dry-run``)."""
        plan = Plan(self.used(), self.settings.max_size, self.free_bytes())
        gone: set[tuple[str, str]] = set()
        freed_blobs: set[str] = set()
        now = self.index.now_ms()

        def cost(repo: str, digest: str) -> tuple[int, int]:
            stack, total, nblobs = [(repo, digest)], 0, 0
            while stack:
                r, d = stack.pop()
                if (r, d) in gone:
                    continue
                rec = self.index.manifest(r, d)
                if rec is None:
                    continue
                gone.add((r, d))
                total += rec.size
                for blob in rec.blobs:
                    users = [u for u in self.index.manifests_using_blob(blob) if u not in gone]
                    if not users and blob not in freed_blobs and self.recency.lease_of(blob) <= now:
                        brec = self.index.blob(blob)
                        if brec is not None and brec.protected_until() <= now:
                            freed_blobs.add(blob)
                            total += brec.stored_size
                            nblobs += 1
                stack.extend((r, c) for c in rec.children)
            return total, nblobs

        def add(t: int, repo: str, digest: str, reason: str) -> int:
            if (repo, digest) in gone:
                return 0
            tags = self.index.tags_of(repo, digest)
            size, nblobs = cost(repo, digest)
            plan.evictions.append(Eviction(self.clock(), reason, repo, digest, tags, t / 1000, size, nblobs))
            return size

        if self.settings.max_age:
            cutoff = now - int(self.settings.max_age * 1000)
            for t, repo, digest in self._until(self.candidates("max_age"), lambda t: t >= cutoff):
                add(t, repo, digest, "max_age")
        freed = sum(e.bytes for e in plan.evictions)
        for quota in self.quotas:
            excess = self.quota_usage(quota) - int(quota.limit * self.settings.evict_to)
            if self.quota_usage(quota) > quota.limit:
                for t, repo, digest in self.quota_candidates(quota):
                    if excess <= 0:
                        break
                    got = add(t, repo, digest, "quota")
                    excess -= got
                    freed += got
        budget = self.settings.max_size
        if budget and plan.used - freed > budget:
            target = int(budget * self.settings.evict_to)
            for t, repo, digest in self.candidates("budget"):
                if plan.used - freed <= target:
                    break
                freed += add(t, repo, digest, "budget")
        floor = self.min_free_bytes()
        if floor and plan.free + freed < floor:
            goal = int(floor / self.settings.evict_to)
            for t, repo, digest in self.candidates("min_free"):
                if plan.free + freed >= goal:
                    break
                freed += add(t, repo, digest, "min_free")
        return plan

    # -- background ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._planner.shutdown(wait=True)

    def poke(self) -> None:
        """Something grew: let the background pass look now instead of at its next tick."""
        if self.over_budget() or self.short_of_space():
            self.wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), PASS_INTERVAL)
            self.wake.clear()
            try:
                started = time.perf_counter()
                done = await self.run_pass()
                if done:
                    log.info("eviction pass: %d roots, %d bytes in %.3fs", len(done), sum(e.bytes for e in done),
                             time.perf_counter() - started)
            except Exception:
                log.exception("eviction pass failed; will retry")
