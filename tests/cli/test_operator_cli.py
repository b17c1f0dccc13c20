"""Every operator command against a real server process, and a clear failure when none answers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc, free_port


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cachesvc]:
    with Cachesvc(tmp_path / "root", extra_args=["--max-size", "10MiB", "--upload-grace", "1s"]) as s:
        yield s


def test_usage_stats_ls(server: Cachesvc) -> None:
    h = Http(server.url)
    h.push_image("cache/app", "main", [os.urandom(300_000)])
    h.push_image("cache/app", "pr-1", [os.urandom(100_000)])
    h.request("GET", "/v2/cache/app/manifests/main")
    h.request("HEAD", f"/v2/cache/app/blobs/{sha256(b'missing')}")
    r = cli("usage", "--url", server.url)
    assert r.returncode == 0, r.stderr
    assert "of 10.0 MiB budget" in r.stdout and "cache/app" in r.stdout
    assert "2 manifests" in r.stdout
    # The address also comes from the same settings the server reads.
    r = cli("stats", env={"CACHESVC_LISTEN": server.host})
    assert r.returncode == 0, r.stderr
    assert "hit ratio" in r.stdout and "cache/app" in r.stdout
    assert "50.0%" in r.stdout  # one manifest hit, one blob miss
    r = cli("ls", "cache/app", "--url", server.url)
    assert r.returncode == 0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("cache/app")]
    assert [ln.split()[1] for ln in lines] == ["main", "pr-1"]


def test_pin_rm_and_evict(server: Cachesvc, tmp_path: Path) -> None:
    h = Http(server.url)
    h.push_image("cache/app", "main", [os.urandom(4_000_000)])
    h.push_image("cache/app", "old", [os.urandom(4_000_000)])
    r = cli("pin", "cache/app:main", "--url", server.url)
    assert r.returncode == 0 and "pinned" in r.stdout
    r = cli("ls", "--url", server.url)
    assert any(ln.split()[1] == "main" and "yes" in ln for ln in r.stdout.splitlines() if ln.startswith("cache"))
    h.push_image("cache/app", "new", [os.urandom(3_000_000)])  # over 90% of 10 MiB: eviction
    r = cli("evict", "--dry-run", "--url", server.url)
    assert r.returncode == 0
    status, _, _ = h.request("HEAD", "/v2/cache/app/manifests/main")
    assert status == 200  # pinned
    status, _, _ = h.request("HEAD", "/v2/cache/app/manifests/old")
    assert status == 404  # least recently used, evicted
    r = cli("stats", "--url", server.url)
    assert "budget" in r.stdout and "cache/app:old" in r.stdout  # recent evictions
    r = cli("rm", "cache/app:new", "--url", server.url)
    assert r.returncode == 0 and "removed 1 roots" in r.stdout
    status, _, _ = h.request("HEAD", "/v2/cache/app/manifests/new")
    assert status == 404
    r = cli("unpin", "cache/app:main", "--url", server.url)
    assert r.returncode == 0 and "unpinned" in r.stdout
    r = cli("rm", "cache/nothing:here", "--url", server.url)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "MANIFEST_UNKNOWN" in r.stderr


def test_evict_dry_run_lists_what_and_why(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root", extra_args=["--upload-grace", "1s"]) as s:
        h = Http(s.url)
        for tag in ("a", "b", "c"):
            h.push_image("cache/app", tag, [os.urandom(200_000)])
    # Restart with a smaller budget: the dry run shows the plan without acting on it.
    with Cachesvc(tmp_path / "root", port=s.port, extra_args=["--max-size", "500KiB", "--upload-grace", "1s"]) as s2:
        r = cli("evict", "--dry-run", "--url", s2.url)
        assert r.returncode == 0, r.stderr
        assert "would evict" in r.stdout and "budget" in r.stdout and "cache/app:a" in r.stdout


def test_fsck_finds_and_repairs_a_flipped_byte(server: Cachesvc) -> None:
    h = Http(server.url)
    layer = os.urandom(500_000)
    h.push_image("cache/app", "main", [layer])
    path = server.root / "blobs" / "sha256" / sha256(layer)[7:9] / sha256(layer)[7:]
    with open(path, "r+b") as f:
        f.seek(1234)
        b = f.read(1)
        f.seek(1234)
        f.write(bytes([b[0] ^ 0xFF]))
    r = cli("fsck", "--url", server.url)
    assert r.returncode == 0, r.stderr
    assert "corrupt blobs: 1" in r.stdout and "--repair" in r.stdout
    status, _, _ = h.request("HEAD", "/v2/cache/app/manifests/main")
    assert status == 200  # fsck without --repair changes nothing
    r = cli("fsck", "--repair", "--url", server.url)
    assert "quarantined 1 blobs" in r.stdout and "dropped 1 manifests" in r.stdout
    status, _, _ = h.request("GET", "/v2/cache/app/manifests/main")
    assert status == 404
    assert (server.root / "quarantine" / f"sha256-{sha256(layer)[7:]}").exists()
    r = cli("fsck", "--url", server.url)
    assert "corrupt blobs: 0" in r.stdout


def test_no_server_is_one_line_and_nonzero() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for cmd in (["usage"], ["stats"], ["ls"], ["evict", "--dry-run"], ["pin", "a:b"], ["rm", "a"], ["fsck"]):
        r = cli(*cmd, "--url", url)
        assert r.returncode == 1, cmd
        assert r.stderr.count("\n") == 1 and "no cachesvc answering" in r.stderr, (cmd, r.stderr)
