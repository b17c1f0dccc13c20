"""The operator API under ``/_cachesvc/api/``: usage, stats, listings, pins, removal, eviction, fsck.

Without authentication it answers only clients on the loopback interface (the operator CLI runs on the builder
itself); with ``--auth-file`` it answers any address, but only identities with the ``admin`` permission (checked
by ``cachesvc.auth.guard`` before the request gets here). The CLI in ``cachesvc.cli`` is its client.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import TAG_RE, parse_name
from cachesvc.auth.guard import ADMIN_GRANTED
from cachesvc.store import compression
from cachesvc.store.eviction import Eviction
from cachesvc.store.fsck import fsck


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, indent=1).encode(), content_type="application/json")


def require_local(request: BaseRequest) -> None:
    if request.get(ADMIN_GRANTED):  # auth is on and the caller holds the admin permission
        return
    remote = request.remote or ""
    try:
        if ipaddress.ip_address(remote.split("%")[0]).is_loopback:
            return
    except ValueError:
        if remote == "" or request.transport is None or remote.startswith("/"):  # unix socket
            return
    raise RegistryError("DENIED", {"reason": "the operator API answers loopback clients only"})


def _eviction(e: Eviction) -> dict[str, Any]:
    return {"when": e.when, "reason": e.reason, "repository": e.repo, "digest": e.digest, "tags": e.tags,
            "last_used": e.last_used, "bytes": e.bytes, "blobs": e.blobs}


def usage(reg: Registry) -> dict[str, Any]:
    c = reg.store.index.counters
    ev = reg.store.evictor
    repos = sorted(reg.store.index.repo_usages(), key=lambda ru: ru[1], reverse=True)
    return {
        "stored_bytes": c["stored_bytes"], "disk_bytes": c["disk_bytes"], "blob_bytes": c["blob_bytes"],
        "manifest_bytes": c["manifest_bytes"], "saved_bytes": c["stored_bytes"] - c["disk_bytes"],
        "blobs": c["blobs"], "manifests": c["manifests"], "roots": c["roots"],
        "budget_bytes": reg.settings.max_size, "evict_to": reg.settings.evict_to,
        "filesystem_free_bytes": ev.free_bytes(), "min_free_bytes": ev.min_free_bytes(),
        "index_bytes": _dir_size(reg.store.layout.index),
        "repositories": compression.repository_figures(reg.store, repos),
        "repository_count": len(repos),
        "compression": reg.store.compressor.status(),
    }


def _dir_size(path: Any) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _ref(text: str) -> tuple[str, str | None]:
    repo, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        return parse_name(text), None
    if not TAG_RE.fullmatch(tag):
        raise RegistryError("MANIFEST_INVALID", {"reason": f"invalid tag in {text!r}"})
    return parse_name(repo), tag


async def admin_api(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    require_local(request)
    action, method = p["action"], request.method
    store, ev = reg.store, reg.store.evictor
    if action == "usage" and method == "GET":
        return _json(usage(reg))
    if action == "stats" and method == "GET":
        total, series = reg.traffic.last_hour()
        return _json({
            "usage": usage(reg),
            "hits": reg.traffic.total.hits, "misses": reg.traffic.total.misses,
            "hit_ratio": reg.traffic.total.ratio(), "bytes_served": reg.traffic.total.bytes_served,
            "last_hour": {"hits": total.hits, "misses": total.misses, "hit_ratio": total.ratio(),
                          "bytes_served": total.bytes_served,
                          "per_minute": [[m * 60, c.hits, c.misses, c.bytes_served] for m, c in series]},
            "top_repositories": [{"name": r, "hits": c.hits, "misses": c.misses, "hit_ratio": c.ratio(),
                                  "bytes_served": c.bytes_served} for r, c in reg.traffic.top(10)],
            "recent_evictions": [_eviction(e) for e in reversed(ev.recent)][:20],
        })
    if action == "evict":
        if method == "GET" or request.query.get("dry_run") in ("1", "true"):
            plan = ev.plan()
            return _json({"used": plan.used, "budget": plan.budget, "free": plan.free,
                          "evictions": [_eviction(e) for e in plan.evictions[:1000]]})
        if method == "POST":
            done = await ev.run_pass(urgent=True)  # the operator waits for it
            return _json({"evictions": [_eviction(e) for e in done]})
    if action == "ls" and method == "GET":
        return _json(listing(reg, request.query.get("repo")))
    if action in ("pin", "unpin") and method == "POST":
        pattern = (await request.json()).get("ref", "")
        _ref(pattern.replace("*", "x").replace("?", "x"))
        changed = store.index.set_pin(pattern, action == "pin")
        return _json({"pattern": pattern, "pinned": action == "pin", "changed": changed})
    if action == "rm" and method == "POST":
        repo, tag = _ref((await request.json()).get("ref", ""))
        return _json({"evictions": [_eviction(e) for e in remove(reg, repo, tag)]})
    if action == "fsck" and method == "POST":
        return await run_fsck(reg, request)
    if action in ("remote", "prefetch"):  # shared tier: cachesvc/remote/admin.py
        from cachesvc.remote.admin import remote_admin

        return await remote_admin(reg, request, action)
    raise RegistryError("NAME_UNKNOWN", {"path": request.path[:200]}, message="no such operator endpoint")


async def run_fsck(reg: Registry, request: BaseRequest) -> web.StreamResponse:
    """Stream fsck's progress as NDJSON lines, ending with a summary line."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)

    async def emit(event: dict[str, Any]) -> None:
        await resp.write(json.dumps(event).encode() + b"\n")

    report = await fsck(reg.store, repair=request.query.get("repair") in ("1", "true"), emit=emit)
    summary = {k: v for k, v in vars(report).items() if k != "problems"}
    await emit({"type": "summary", **summary, "problems": len(report.problems)})
    return resp


def listing(reg: Registry, repo: str | None) -> dict[str, Any]:
    index, ev = reg.store.index, reg.store.evictor
    repos = [parse_name(repo)] if repo else [r for r, _ in index.repo_usages()]
    rows = []
    for r in repos:
        for tag in index.tags(r):
            digest = index.tag(r, tag)
            rec = index.manifest(r, digest) if digest else None
            if rec is None or digest is None:
                continue
            size = rec.size + sum(b.stored_size for b in (index.blob(d) for d in rec.blobs) if b is not None)
            pending = reg.store.recency.manifests.get((r, digest), 0)
            rows.append({"repository": r, "tag": tag, "digest": digest, "media_type": rec.media_type,
                         "bytes": size, "last_used": max(rec.last_used, pending) / 1000,
                         "pinned": ev.tag_pinned(r, tag)})
    return {"tags": rows}


def remove(reg: Registry, repo: str, tag: str | None) -> list[Eviction]:
    """``cachesvc rm``: evict a tag's manifest, or every root of a repository (reason ``manual``)."""
    index, ev = reg.store.index, reg.store.evictor
    if tag is not None:
        digest = index.tag(repo, tag)
        if digest is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"reference": f"{repo}:{tag}"})
        rec = index.manifest(repo, digest)
        done = ev.evict_root(repo, digest, rec.last_used if rec else 0, "manual")
        return [done] if done else []
    if not index.repo_exists(repo):
        raise RegistryError("NAME_UNKNOWN", {"name": repo})
    out = []
    for t, digest in list(index.repo_roots_by_age(repo)):
        if (done := ev.evict_root(repo, digest, t, "manual")) is not None:
            out.append(done)
    return out
