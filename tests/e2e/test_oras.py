"""oras pushes OCI artifacts (custom artifactType, monolithic and chunked uploads), pulls and lists them."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest

from tests.support.clients import RequestLog, oras_manifest, oras_pull, oras_push, oras_tags
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

pytest.importorskip("oras", reason="python package oras missing (pip install -e .[test])")

ARTIFACT_TYPE = "application/vnd.cachesvc.e2e.test+type"


def _raw_manifest(registry: ServerProcess, repo: str, ref: str) -> tuple[bytes, str]:
    """The manifest bytes and Docker-Content-Digest exactly as served (oras only returns parsed JSON)."""
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{ref}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read(), resp.headers.get("Docker-Content-Digest", "")


def test_oras_push_pull_list(tmp_path: Path, registry: ServerProcess, request_log: RequestLog) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = src / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    notes = src / "notes.txt"
    notes.write_text("cachesvc e2e artifact\n")
    big = src / "chunked.bin"
    big.write_bytes(os.urandom(200_000))

    pushed = oras_push(registry.url, "artifacts/thing:v1", [payload, notes], artifact_type=ARTIFACT_TYPE,
                       annotations={"org.opencontainers.image.description": "e2e"})
    mark = request_log.mark()
    chunked = oras_push(registry.url, "artifacts/thing:v2", [big], artifact_type=ARTIFACT_TYPE, chunked=True,
                        chunk_size=64 * 1024)

    # Tags: exactly what was pushed.
    assert sorted(oras_tags(registry.url, "artifacts/thing")) == ["v1", "v2"]

    # Manifest: served byte-for-byte, digest header right, artifactType kept.
    raw, digest = _raw_manifest(registry, "artifacts/thing", "v1")
    assert digest == pushed.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest = oras_manifest(registry.url, "artifacts/thing:v1")
    assert manifest == pushed.manifest
    assert manifest["artifactType"] == ARTIFACT_TYPE

    # Pull by tag and by digest: files identical.
    files = oras_pull(registry.url, "artifacts/thing:v1", tmp_path / "out1")
    assert sorted(p.name for p in files) == ["notes.txt", "payload.bin"]
    for p in files:
        assert p.read_bytes() == (src / p.name).read_bytes()
    files2 = oras_pull(registry.url, f"artifacts/thing@{chunked.digest}", tmp_path / "out2")
    assert [p.name for p in files2] == ["chunked.bin"]
    assert files2[0].read_bytes() == big.read_bytes()

    # The 200 kB blob went up in 64 KiB PATCHes (4 of them), then a closing PUT.
    patches = [r for r in request_log.since(mark) if r.method == "PATCH"]
    assert len(patches) >= 4, f"expected a chunked upload, saw {request_log.since(mark)}"
    request_log.expect(mark, "PUT", "/v2/artifacts/thing/manifests/v2")
