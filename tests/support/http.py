"""A tiny synchronous registry client over http.client, for tests that drive a server process."""

from __future__ import annotations

import hashlib
import http.client
import json
from typing import Any
from urllib.parse import urlsplit


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Http:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, body
        location = urlsplit(headers["Location"])
        sep = "&" if location.query else "?"
        path = location.path + (f"?{location.query}" if location.query else "")
        status, _, body = self.request("PUT", f"{path}{sep}digest={digest}", data,
                                       {"Content-Type": "application/octet-stream"})
        assert status == 201, body
        return digest

    def push_image(self, repo: str, tag: str, layers: list[bytes], config: bytes = b"{}") -> str:
        cdigest = self.push_blob(repo, config)
        doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": self.push_blob(repo, x),
                        "size": len(x)} for x in layers]}
        status, headers, body = self.request("PUT", f"/v2/{repo}/manifests/{tag}", json.dumps(doc).encode(),
                                             {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 201, body
        return headers["Docker-Content-Digest"]
