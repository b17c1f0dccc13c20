"""Warm start: pull named caches (``repo:tag``) from the shared tier into the local tier ahead of the first build.

``cachesvc prefetch REPO:TAG…`` asks a running server (admin API ``POST prefetch``, progress streamed back);
``--prefetch PATTERN`` (repeatable glob on ``repo:tag``) does the same for every matching tag of the shared tier
when the server starts. Either way the work runs in the server's background, blobs through the same
single-flight fetches as client reads (so a build that starts meanwhile shares the transfers), and each manifest
is stored locally only once all its blobs are.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachesvc.remote import keys
from cachesvc.remote.objects import RemoteUnavailable
from cachesvc.units import format_size

if TYPE_CHECKING:
    from cachesvc.remote.tier import RemoteManifest, RemoteTier

log = logging.getLogger("cachesvc.remote")

MAX_JOBS_KEPT = 200


@dataclass
class Job:
    """One ``repo:tag`` being prefetched, with its progress."""

    ref: str
    state: str = "queued"  # queued, resolving, fetching, done, missing, failed
    blobs_total: int = 0
    blobs_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    pending: set[str] = field(default_factory=set)

    @property
    def over(self) -> bool:
        return self.state in ("done", "missing", "failed")

    def view(self, live: dict[str, int]) -> dict[str, Any]:
        in_flight = sum(live.get(d, 0) for d in self.pending)
        return {"ref": self.ref, "state": self.state, "blobs_total": self.blobs_total,
                "blobs_done": self.blobs_done, "bytes_total": self.bytes_total,
                "bytes_done": min(self.bytes_total, self.bytes_done + in_flight) if self.bytes_total
                else self.bytes_done, "error": self.error,
                "seconds": round((self.finished or time.time()) - self.started, 2)}


def split_ref(ref: str) -> tuple[str, str]:
    """``repo:tag`` (tag defaults to ``latest``) or ``repo@digest``."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _sizes(body: bytes) -> dict[str, int]:
    """Descriptor sizes by digest, from a manifest's JSON (for progress totals before anything is fetched)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    out: dict[str, int] = {}
    for d in [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]:
        if isinstance(d, dict) and isinstance(d.get("digest"), str) and isinstance(d.get("size"), int):
            out[d["digest"]] = d["size"]
    return out


class Prefetcher:
    def __init__(self, tier: RemoteTier) -> None:
        self.tier = tier
        self.jobs: dict[str, Job] = {}

    def submit(self, refs: list[str]) -> list[Job]:
        """Start prefetching ``refs`` in the background (a ref already being prefetched is joined, not redone)."""
        jobs = []
        for ref in dict.fromkeys(refs):
            job = self.jobs.get(ref)
            if job is None or job.over:
                job = Job(ref)
                self.jobs[ref] = job
                self.tier.spawn(self._run(job))
            jobs.append(job)
        while len(self.jobs) > MAX_JOBS_KEPT:
            oldest = next((r for r, j in self.jobs.items() if j.over), None)
            if oldest is None:
                break
            del self.jobs[oldest]
        return jobs

    async def prefetch(self, refs: list[str]) -> list[Job]:
        jobs = self.submit(refs)
        while not all(j.over for j in jobs):
            await asyncio.sleep(0.05)
        return jobs

    async def _run(self, job: Job) -> None:
        tier = self.tier
        repo, ref = split_ref(job.ref)
        job.state = "resolving"
        try:
            digest = ref if ":" in ref else await tier.resolve_tag(repo, ref, lookup=False)
            found: RemoteManifest | None = None
            if digest is not None:
                found = await tier.remote_manifest(repo, digest, lookup=False)
            if found is None:
                job.state, job.error = "missing", "not in the shared tier (or not whole there)"
                return
            sizes = _sizes(found.body)
            for child in found.children.values():
                if child is not None:
                    sizes.update(_sizes(child.body))
            blobs = found.all_blobs()
            job.blobs_total = len(blobs)
            job.bytes_total = sum(sizes.get(b, 0) for b in blobs)
            job.pending = set(blobs)
            job.state = "fetching"

            def done(digest: str, size: int) -> None:
                if digest in job.pending:
                    job.pending.discard(digest)
                    job.blobs_done += 1
                    job.bytes_done += size or sizes.get(digest, 0)

            ok = await tier.materialize(repo, None if ":" in ref else ref, found, on_blob=done)
            job.state = "done" if ok else "failed"
            if not ok:
                job.error = "some content could not be fetched (see the server log)"
        except RemoteUnavailable as e:
            job.state, job.error = "failed", str(e)
        except Exception as e:  # pragma: no cover - reported, never raised into the server
            log.exception("prefetch of %s failed", job.ref)
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()
            log.info("prefetch %s: %s (%d/%d blobs, %s) in %.1fs%s", job.ref, job.state, job.blobs_done,
                     job.blobs_total, format_size(job.bytes_done), job.finished - job.started,
                     f": {job.error}" if job.error else "")

    async def matching(self, patterns: list[str]) -> list[str]:
        """Every ``repo:tag`` of the shared tier matching one of the globs."""
        found: list[str] = []
        for pattern in patterns:
            literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            prefix = literal.split(":", 1)[0] if ":" in literal else literal
            async for info in self.tier.remote.list(keys.TAGS + prefix):
                parsed = keys.parse_tag(info.key)
                if parsed is not None and fnmatch.fnmatchcase(f"{parsed[0]}:{parsed[1]}", pattern):
                    found.append(f"{parsed[0]}:{parsed[1]}")
        return list(dict.fromkeys(found))

    async def prefetch_patterns(self, patterns: list[str]) -> None:
        """``--prefetch``: runs once at start, in the background."""
        try:
            refs = await self.matching(patterns)
        except RemoteUnavailable as e:
            log.warning("--prefetch: cannot list the shared tier: %s", e)
            return
        if not refs:
            log.info("--prefetch %s: nothing in the shared tier matches", ", ".join(patterns))
            return
        log.info("--prefetch: pulling %d cache(s) from the shared tier: %s", len(refs), ", ".join(refs[:10]))
        t0 = time.monotonic()
        jobs = await self.prefetch(refs)
        total = sum(j.bytes_done for j in jobs)
        log.info("--prefetch: %d done, %d missing, %d failed; %s in %.1fs", sum(j.state == "done" for j in jobs),
                 sum(j.state == "missing" for j in jobs), sum(j.state == "failed" for j in jobs),
                 format_size(total), time.monotonic() - t0)

    def status(self) -> list[dict[str, Any]]:
        live = {d: f.written for d, f in self.tier.fetches.items()}
        return [j.view(live) for j in self.jobs.values()]
