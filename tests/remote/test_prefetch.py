"""Warm start: ``--prefetch PATTERN`` at start and ``cachesvc prefetch REPO:TAG…`` pull caches into the local tier."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.remote.helpers import ObjectStoreUnderTest, builder, metrics, remote_status, wait_drained
from tests.support.http import Http, sha256


def test_prefetch_at_start_and_on_demand(tmp_path: Path, object_store: ObjectStoreUnderTest, remote_url: str) -> None:
    a = builder(tmp_path / "a", object_store, remote_url).start()
    try:
        h = Http(a.url)
        layers = {ref: [os.urandom(400_000), os.urandom(3000)] for ref in
                  ("cache/app:main", "cache/app:pr-1", "cache/lib:main", "other/x:main")}
        digests = {ref: h.push_image(*ref.split(":"), ls) for ref, ls in layers.items()}
        wait_drained(a)
    finally:
        a.stop()

    b = builder(tmp_path / "b", object_store, remote_url, "--prefetch", "cache/*:main").start()
    try:
        deadline = time.monotonic() + 30
        while True:
            jobs = {j["ref"]: j for j in remote_status(b)["prefetch"]}
            if len(jobs) == 2 and all(j["state"] == "done" for j in jobs.values()):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.1)
        assert set(jobs) == {"cache/app:main", "cache/lib:main"}
        assert jobs["cache/app:main"]["blobs_done"] == 3 and jobs["cache/app:main"]["bytes_done"] >= 403_000
        hb = Http(b.url)
        before = metrics(b)
        for ref in ("cache/app:main", "cache/lib:main"):
            repo, tag = ref.split(":")
            status, headers, _ = hb.request("HEAD", f"/v2/{repo}/manifests/{tag}")
            assert status == 200 and headers["Docker-Content-Digest"] == digests[ref]
            for layer in layers[ref]:
                status, _, body = hb.request("GET", f"/v2/{repo}/blobs/{sha256(layer)}")
                assert status == 200 and body == layer
        after = metrics(b)
        local = 'cachesvc_tier_lookups_total{kind="%s",tier="local"}'
        shared = 'cachesvc_tier_lookups_total{kind="%s",tier="shared"}'
        assert after.get(local % "manifest", 0) - before.get(local % "manifest", 0) == 2
        assert after.get(local % "blob", 0) - before.get(local % "blob", 0) == 4
        assert after.get(shared % "blob", 0) == before.get(shared % "blob", 0) == 0  # all local: prefetched

        # On demand, with progress; a cache the shared tier lacks is reported, not fatal.
        r = subprocess.run([sys.executable, "-m", "cachesvc", "prefetch", "cache/app:pr-1", "other/x:main",
                            "nope/x:1", "--url", b.url], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[2:]}
        assert rows == {"cache/app:pr-1": "done", "other/x:main": "done", "nope/x:1": "missing"}, r.stdout
        for ref in ("cache/app:pr-1", "other/x:main"):
            repo, tag = ref.split(":")
            status, headers, _ = hb.request("HEAD", f"/v2/{repo}/manifests/{tag}")
            assert status == 200 and headers["Docker-Content-Digest"] == digests[ref]
        assert metrics(b).get(shared % "manifest", 0) == 0, "prefetched manifests must be local hits"
        r = subprocess.run([sys.executable, "-m", "cachesvc", "remote-status", "--url", b.url], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "write-behind 0 queued" in r.stdout and "cache/app:pr-1: done" in r.stdout
    finally:
        b.stop()
