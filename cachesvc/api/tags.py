"""Listings: ``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog``, both with ``n``/``last`` pagination."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_name

MAX_PAGE = 10_000


def _page_size(request: BaseRequest) -> int | None:
    raw = request.query.get("n")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise RegistryError("UNSUPPORTED", {"reason": "n must be a non-negative integer"},
                            message="invalid pagination number", status=400)
    return min(int(raw), MAX_PAGE)


def _page(items_plus_one: list[str], n: int | None) -> tuple[list[str], bool]:
    if n is None or len(items_plus_one) <= n:
        return items_plus_one, False
    return items_plus_one[:n], True


def _json(body: dict[str, object], link: str | None) -> web.Response:
    headers = {"Link": f'<{link}>; rel="next"'} if link else None
    return web.Response(status=200, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)


async def list_tags(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    if not reg.store.index.repo_exists(repo):
        raise RegistryError("NAME_UNKNOWN", {"name": repo})
    n = _page_size(request)
    last = request.query.get("last") or None
    if n == 0:
        return _json({"name": repo, "tags": []}, None)
    tags, more = _page(reg.store.index.tags(repo, last, None if n is None else n + 1), n)
    link = f"/v2/{repo}/tags/list?n={n}&last={quote(tags[-1])}" if more and tags else None
    return _json({"name": repo, "tags": tags}, link)


async def catalog(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    n = _page_size(request)
    last = request.query.get("last") or None
    if n == 0:
        return _json({"repositories": []}, None)
    repos, more = _page(reg.store.index.repos(last, None if n is None else n + 1), n)
    link = f"/v2/_catalog?n={n}&last={quote(repos[-1], safe='/')}" if more and repos else None
    return _json({"repositories": repos}, link)
