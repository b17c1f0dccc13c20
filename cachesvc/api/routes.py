"""The route table: OCI Distribution paths (and the operator endpoints) to their handlers.

Paths are matched on the raw request path, before any percent-decoding or dot-segment handling, so a name such
as ``a/../b`` reaches the name validator (and is refused) instead of silently naming another repository.
Repository names contain ``/``, so each pattern anchors on the resource suffix and gives the name the rest.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api import base, blobs, manifests, referrers, tags, uploads
from cachesvc.api.context import Registry

Handler = Callable[[Registry, BaseRequest, dict[str, str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One path pattern and the handler for each method it allows; ``template`` labels metrics and logs."""

    template: str
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


def _route(template: str, regex: str, **methods: Handler) -> Route:
    return Route(template, re.compile(regex), {m.upper(): h for m, h in methods.items()})


REGISTRY_ROUTES: tuple[Route, ...] = (
    # Upload routes come before the blob route, which would otherwise take "uploads" for a digest.
    _route("/v2/{name}/blobs/uploads/", r"/v2/(?P<name>.+)/blobs/uploads/?", post=uploads.start_upload),
    _route("/v2/{name}/blobs/uploads/{session}", r"/v2/(?P<name>.+)/blobs/uploads/(?P<session>[^/]+)",
           get=uploads.upload_status, patch=uploads.patch_upload, put=uploads.finish_upload,
           delete=uploads.cancel_upload),
    _route("/v2/{name}/blobs/{digest}", r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)",
           head=blobs.head_blob, get=blobs.get_blob, delete=blobs.delete_blob),
    _route("/v2/{name}/manifests/{reference}", r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)",
           head=manifests.head_manifest, get=manifests.get_manifest, put=manifests.put_manifest,
           delete=manifests.delete_manifest),
    _route("/v2/{name}/tags/list", r"/v2/(?P<name>.+)/tags/list", get=tags.list_tags),
    _route("/v2/{name}/referrers/{digest}", r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)",
           get=referrers.list_referrers),
    _route("/v2/_catalog", r"/v2/_catalog", get=tags.catalog),
    _route("/v2/", r"/v2/?", get=base.version_check),
)


class Router:
    """Finds the route for a raw path; the hot registry routes are tried in order of how often they are hit."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            m = route.pattern.fullmatch(path)
            if m:
                return route, m.groupdict()
        return None
