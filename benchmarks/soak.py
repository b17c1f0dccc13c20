"""Soak: mixed pushes, pulls and eviction against a small budget for N minutes, against a real server process.

Several client workers push small images (with shared base layers, as builds do), pull random tags whole, HEAD
blobs, and re-tag, while the budget forces continuous eviction. Reported: requests, errors (a 5xx, a transport
error, or a served manifest whose blob cannot be fetched or does not hash right; must be 0), the server's RSS at
start and end, and latency percentiles per operation.

``python -m benchmarks.soak --minutes 10`` (``--seconds`` for short runs; CI runs a short one as a test).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.procstat import rss_bytes
from tests.support.servers import Cachesvc

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rss_mib(pid: int) -> float:
    return rss_bytes(pid) / 2**20


class Soak:
    def __init__(self, url: str, seconds: float, workers: int, seed: int) -> None:
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.workers = workers
        self.rng = random.Random(seed)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.requests = 0
        self.misses = 0
        self.refused = 0
        self.bases = [os.urandom(200_000) for _ in range(4)]  # shared "base image" layers

    async def timed(self, op: str, session: aiohttp.ClientSession, method: str, path: str,
                    **kw: Any) -> tuple[int, bytes, dict[str, str]]:
        t = time.perf_counter()
        try:
            async with session.request(method, path, **kw) as r:
                body = await r.read()
                status, headers = r.status, dict(r.headers)
        except (TimeoutError, aiohttp.ClientError) as e:
            self.errors.append(f"{op} {method} {path}: {e!r}")
            return 0, b"", {}
        self.latency[op].append((time.perf_counter() - t) * 1000)
        self.requests += 1
        if status == 507:
            self.refused += 1  # a spec-shaped refusal: the budget is full of blobs still in their grace period
        elif status >= 500:
            self.errors.append(f"{op} {method} {path}: HTTP {status} {body[:200]!r}")
        return status, body, headers

    async def push(self, s: aiohttp.ClientSession, repo: str, tag: str, rng: random.Random) -> None:
        layers = [rng.choice(self.bases), os.urandom(rng.randint(20_000, 600_000))]
        config = json.dumps({"n": rng.random()}).encode()
        descs = []
        for data in [config, *layers]:
            d = sha(data)
            status, _, _ = await self.timed("head_blob", s, "HEAD", f"/v2/{repo}/blobs/{d}")
            if status != 200:
                status, _, h = await self.timed("post_upload", s, "POST", f"/v2/{repo}/blobs/uploads/")
                if status != 202:
                    if status != 0:
                        self.errors.append(f"POST upload: {status}")
                    return
                status, body, _ = await self.timed("put_blob", s, "PUT", h["Location"], params={"digest": d},
                                                   data=data)
                if status == 507:  # budget full of leased uploads: a clean refusal, not an error
                    return
                if status != 201:
                    self.errors.append(f"PUT blob: {status} {body[:200]!r}")
                    return
            descs.append({"mediaType": "application/octet-stream", "digest": d, "size": len(data)})
        doc = {"schemaVersion": 2, "mediaType": MANIFEST,
               "config": {**descs[0], "mediaType": "application/vnd.buildkit.cacheconfig.v0"}, "layers": descs[1:]}
        status, body, _ = await self.timed("put_manifest", s, "PUT", f"/v2/{repo}/manifests/{tag}",
                                           data=json.dumps(doc), headers={"Content-Type": MANIFEST})
        if status not in (201, 400):  # 400: a blob evicted between HEAD 200 and here would be a bug; counted
            self.errors.append(f"PUT manifest: {status} {body[:200]!r}")
        elif status == 400:
            self.errors.append(f"PUT manifest refused: {body[:300]!r}")

    async def pull(self, s: aiohttp.ClientSession, repo: str, tag: str) -> None:
        status, body, _ = await self.timed("get_manifest", s, "GET", f"/v2/{repo}/manifests/{tag}")
        if status == 404:
            self.misses += 1
            return
        if status != 200:
            return
        doc = json.loads(body)
        for d in [doc["config"], *doc["layers"]]:
            status, blob, _ = await self.timed("get_blob", s, "GET", f"/v2/{repo}/blobs/{d['digest']}")
            if status != 200 or sha(blob) != d["digest"]:
                self.errors.append(f"served manifest {repo}:{tag} but blob {d['digest']} -> {status}")

    async def worker(self, n: int) -> None:
        rng = random.Random(self.rng.random())
        async with aiohttp.ClientSession(self.url) as s:
            while time.monotonic() < self.deadline:
                repo, tag = f"soak/p{rng.randint(0, 5)}", f"b{rng.randint(0, 9)}"
                if rng.random() < 0.45:
                    await self.push(s, repo, tag, rng)
                else:
                    await self.pull(s, repo, tag)

    async def run(self) -> None:
        await asyncio.gather(*(self.worker(i) for i in range(self.workers)))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2) if xs else 0.0


def run(seconds: float, workers: int = 6, budget: str = "40MiB", seed: int = 1, grace: str = "5s") -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cachesvc-soak-", dir=os.environ.get("BENCH_DIR")))
    server = Cachesvc(work / "root", extra_args=["--max-size", budget, "--upload-grace", grace])
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        time.sleep(0.5)
        rss_start = rss_mib(pid)
        soak = Soak(server.url, seconds, workers, seed)
        t0 = time.monotonic()
        asyncio.run(soak.run())
        elapsed = time.monotonic() - t0
        rss_end = rss_mib(pid)
        stats = get_json(server.url + "/_cachesvc/api/stats")
        evictions = len(stats["recent_evictions"])
        used = stats["usage"]["disk_bytes"]
        log = server.log_text()
        server.stop()
        server_errors = [ln for ln in log.splitlines() if " 500 " in ln or "Traceback" in ln or " ERROR " in ln]
        return {
            "seconds": round(elapsed, 1), "workers": workers, "budget": budget, "requests": soak.requests,
            "requests_per_s": round(soak.requests / elapsed, 1), "errors": len(soak.errors) + len(server_errors),
            "error_samples": (soak.errors + server_errors)[:10], "pull_misses": soak.misses,
            "refused_507": soak.refused,
            "evictions_seen": evictions, "used_bytes_at_end": used,
            "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_end, 1),
            "latency_ms": {op: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
                                "max": pct(v, 100)} for op, v in sorted(soak.latency.items())},
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def get_json(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return dict(json.load(r))


def markdown(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['seconds']} s, {r['workers']} workers, budget {r['budget']}: {r['requests']} requests "
             f"({r['requests_per_s']}/s), **{r['errors']} errors**, {r['pull_misses']} pull misses (evicted), "
             f"{r['refused_507']} uploads refused (507), "
             f"RSS {r['rss_mib_start']} -> {r['rss_mib_end']} MiB", "",
             "| operation | n | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for op, v in r["latency_ms"].items():
        lines.append(f"| {op} | {v['n']} | {v['p50']} | {v['p90']} | {v['p99']} | {v['max']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--budget", default="40MiB")
    parser.add_argument("--out", type=Path, help="write soak.json and soak.md into this directory")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1) * 60
    result = run(seconds, args.workers, args.budget)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.out:
        from benchmarks.eviction_bench import write_results

        write_results(args.out, "soak", result, markdown(result))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
