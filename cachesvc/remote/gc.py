"""``cachesvc remote-gc --max-age 14d [--dry-run]``: retention for the shared tier, run from any one node.

Roots of the shared tier are the tagged manifests and the manifests no index in their repository lists (as in
the local store). A root's last use is the newest of its use marker (``used/…``, refreshed by every node that
serves it, locally or from the shared tier), its own upload and its tags' pushes. The collection:

1. lists tags, manifests, use markers and blobs (one listing each; tag objects and manifest bodies are read);
2. roots unused for ``--max-age`` are dead; every manifest reachable from a live root is live;
3. deletes the tags pointing at dead manifests, then the dead manifests and their markers, then every blob no
   live manifest references.

What is never deleted: anything a live root reaches; objects younger than ``--grace`` (default 1 h: an upload in
progress, or a manifest whose blobs are going up first); and, to close the race with a node uploading while the
collection runs, the manifest listing is taken again just before blobs are deleted and the blobs of any manifest
that appeared meanwhile are spared (the write-behind also re-checks, after uploading a manifest, the blobs it
found already present, and uploads them again if they went).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachesvc.api.errors import RegistryError
from cachesvc.remote import keys
from cachesvc.remote.objects import ObjectInfo, Remote
from cachesvc.store.manifests import parse_manifest

log = logging.getLogger("cachesvc.remote.gc")


@dataclass
class GcReport:
    tags: int = 0
    manifests: int = 0
    blobs: int = 0
    live_roots: int = 0
    dead_roots: list[dict[str, Any]] = field(default_factory=list)
    deleted_tags: int = 0
    deleted_manifests: int = 0
    deleted_markers: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    kept_blobs: int = 0
    kept_bytes: int = 0
    spared_young: int = 0
    unreadable: int = 0
    dry_run: bool = False
    seconds: float = 0.0


@dataclass
class _Manifest:
    repo: str
    digest: str
    info: ObjectInfo
    blobs: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    readable: bool = True


async def _listing(remote: Remote, prefix: str) -> list[ObjectInfo]:
    return [info async for info in remote.list(prefix)]


async def _read_manifests(remote: Remote, infos: list[ObjectInfo]) -> dict[tuple[str, str], _Manifest]:
    out: dict[tuple[str, str], _Manifest] = {}
    sem = asyncio.Semaphore(16)

    async def one(info: ObjectInfo) -> None:
        parsed_key = keys.parse_repo_digest(info.key, keys.MANIFESTS)
        if parsed_key is None:
            return
        repo, digest = parsed_key
        m = _Manifest(repo, digest, info)
        out[(repo, digest)] = m
        async with sem:
            got = await remote.get(info.key)
        if got is None:  # deleted meanwhile
            out.pop((repo, digest), None)
            return
        body, attrs, _ = got
        try:
            content_type = attrs.get("Content-Type", "")
            parsed = parse_manifest(body, content_type if content_type.startswith("application/vnd.") else None)
        except RegistryError:
            m.readable = False
            return
        m.blobs, m.children = list(parsed.blobs), list(parsed.children)

    await asyncio.gather(*(one(i) for i in infos))
    return out


async def remote_gc(remote: Remote, max_age: float, *, dry_run: bool = False, grace: float = 3600.0,
                    now: float | None = None, progress: Callable[[str], None] | None = None) -> GcReport:
    """One collection pass over the shared tier (see the module docstring)."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    say = progress or (lambda _m: None)
    report = GcReport(dry_run=dry_run)
    cutoff = now - max_age
    young = now - grace

    # 1. listings
    tag_infos = await _listing(remote, keys.TAGS)
    manifest_infos = await _listing(remote, keys.MANIFESTS)
    used_infos = await _listing(remote, keys.USED)
    say(f"listed {len(tag_infos)} tags, {len(manifest_infos)} manifests, {len(used_infos)} use markers")
    manifests = await _read_manifests(remote, manifest_infos)
    report.manifests = len(manifests)
    report.unreadable = sum(not m.readable for m in manifests.values())

    tags: dict[tuple[str, str], tuple[str, float, str]] = {}  # (repo, tag) -> (digest, last push, key)
    sem = asyncio.Semaphore(16)

    async def read_tag(info: ObjectInfo) -> None:
        parsed = keys.parse_tag(info.key)
        if parsed is None:
            return
        async with sem:
            got = await remote.get(info.key)
        rec = keys.TagRecord.decode(got[0]) if got is not None else None
        if rec is not None:
            tags[parsed] = (rec.digest, max(info.modified, rec.pushed_at / 1000), info.key)

    await asyncio.gather(*(read_tag(i) for i in tag_infos))
    report.tags = len(tags)
    used: dict[tuple[str, str], tuple[float, str]] = {}
    for info in used_infos:
        parsed = keys.parse_repo_digest(info.key, keys.USED)
        if parsed is not None:
            used[parsed] = (info.modified, info.key)

    # 2. roots, their last use, and what live roots reach
    tagged: dict[tuple[str, str], list[tuple[str, float, str]]] = {}
    for (repo, tag), (digest, pushed, key) in tags.items():
        tagged.setdefault((repo, digest), []).append((tag, pushed, key))
    listed = {(m.repo, c) for m in manifests.values() for c in m.children}
    roots = [k for k in manifests if k in tagged or k not in listed]

    def last_use(k: tuple[str, str]) -> float:
        times = [manifests[k].info.modified, used.get(k, (0.0, ""))[0]]
        times += [pushed for _t, pushed, _key in tagged.get(k, [])]
        return max(times)

    live: set[tuple[str, str]] = set()

    def reach(k: tuple[str, str], depth: int = 0) -> None:
        if k in live or k not in manifests or depth > 16:
            return
        live.add(k)
        for child in manifests[k].children:
            reach((k[0], child), depth + 1)

    for k in roots:
        lu = last_use(k)
        if lu >= cutoff or not manifests[k].readable:
            reach(k)
        else:
            report.dead_roots.append({"repository": k[0], "digest": k[1], "last_used": lu,
                                      "tags": sorted(t for t, _p, _k in tagged.get(k, []))})
    report.live_roots = len(roots) - len(report.dead_roots)
    dead = [k for k in manifests if k not in live and manifests[k].info.modified < young]
    report.spared_young += sum(1 for k in manifests if k not in live and manifests[k].info.modified >= young)
    dead_set = set(dead)

    # Tags of dead manifests, and tags pointing at manifests that do not exist (older than the grace).
    dead_tag_keys = [key for (repo, _t), (digest, pushed, key) in tags.items()
                     if (repo, digest) in dead_set or ((repo, digest) not in manifests and pushed < young)]
    dead_marker_keys = [used[k][1] for k in used if k in dead_set or (k not in manifests and used[k][0] < young)]
    dead_manifest_keys = [manifests[k].info.key for k in dead]

    # 3. blobs: keep whatever a surviving manifest references.
    needed = {b for k, m in manifests.items() if k not in dead_set for b in m.blobs}
    blob_infos = await _listing(remote, keys.BLOBS)
    report.blobs = len(blob_infos)
    candidates: list[ObjectInfo] = []
    for info in blob_infos:
        digest = keys.parse_blob(info.key)
        if digest is None:
            continue
        if digest in needed:
            report.kept_blobs += 1
            report.kept_bytes += info.size
        elif info.modified >= young:
            report.spared_young += 1
        else:
            candidates.append(info)
    # Race guard: manifests uploaded since the first listing keep their blobs.
    again = await _listing(remote, keys.MANIFESTS)
    seen = {m.info.key for m in manifests.values()}
    fresh = [i for i in again if i.key not in seen]
    if fresh:
        newer = await _read_manifests(remote, fresh)
        spare = {b for m in newer.values() for b in m.blobs}
        kept = [c for c in candidates if keys.parse_blob(c.key) in spare]
        candidates = [c for c in candidates if keys.parse_blob(c.key) not in spare]
        report.spared_young += len(kept)
    report.deleted_tags = len(dead_tag_keys)
    report.deleted_manifests = len(dead_manifest_keys)
    report.deleted_markers = len(dead_marker_keys)
    report.deleted_blobs = len(candidates)
    report.deleted_bytes = sum(c.size for c in candidates)
    say(f"{len(report.dead_roots)} of {len(roots)} roots unused for longer than the max age; "
        f"{'would delete' if dry_run else 'deleting'} {len(dead_tag_keys)} tags, {len(dead_manifest_keys)} "
        f"manifests, {len(candidates)} blobs")
    if not dry_run:
        # Tags first (nothing resolves to what goes next), then manifests and markers, then blobs.
        await remote.delete(dead_tag_keys)
        await remote.delete(dead_manifest_keys + dead_marker_keys)
        await remote.delete([c.key for c in candidates])
    report.seconds = round(time.monotonic() - t0, 3)
    return report
