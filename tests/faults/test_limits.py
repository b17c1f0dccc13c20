"""Bounded request heads, and logs that operators can parse: JSON lines with the request id on errors too."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_oversized_request_heads_are_refused(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root") as server:
        huge_header = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\nConnection: close\r\n\r\n"
        reply = send_raw(server.port, huge_header)
        assert reply.split(b" ")[1] in (b"400", b"431"), reply[:200]
        huge_line = b"GET /v2/" + b"a/" * 20_000 + b"tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply = send_raw(server.port, huge_line)
        assert reply.split(b" ")[1] in (b"400", b"414"), reply[:200]
        many = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000)) + b"\r\n"
        reply = send_raw(server.port, many)
        assert reply.split(b" ")[1] in (b"400", b"431"), reply[:200]
        status, _, _ = Http(server.url).request("GET", "/v2/")
        assert status == 200  # and the server is fine


def test_json_logs(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root", extra_args=["--log-format", "json"]) as server:
        h = Http(server.url)
        digest = h.push_blob("logs/app", b"hello")
        h.request("GET", f"/v2/logs/app/blobs/{digest}", headers={"X-Request-Id": "req-123"})
        h.request("HEAD", f"/v2/logs/app/blobs/{sha256(b'nope')}")
        time.sleep(0.3)  # access lines are flushed in batches
        lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "cachesvc.access"]
    hit = next(e for e in access if e["id"] == "req-123")
    assert hit["method"] == "GET" and hit["status"] == 200 and hit["cache"] == "hit" and hit["repo"] == "logs/app"
    assert hit["route"] == "/v2/{name}/blobs/{digest}" and hit["bytes_out"] == 5 and hit["ms"] >= 0
    miss = next(e for e in access if e["method"] == "HEAD" and e["status"] == 404)
    assert miss["cache"] == "miss" and miss["error"] == "BLOB_UNKNOWN"
    assert all(e["level"] in ("info", "warning", "error") for e in lines)
