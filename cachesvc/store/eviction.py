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
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cachesvc.metrics import Metrics
from cachesvc.priority import idle_this_thread, lower_this_thread
from cachesvc.settings import Settings
from cachesvc.store.index import Index, Removed
from cachesvc.store.planner import Candidate, Chain, PlannerError, PlannerProcess, plan_chain
from cachesvc.store.recency import Recency
from cachesvc.store.reclaim import Reclaimer
from cachesvc.tasks import cancel_and_wait
from cachesvc.units import parse_size

log = logging.getLogger("cachesvc.eviction")

CHAIN_ROOTS = 32  # roots chained into one batch built off the loop and written at once (and CHAIN_BLOBS blobs)
HELPER_AFTER = 8  # batches a pass writes before its planning moves to a helper process (planner.py)...
HELPER_DEPTH = 16  # ...which plans this many at once (each plan starts with a catch-up of ~10 ms)
HELPER_RETRY = 600.0  # seconds before a helper that failed is tried again (meanwhile: the thread plans)
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
                 metrics: Metrics, *, clock: Callable[[], float], root: str,
                 follow_dir: Path | None = None) -> None:
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
        # Background passes plan on idle CPU only; a pass somebody waits for (an upload that needs room, an
        # operator's `cachesvc evict`) has a worker of its own at normal background priority (priority.py).
        self._planner = ThreadPoolExecutor(1, "cachesvc-evict", initializer=idle_this_thread)
        self._urgent = ThreadPoolExecutor(1, "cachesvc-evict-now", initializer=lower_this_thread)
        self.follow_dir = follow_dir  # where a helper process keeps its index follower (None: no helper)
        self._helper: PlannerProcess | None = None
        self._helper_failed_at: float | None = None
        self._evicting = 0  # evict_off_loop calls running (a background pass and an upload's can overlap)
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
        chain = plan_chain(self.index, [(last_used, repo, digest)], ALL, reason, 1, self.recency.lease_of,
                           self._used_since)  # on the loop: never stale
        evicted = self._apply_chain(chain, reason) if chain.roots else None
        return evicted[0] if evicted else None

    async def evict_off_loop(self, candidates: Iterator[Candidate], excess: Callable[[], int],
                             reason: str, *, urgent: bool = False) -> list[Eviction]:
        """Evict ``candidates`` in order until ``excess()`` (bytes still to free) is <= 0 or they run out.

        Roots are chained into batches built (all their reads) off the loop, in a worker thread or, once a pass
        has written :data:`HELPER_AFTER` batches, in a helper process, while the loop keeps serving requests;
        the loop only checks and writes each batch, one atomic write for several roots. A batch gone stale
        (something was written meanwhile, or a request used one of its roots or leased one of its blobs) is
        built again; after a few tries its first root is evicted on the loop.

        ``urgent``: somebody waits for this pass, so it plans in the normal-priority worker, never on idle CPU
        alone, and without the helper (which a background pass may be using meanwhile)."""
        self._evicting += 1
        try:
            return await self._evict_off_loop(candidates, excess, reason, urgent)
        finally:
            self._evicting -= 1
            if self._evicting == 0:  # the helper is for big passes: it does not idle between them
                await self._close_helper()

    async def _evict_off_loop(self, candidates: Iterator[Candidate], excess: Callable[[], int],
                              reason: str, urgent: bool) -> list[Eviction]:
        loop = asyncio.get_running_loop()
        worker = self._urgent if urgent else self._planner
        done: list[Eviction] = []
        todo: collections.deque[Candidate] = collections.deque()  # listed, not yet planned (retries first)
        exhausted = False
        stale = written = 0
        while (want := excess()) > 0 and (todo or not exhausted):
            limit = 1 if reason == "quota" else CHAIN_ROOTS  # quota usage is not what the batch counts: go singly
            helper = (await self._helper_for(loop) if written >= HELPER_AFTER and reason != "quota" and not urgent
                      else None)
            exhausted = await loop.run_in_executor(worker, self._list_ahead, todo, candidates,
                                                   limit * HELPER_DEPTH if helper else limit)
            chains = (self._chains_from_helper(loop, helper, todo, want, reason, limit) if helper
                      else self._chain_from_thread(loop, worker, todo, want, reason, limit))
            again: list[Candidate] = []  # roots of batches not written: planned again
            async for chain in chains:
                if again or excess() <= 0:  # after a stale batch, the ones planned on top of it are stale too
                    again += [(r.last_used, r.repo, r.digest) for r in chain.roots]
                    chain.drop()
                    continue
                evicted = self._apply_chain(chain, reason)
                if evicted is None:
                    again += [(r.last_used, r.repo, r.digest) for r in chain.roots]
                    stale += 1
                    continue
                stale = 0
                written += 1
                done += evicted
            todo.extendleft(reversed(again))
            exhausted = exhausted and not todo
            if stale >= 3:  # written to on every try: take the first root on the loop, then try batches again
                last_used, repo, digest = todo.popleft()
                if (ev := self.evict_root(repo, digest, last_used, reason)) is not None:
                    done.append(ev)
                stale = 0
        return done

    @staticmethod
    def _list_ahead(todo: collections.deque[Candidate], candidates: Iterator[Candidate], ahead: int) -> bool:
        """In the worker thread: list candidates until ``ahead`` are waiting; True when they ran out."""
        while len(todo) < ahead:
            item = next(candidates, None)
            if item is None:
                return True
            todo.append(item)
        return False

    async def _chain_from_thread(self, loop: asyncio.AbstractEventLoop, worker: ThreadPoolExecutor,
                                 todo: collections.deque[Candidate], want: int, reason: str,
                                 limit: int) -> AsyncIterator[Chain]:
        """The next batch, planned in a worker thread."""
        chain = await loop.run_in_executor(worker, self._plan_in_thread, todo, want, reason, limit)
        if chain.roots:
            yield chain
        else:
            chain.drop()

    def _plan_in_thread(self, todo: collections.deque[Candidate], want: int, reason: str, limit: int) -> Chain:
        chain = plan_chain(self.index, list(todo), want, reason, limit, self.recency.lease_of, self._used_since)
        for _ in range(chain.consumed):
            todo.popleft()
        return chain

    async def _chains_from_helper(self, loop: asyncio.AbstractEventLoop, helper: PlannerProcess,
                                  todo: collections.deque[Candidate], want: int, reason: str,
                                  limit: int) -> AsyncIterator[Chain]:
        """Up to :data:`HELPER_DEPTH` batches planned by the helper, received one by one (each message is small,
        so unpickling it holds the interpreter lock only briefly). If the helper fails, the pass goes on in the
        thread."""
        try:
            writes_seen = await loop.run_in_executor(self._planner, self._ask, helper, todo, want, reason, limit)
            i = 0
            while True:
                got = await loop.run_in_executor(self._planner, helper.next_chain, writes_seen + i)
                if isinstance(got, int):
                    for _ in range(got):
                        todo.popleft()
                    return
                i += 1
                yield got
        except PlannerError as e:  # what it did not plan is still in ``todo``
            await loop.run_in_executor(self._planner, self._helper_failed, helper, str(e))

    def _ask(self, helper: PlannerProcess, todo: collections.deque[Candidate], want: int, reason: str,
             limit: int) -> int:
        """In the worker thread: send ``todo`` to the helper; returns the write count its plans start from."""
        writes_seen = self.index.writes  # before the helper catches up: see Index.write_if_current
        # The helper sees the index only: uses and leases noted in memory and not flushed yet go with it.
        fresh = [c for c in todo if not self._used_since(c[1], c[2], c[0])]
        todo.clear()
        todo.extend(fresh)
        helper.ask(fresh, want, reason, limit, HELPER_DEPTH, dict(self.recency.leases), self.index.now_ms())
        return writes_seen

    def _used_since(self, repo: str, digest: str, last_used: int) -> bool:
        """A request used the root after ``last_used`` (noted in memory, maybe not flushed to the index yet)."""
        return self.recency.manifests.get((repo, digest), 0) > last_used

    # -- the helper process -----------------------------------------------------------------------------------
    async def _helper_for(self, loop: asyncio.AbstractEventLoop) -> PlannerProcess | None:
        """The helper process for this pass, started on first use; None when there is none to use."""
        if self.follow_dir is None:
            return None
        if self._helper_failed_at is not None and self.clock() - self._helper_failed_at < HELPER_RETRY:
            return None
        if self._helper is None:
            helper = PlannerProcess(self.index.path, self.follow_dir)
            try:
                await loop.run_in_executor(self._planner, helper.start)
            except (PlannerError, OSError) as e:
                await loop.run_in_executor(self._planner, self._helper_failed, helper, str(e))
                return None
            log.info("eviction: planning in a helper process (pid %s)", helper.proc.pid if helper.proc else "?")
            self._helper = helper
        return self._helper

    def _helper_failed(self, helper: PlannerProcess, why: str) -> None:
        """In the worker thread (stopping the helper can wait for it)."""
        log.warning("eviction: %s; planning in the server for the next %.0f s", why, HELPER_RETRY)
        self._helper_failed_at = self.clock()
        if self._helper is helper:
            self._helper = None
        helper.close()

    async def _close_helper(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            # the urgent worker: an upload's pass may be the last to end, and must not wait for idle CPU
            await asyncio.get_running_loop().run_in_executor(self._urgent, helper.close)

    def _apply_chain(self, chain: Chain, reason: str) -> list[Eviction] | None:
        """On the loop: write a batch built off the loop and record its roots. None when it went stale while
        it was built: something was written meanwhile, a request used one of its roots (the next build skips
        it) or a HEAD/GET leased a blob it would drop (the next build keeps that blob)."""
        now = self.index.now_ms()
        used = reason != "manual" and any(self._used_since(r.repo, r.digest, r.last_used) for r in chain.roots)
        m = chain.batch(self.index)
        if used or any(self.recency.lease_of(d) > now for d, _ in m.removed.blobs):
            chain.drop()
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

    async def run_pass(self, *, need: int = 0, urgent: bool = False) -> list[Eviction]:
        """One eviction pass. Each root goes in one atomic batch; between roots the pass yields to requests
        now and then, so serving continues while it runs. ``urgent``: somebody waits for it (see
        :meth:`evict_off_loop`); a pass that must make room (``need``) always is."""
        urgent = urgent or need > 0
        self.last_pass = self.clock()
        done: list[Eviction] = []
        self.sweep_orphans()
        if self.settings.max_age:
            cutoff = self.index.now_ms() - int(self.settings.max_age * 1000)
            done += await self.evict_off_loop(self._until(self.candidates("max_age"), lambda t: t >= cutoff),
                                              lambda: ALL, "max_age", urgent=urgent)
        for quota in self.quotas:
            if self.quota_usage(quota) > quota.limit:
                target = int(quota.limit * self.settings.evict_to)
                done += await self.evict_off_loop(self.quota_candidates(quota),
                                                  lambda q=quota, t=target: self.quota_usage(q) - t, "quota",
                                                  urgent=urgent)
        budget = self.settings.max_size
        if budget and self.used() + need > budget:
            target = int(budget * self.settings.evict_to) - need
            done += await self.evict_off_loop(self.candidates("budget"), lambda: self.used() - target, "budget",
                                              urgent=urgent)
        floor = self.min_free_bytes()
        if floor and self.free_bytes() - need < floor:
            start_used = self.used()
            deficit = int(floor / self.settings.evict_to) - (self.free_bytes() - need)
            done += await self.evict_off_loop(self.candidates("min_free"),
                                              lambda: deficit - (start_used - self.used()), "min_free",
                                              urgent=urgent)
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
            await self.reclaimer.freed()
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
        await self._close_helper()
        self._planner.shutdown(wait=True)
        self._urgent.shutdown(wait=True)

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
