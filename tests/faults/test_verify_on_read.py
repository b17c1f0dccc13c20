"""--verify-on-read: a blob whose bytes went bad on disk is never handed out whole; it is quarantined."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc


def flip_byte(server: Cachesvc, digest: str, at: int) -> None:
    path = server.root / "blobs" / "sha256" / digest[7:9] / digest[7:]
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x55]))


def test_corrupt_blob_is_cut_off_and_quarantined(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root", extra_args=["--verify-on-read", "--compress-at-rest", "off"]) as server:
        h = Http(server.url)
        good, bad, ranged = os.urandom(3_000_000), os.urandom(3_000_000), os.urandom(500_000)
        h.push_image("v/app", "good", [good])
        h.push_image("v/app", "bad", [bad])
        h.push_image("v/app", "ranged", [ranged])
        status, _, body = h.request("GET", f"/v2/v/app/blobs/{sha256(good)}")
        assert status == 200 and body == good  # healthy blobs are served whole
        flip_byte(server, sha256(bad), 2_999_000)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", f"/v2/v/app/blobs/{sha256(bad)}")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(bad)
        with pytest.raises(http.client.IncompleteRead) as e:
            resp.read()
        assert len(e.value.partial) < len(bad)  # the client never got a complete, wrong body
        conn.close()
        assert (server.root / "quarantine" / f"sha256-{sha256(bad)[7:]}").exists()
        status, _, _ = h.request("GET", f"/v2/v/app/blobs/{sha256(bad)}")
        assert status == 404
        status, _, _ = h.request("GET", "/v2/v/app/manifests/bad")
        assert status == 404  # the manifest that needed it became a clean miss
        # A range of a corrupt blob: the whole blob is checked first, so the answer is a clean 404.
        flip_byte(server, sha256(ranged), 10)
        status, _, _ = h.request("GET", f"/v2/v/app/blobs/{sha256(ranged)}", headers={"Range": "bytes=400000-"})
        assert status == 404
        status, _, _ = h.request("HEAD", "/v2/v/app/manifests/ranged")
        assert status == 404
        status, _, body = h.request("GET", "/v2/v/app/manifests/good")
        assert status == 200
        assert "failed verification on read" in server.log_text()
