"""Operator API of the shared tier, under ``/_cachesvc/api/`` (reached through ``cachesvc.api.admin``):

``GET remote``     the tier's state: mode, reachability, write-behind queue (depth, lag, errors), fetches in
                   flight, prefetch jobs;
``POST prefetch``  ``{"refs": ["repo:tag", ...]}``: start prefetching; the answer streams NDJSON progress lines
                   (``{"type": "progress", "jobs": [...]}``) until every job is over, then a ``summary`` line.
                   The work goes on in the server if the client disconnects.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_name
from cachesvc.remote.prefetch import split_ref

PROGRESS_INTERVAL = 0.5


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, indent=1).encode(), content_type="application/json")


async def remote_admin(reg: Registry, request: BaseRequest, action: str) -> web.StreamResponse:
    tier = reg.remote
    if tier is None:
        raise RegistryError("UNSUPPORTED", {"reason": "no shared tier: the server runs without --remote"},
                            message="no shared tier configured")
    if action == "remote" and request.method == "GET":
        return _json(tier.status())
    if action == "prefetch" and request.method == "POST":
        try:
            refs = (await request.json()).get("refs") or []
        except (ValueError, AttributeError):
            refs = None
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise RegistryError("UNSUPPORTED", {"reason": 'body must be {"refs": ["repo:tag", ...]}'},
                                message="bad prefetch request", status=400)
        for ref in refs:
            parse_name(split_ref(ref)[0])
        jobs = tier.prefetcher.submit(refs)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        last = 0.0
        loop = asyncio.get_running_loop()
        while True:
            done = all(j.over for j in jobs)
            if done or loop.time() - last >= PROGRESS_INTERVAL:
                live = {d: f.written for d, f in tier.fetches.items()}
                line = {"type": "summary" if done else "progress", "jobs": [j.view(live) for j in jobs]}
                await resp.write(json.dumps(line).encode() + b"\n")
                last = loop.time()
            if done:
                return resp
            await asyncio.sleep(0.02)
    raise RegistryError("NAME_UNKNOWN", {"path": request.path[:200]}, message="no such operator endpoint")
