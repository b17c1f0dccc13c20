"""SIGKILL at arbitrary moments: what was answered 201 is whole and served, nothing half-written is visible,
and the index and the files agree after the restart (checked by the server's own fsck)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
import urllib.request
from pathlib import Path

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc

CHUNK = 256 * 1024


def chunked_push(url: str, repo: str, data: bytes, done: dict[str, bool], stop: threading.Event) -> None:
    """POST, PATCH chunk by chunk, PUT ?digest=; records the digest as done only on a 201."""
    h = Http(url)
    try:
        status, headers, _ = h.request("POST", f"/v2/{repo}/blobs/uploads/")
        if status != 202:
            return
        location = headers["Location"]
        for offset in range(0, len(data), CHUNK):
            if stop.is_set():
                return
            piece = data[offset:offset + CHUNK]
            status, headers, _ = h.request("PATCH", location, piece,
                                           {"Content-Range": f"{offset}-{offset + len(piece) - 1}"})
            if status != 202:
                return
            location = headers["Location"]
        status, _, _ = h.request("PUT", f"{location}?digest={sha256(data)}", b"")
        if status == 201:
            done[sha256(data)] = True
    except OSError:
        return  # the server was killed under us


def fsck_problems(url: str) -> list[dict[str, object]]:
    req = urllib.request.Request(f"{url}/_cachesvc/api/fsck", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [json.loads(line) for line in r if line.strip()]
    summary = events[-1]
    assert summary["type"] == "summary"
    return [e for e in events if e.get("type") == "problem"]


def test_sigkill_during_20_concurrent_chunked_pushes(tmp_path: Path) -> None:
    server = Cachesvc(tmp_path / "root").start()
    rng = random.Random(7)
    blobs = [os.urandom(rng.randint(1, 12) * CHUNK + rng.randint(0, 9999)) for _ in range(20)]
    done: dict[str, bool] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=chunked_push, args=(server.url, f"crash/r{i % 4}", b, done, stop))
               for i, b in enumerate(blobs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(done) < 3 and time.monotonic() < deadline:  # kill mid-flight: some finished, most still sending
        time.sleep(0.01)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    server.proc = None
    answered = set(done)
    assert 3 <= len(answered) < len(blobs), "the kill must land while uploads are in flight"
    server.start()
    h = Http(server.url)
    for i, data in enumerate(blobs):
        digest = sha256(data)
        status, _, body = h.request("GET", f"/v2/crash/r{i % 4}/blobs/{digest}")
        if digest in answered:
            assert status == 200, f"{digest} was answered 201 but is gone after the crash"
        if status == 200:
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest, "a visible blob must be whole"
    # Sessions left by the crash are resumable (the spec allows that), their files match their records, and
    # no stray temp file remains.
    uploads = sorted(p.name for p in (server.root / "uploads").iterdir())
    assert all(len(name) == 36 for name in uploads), uploads
    assert fsck_problems(server.url) == []
    server.stop()


def test_repeated_sigkill_under_mixed_load(tmp_path: Path) -> None:
    """Kill the server again and again while pushes, manifest puts, pulls and eviction run; every restart
    must find a consistent store."""
    root = tmp_path / "root"
    args = ["--max-size", "3MiB", "--upload-grace", "1s"]
    server = Cachesvc(root, extra_args=args).start()
    rng = random.Random(11)
    answered: dict[str, bytes] = {}
    for round_ in range(4):
        stop = threading.Event()

        def workload(seed: int, stop: threading.Event = stop) -> None:
            r = random.Random(seed)
            h = Http(server.url)
            while not stop.is_set():
                try:
                    layer = os.urandom(r.randint(10_000, 400_000))
                    digest = h.push_image(f"mix/r{r.randint(0, 2)}", f"t{r.randint(0, 5)}", [layer])
                    answered[digest] = layer
                    h.request("GET", f"/v2/mix/r{r.randint(0, 2)}/manifests/t{r.randint(0, 5)}")
                except (OSError, AssertionError):
                    return

        threads = [threading.Thread(target=workload, args=(round_ * 10 + i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 1.5))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.proc = None
        stop.set()
        for t in threads:
            t.join(30)
        server.start()
        assert fsck_problems(server.url) == [], f"inconsistent store after kill #{round_ + 1}"
        # Every manifest still tagged is whole: all its blobs are served and hash right.
        h = Http(server.url)
        for repo in ("mix/r0", "mix/r1", "mix/r2"):
            status, _, body = h.request("GET", f"/v2/{repo}/tags/list")
            if status != 200:
                continue
            for tag in json.loads(body)["tags"]:
                status, _, mbody = h.request("GET", f"/v2/{repo}/manifests/{tag}")
                assert status == 200
                for d in [json.loads(mbody)["config"], *json.loads(mbody)["layers"]]:
                    status, _, blob = h.request("GET", f"/v2/{repo}/blobs/{d['digest']}")
                    assert status == 200 and sha256(blob) == d["digest"]
    server.stop()
