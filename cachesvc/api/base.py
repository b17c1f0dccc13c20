"""``GET /v2/``: the API version check every client starts with."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry


async def version_check(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    return web.Response(status=200, body=b"{}", content_type="application/json")
