"""Referrers API: ``GET /v2/<name>/referrers/<digest>[?artifactType=…]`` lists manifests whose subject it is."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.context import Registry
from cachesvc.api.names import parse_digest, parse_name
from cachesvc.store.manifests import OCI_INDEX


async def list_referrers(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    repo = parse_name(p["name"])
    subject = str(parse_digest(p["digest"]))
    descriptors = reg.store.index.referrers(repo, subject)
    headers = {}
    artifact_type = request.query.get("artifactType")
    if artifact_type:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    headers["Content-Type"] = OCI_INDEX
    return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)
