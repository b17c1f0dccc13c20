"""Eviction at scale: an index of 1,000,000 blobs and 50,000 roots.

Reports start-up time and resident memory of a server opening that store, the time to pick and evict 10,000
victim roots (and the blobs only they held), and HEAD latency while that eviction runs against idle latency.
The index is filled through the store's own code paths (``Index.add_blob`` / ``Index.put_manifest``) with
real (empty) blob files, so eviction renames and unlinks real files.

``python -m benchmarks.eviction_bench [--smoke]`` prints a Markdown table; ``run(smoke)`` returns the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.procstat import rss_bytes
from cachesvc.store.index import Index
from cachesvc.store.layout import Layout
from cachesvc.store.records import ManifestRecord
from tests.support.servers import Cachesvc

BLOB_SIZE = 100_000  # what each record claims (the files are empty: disk use is not what is measured)
BLOBS_PER_ROOT = 20


def fill(root: Path, roots: int, progress: Any) -> tuple[int, float]:
    """Create ``roots`` cache manifests of BLOBS_PER_ROOT unique blobs each; returns (blobs, seconds)."""
    layout = Layout(root)
    layout.create()
    index = Index(layout.index, clock=time.time)
    t0 = time.perf_counter()
    n = 0
    made_dirs: set[str] = set()
    for r in range(roots):
        repo = f"cache/project-{r % 500}"
        blobs = []
        for b in range(BLOBS_PER_ROOT):
            digest = "sha256:" + hashlib.sha256(f"{r}/{b}".encode()).hexdigest()
            shard = digest[7:9]
            if shard not in made_dirs:
                os.makedirs(layout.blob_dir("sha256", digest[7:]), exist_ok=True)
                made_dirs.add(shard)
            open(layout.blob_path_str(digest), "wb").close()
            index.add_blob(digest, BLOB_SIZE, repo, grace_ms=0)
            blobs.append(digest)
            n += 1
        body = json.dumps({"schemaVersion": 2, "root": r, "layers": blobs}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        now = index.now_ms() - (roots - r) * 1000  # older roots were used longer ago
        rec = ManifestRecord("application/vnd.oci.image.manifest.v1+json", len(body), now, now, blobs, [])
        index.put_manifest(repo, digest, rec, body, f"t{r}", None)
        if r % 5000 == 0:
            progress(f"fill: {r}/{roots} roots, {n} blobs, {time.perf_counter() - t0:.0f}s")
    index.close()
    return n, time.perf_counter() - t0


def rss_mib(pid: int) -> float:
    return rss_bytes(pid) / 2**20


def usage(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_cachesvc/api/usage", timeout=30) as r:
        return json.load(r)


async def head_latencies(url: str, path: str, seconds: float, concurrency: int = 4) -> list[float]:
    """HEAD one blob over and over from a few keep-alive connections; per-request latency in ms."""
    import aiohttp

    out: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(url) as s:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                async with s.head(path) as r:
                    assert r.status == 200, r.status
                out.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def run(smoke: bool = False, progress: Any = None, roots: int | None = None,
        victims: int | None = None) -> dict[str, Any]:
    progress = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    roots = roots or (1000 if smoke else 50_000)
    victims = victims or (200 if smoke else 10_000)
    work = Path(tempfile.mkdtemp(prefix="cachesvc-evict-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        root = work / "root"
        nblobs, fill_s = fill(root, roots, progress)
        progress(f"filled {nblobs} blobs / {roots} roots in {fill_s:.0f}s")
        # Start-up: process start to serving, on the full index.
        server = Cachesvc(root, extra_args=["--upload-grace", "0s"])
        t0 = time.perf_counter()
        server.start()
        startup = time.perf_counter() - t0
        pid = server.proc.pid if server.proc else 0
        rss_start = rss_mib(pid)
        u = usage(server.url)
        probe = "sha256:" + hashlib.sha256(f"{roots - 1}/0".encode()).hexdigest()
        path = f"/v2/cache/project-{(roots - 1) % 500}/blobs/{probe}"
        idle = asyncio.run(head_latencies(server.url, path, 3 if smoke else 8))
        server.stop()
        # A budget that forces out exactly the `victims` oldest roots.
        per_root = u["disk_bytes"] / roots
        budget = int((u["disk_bytes"] - victims * per_root + per_root / 2) / 0.9)
        server = Cachesvc(root, port=server.port,
                          extra_args=["--upload-grace", "0s", "--max-size", str(budget)])
        server.start()
        pid = server.proc.pid if server.proc else 0
        during = asyncio.run(head_latencies(server.url, path, 12 if smoke else min(60, 6 + victims // 200)))
        rss_serving = rss_mib(pid)
        # The eviction pass logs its own duration; wait for it if the HEAD window ended first.
        deadline = time.time() + 600
        m = None
        while time.time() < deadline:
            m = re.search(r"eviction pass: (\d+) roots, (\d+) bytes in ([\d.]+)s", server.log_text())
            if m:
                break
            time.sleep(0.5)
        after = usage(server.url)
        server.stop()
        if not m:
            raise RuntimeError("no eviction pass seen in the server log")
        evicted_roots, seconds = int(m.group(1)), float(m.group(3))
        evicted_blobs = u["blobs"] - after["blobs"]
        return {
            "blobs": nblobs, "roots": roots, "fill_seconds": round(fill_s, 1),
            "startup_seconds": round(startup, 2), "rss_mib_after_start": round(rss_start, 1),
            "rss_mib_serving_during_eviction": round(rss_serving, 1),
            "evicted_roots": evicted_roots, "evicted_blobs": evicted_blobs, "eviction_seconds": seconds,
            "eviction_blobs_per_s": round(evicted_blobs / seconds) if seconds else None,
            "head_idle_p50_ms": round(statistics.median(idle), 3), "head_idle_p99_ms": round(pct(idle, 99), 3),
            "head_evicting_p50_ms": round(statistics.median(during), 3),
            "head_evicting_p99_ms": round(pct(during, 99), 3),
            "index_bytes": u["index_bytes"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    rows = [
        ("index", f"{r['blobs']:,} blobs, {r['roots']:,} roots (filled in {r['fill_seconds']} s)", ""),
        ("start-up (process start to serving)", f"{r['startup_seconds']} s", "< 2 s"),
        ("resident memory after start", f"{r['rss_mib_after_start']} MiB", "< 200 MiB"),
        ("resident memory serving during eviction", f"{r['rss_mib_serving_during_eviction']} MiB", "< 200 MiB"),
        ("evicted", f"{r['evicted_roots']:,} roots / {r['evicted_blobs']:,} blobs in {r['eviction_seconds']} s",
         ""),
        ("eviction rate", f"{r['eviction_blobs_per_s']:,} blobs/s", ">= 5,000 blobs/s"),
        ("HEAD p50 / p99 idle", f"{r['head_idle_p50_ms']} / {r['head_idle_p99_ms']} ms", ""),
        ("HEAD p50 / p99 during eviction", f"{r['head_evicting_p50_ms']} / {r['head_evicting_p99_ms']} ms",
         f"p99 < 2x idle ({2 * r['head_idle_p99_ms']:.3f} ms)"),
    ]
    lines = ["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, help="write eviction[-smoke].json and .md into this directory")
    parser.add_argument("--roots", type=int, help="roots in the index (20 blobs each)")
    parser.add_argument("--victims", type=int, help="roots to evict")
    args = parser.parse_args()
    result = run(args.smoke, roots=args.roots, victims=args.victims)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.out:
        write_results(args.out, "eviction" + ("-smoke" if args.smoke else ""), result, markdown(result))


def write_results(out: Path, name: str, result: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / f"{name}.json").write_text(json.dumps({"when": stamp, **result}, indent=1) + "\n")
    (out / f"{name}.md").write_text(f"# {name} ({stamp}, {os.cpu_count()} cores)\n\n{table}\n")


if __name__ == "__main__":
    main()
