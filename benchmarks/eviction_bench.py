"""Eviction at scale: an index of 1,000,000 blobs and 50,000 roots.

Reports start-up time and resident memory of a server opening that store, the time to pick and evict 10,000
victim roots (and the blobs only they held), and HEAD latency while that eviction runs against idle latency.
The index is filled through the store's own code paths (``Index.add_blob`` / ``Index.put_manifest``) with
real (empty) blob files, so eviction unlinks real files; compression at rest is off (the files are empty).

Latency is probed at a fixed rate (500 HEAD/s, open loop, 32 connections), from when each request was due, and
only the requests due while the eviction pass ran count as "during eviction" (the pass logs its own span).

``python -m benchmarks.eviction_bench [--smoke] [--keep-fill DIR] [--reps N]`` prints a Markdown table;
``run(smoke)`` returns the figures. The index is filled once (minutes at full size; ``--keep-fill`` keeps it for
later invocations) and each run evicts a hard-linked copy; the figures are medians over the runs (3 by default).
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
import subprocess
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
IDLE_SECONDS = 20  # idle probing: a window not much shorter than the eviction pass, so both see as many hiccups


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


PROBE_RATE = 500  # HEAD requests per second while latency is measured (idle and during eviction)


async def head_latencies(url: str, path: str, seconds: float, rate: float = PROBE_RATE, concurrency: int = 32,
                         stop: Any = None) -> list[tuple[float, float]]:
    """HEAD one blob at a fixed rate (open loop), for ``seconds`` or until ``stop()`` (polled) is true, from
    enough keep-alive connections that one slow answer does not hold the next request back. Returns
    ``(wall-clock time due, latency ms)`` per request; latency runs from when the request was due, so time spent
    queued behind a stalled server counts.

    A fixed rate, not a closed loop as fast as possible: a saturating closed loop measures throughput (every
    request queues behind the previous one), while builders send a few hundred requests a second at most."""
    import aiohttp

    out: list[tuple[float, float]] = []
    interval = concurrency / rate
    start = time.perf_counter() + 0.05
    offset = time.time() - time.perf_counter()
    ended = asyncio.Event()

    async def watch() -> None:
        while stop is not None and not ended.is_set():
            if await asyncio.to_thread(stop):
                ended.set()
            await asyncio.sleep(0.25)

    async with aiohttp.ClientSession(url) as s:
        async def worker(first: float) -> None:
            due = start + first
            while due < start + seconds and not ended.is_set():
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                async with s.head(path) as r:
                    assert r.status == 200, r.status
                out.append((due + offset, (time.perf_counter() - due) * 1000))
                due += interval

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker(i * interval / concurrency) for i in range(concurrency)))
        ended.set()
        await watcher
    return out


def run_client(coro: Any) -> Any:
    """Run the probing client on uvloop (the server's loop too): on asyncio's own loop the client alone adds
    about 0.7 ms to every request and jitter of its own to the tail this benchmark compares."""
    import uvloop

    return uvloop.run(coro)


PASS_LINE = re.compile(r"^(\S+) INFO cachesvc\.eviction eviction pass: (\d+) roots, (\d+) bytes in ([\d.]+)s", re.M)
HELPER_LINE = re.compile(r"planning in a helper process \(pid (\d+)\)")


class PassWatcher:
    """Reads only what the server log gained since the last look, so polling it costs nothing noticeable (a
    regex over the whole, growing log would stall the probing client itself). Each look also samples the
    resident memory of the server (``pid``) and of the planning helper it starts (pid from its log line), whose
    own memory counts too: the peak of their sum is what the machine must have."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.tail = ""
        self.found: tuple[float, float, int] | None = None
        self.pid = 0
        self.helper = 0
        self.peak_helper = 0.0
        self.peak_sum = 0.0

    def sample_rss(self) -> None:
        helper = self._rss(self.helper)
        self.peak_helper = max(self.peak_helper, helper)
        self.peak_sum = max(self.peak_sum, self._rss(self.pid) + helper)

    @staticmethod
    def _rss(pid: int) -> float:
        try:
            return rss_mib(pid) if pid else 0.0
        except OSError:  # the helper has exited
            return 0.0

    def __call__(self) -> bool:
        if self.found is None:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                new = f.read()
                self.offset = f.tell()
            lines = (self.tail + new).split("\n")
            self.tail = lines.pop()
            if m := HELPER_LINE.search("\n".join(line for line in lines if "helper process" in line)):
                self.helper = int(m.group(1))
            self.sample_rss()
            self.found = eviction_pass("\n".join(line for line in lines if "eviction pass:" in line))
        return self.found is not None


def eviction_pass(log_text: str) -> tuple[float, float, int] | None:
    """``(start, end, roots)`` of the first eviction pass in a server log (wall-clock seconds)."""
    import datetime

    m = PASS_LINE.search(log_text)
    if not m:
        return None
    end = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    return end - float(m.group(4)), end, int(m.group(2))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def settle_disk() -> None:
    """Write back what copying (and removing the last run's copy of) a million directory entries left dirty:
    otherwise the kernel does it during the idle measurement, whose tail it inflates several-fold."""
    os.sync()


def copy_store(src: Path, dest: Path) -> None:
    """A private copy of a filled store: the index copied, blob files hard-linked (eviction unlinks names,
    never changes a file, so the kept fill stays intact)."""
    dest.mkdir(parents=True)
    for entry in os.listdir(src):
        mode = "-al" if entry == "blobs" else "-a"
        subprocess.run(["cp", mode, str(src / entry), str(dest / entry)], check=True)


def run(smoke: bool = False, progress: Any = None, roots: int | None = None,
        victims: int | None = None, keep_fill: Path | None = None, reps: int | None = None) -> dict[str, Any]:
    """Fill once, then evict a fresh copy of the fill ``reps`` times; figures are medians over the runs (each
    run's own figures are kept under ``runs``). On a small shared machine one run's tail latency is noise:
    the idle p99 alone varied 3x between identical runs here."""
    progress = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    roots = roots or (1000 if smoke else 50_000)
    victims = victims or (200 if smoke else 10_000)
    reps = reps or (1 if smoke else 3)
    work = Path(tempfile.mkdtemp(prefix="cachesvc-evict-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        # Fill once (into keep_fill when given, reused by later runs with the same --roots), evict copies.
        kept = (keep_fill or work) / f"roots-{roots}"
        if not (kept / "STORE").exists():
            shutil.rmtree(kept, ignore_errors=True)
            nblobs, fill_s = fill(kept, roots, progress)
            (kept / "fill.json").write_text(json.dumps({"blobs": nblobs, "seconds": fill_s}))
        nblobs, fill_s = json.loads((kept / "fill.json").read_text()).values()
        progress(f"filled {nblobs} blobs / {roots} roots in {fill_s:.0f}s")
        runs = []
        for rep in range(reps):
            root = work / f"run-{rep}"
            copy_store(kept, root)
            settle_disk()
            runs.append(one_run(root, roots, victims, smoke))
            shutil.rmtree(root, ignore_errors=True)
            r = runs[-1]
            progress(f"run {rep + 1}/{reps}: {r['eviction_blobs_per_s']:,.0f} blobs/s; HEAD p99 idle "
                     f"{r['head_idle_p99_ms']} ms, during eviction {r['head_evicting_p99_ms']} ms "
                     f"({r['p99_ratio']}x)")
        medians = {k: round(statistics.median(r[k] for r in runs), 3)
                   for k, v in runs[0].items() if isinstance(v, float)}
        return {"blobs": nblobs, "roots": roots, "fill_seconds": round(fill_s, 1), "reps": reps,
                **{k: v for k, v in runs[0].items() if not isinstance(v, float)}, **medians, "runs": runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_run(root: Path, roots: int, victims: int, smoke: bool) -> dict[str, Any]:
    """One copy of the fill: start-up and idle latency on a server without a budget, then a server whose
    budget forces out the ``victims`` oldest roots, probed until its eviction pass ends."""
    server = Cachesvc(root, extra_args=["--upload-grace", "0s", "--compress-at-rest", "off"])
    t0 = time.perf_counter()
    server.start()
    startup = time.perf_counter() - t0
    pid = server.proc.pid if server.proc else 0
    rss_start = rss_mib(pid)
    u = usage(server.url)
    probe = "sha256:" + hashlib.sha256(f"{roots - 1}/0".encode()).hexdigest()
    path = f"/v2/cache/project-{(roots - 1) % 500}/blobs/{probe}"
    idle = [ms for _, ms in run_client(head_latencies(server.url, path, 3 if smoke else IDLE_SECONDS))]
    server.stop()
    # A budget that forces out exactly the `victims` oldest roots.
    per_root = u["disk_bytes"] / roots
    budget = int((u["disk_bytes"] - victims * per_root + per_root / 2) / 0.9)
    server = Cachesvc(root, port=server.port, extra_args=["--upload-grace", "0s", "--compress-at-rest", "off",
                                                          "--max-size", str(budget)])
    watcher = PassWatcher(server.log_path)
    server.start()
    pid = watcher.pid = server.proc.pid if server.proc else 0
    # Probe from start-up until the pass has ended, then keep the samples due while it ran.
    samples = run_client(head_latencies(server.url, path, 900, stop=watcher))
    rss_serving = rss_mib(pid)
    found = watcher.found
    after = usage(server.url)
    server.stop()
    if not found:
        raise RuntimeError("no eviction pass seen in the server log")
    began, ended, evicted_roots = found
    seconds = ended - began
    during = [ms for t, ms in samples if began <= t <= ended]
    evicted_blobs = u["blobs"] - after["blobs"]
    idle_p99, during_p99 = pct(idle, 99), pct(during, 99)
    return {
        "startup_seconds": round(startup, 2), "rss_mib_after_start": round(rss_start, 1),
        "rss_mib_serving_during_eviction": round(rss_serving, 1),
        "rss_mib_helper_peak": round(watcher.peak_helper, 1),
        "rss_mib_server_and_helper_peak": round(watcher.peak_sum, 1),
        "evicted_roots": evicted_roots, "evicted_blobs": evicted_blobs, "eviction_seconds": round(seconds, 3),
        "eviction_blobs_per_s": float(round(evicted_blobs / seconds)),
        "head_idle_p50_ms": round(statistics.median(idle), 3), "head_idle_p99_ms": round(idle_p99, 3),
        "head_evicting_p50_ms": round(statistics.median(during), 3), "head_evicting_p99_ms": round(during_p99, 3),
        "p99_ratio": round(during_p99 / idle_p99, 2), "head_evicting_samples": len(during),
        "index_bytes": u["index_bytes"], "probe_rate": PROBE_RATE,
    }


def markdown(r: dict[str, Any]) -> str:
    runs = r["runs"]
    rows = [
        ("index", f"{r['blobs']:,} blobs, {r['roots']:,} roots (filled in {r['fill_seconds']} s)", ""),
        ("runs", f"{r['reps']} (a fresh copy of the index each; medians below)", ""),
        ("start-up (process start to serving)", f"{r['startup_seconds']} s", "< 2 s"),
        ("resident memory after start", f"{r['rss_mib_after_start']} MiB", "< 200 MiB"),
        ("resident memory serving during eviction", f"{r['rss_mib_serving_during_eviction']} MiB", "< 200 MiB"),
        ("peak during eviction: planning helper / server + helper (sampled every 0.25 s)",
         f"{r['rss_mib_helper_peak']} / {r['rss_mib_server_and_helper_peak']} MiB", "< 200 MiB (the sum)"),
        ("evicted", f"{r['evicted_roots']:,} roots / {r['evicted_blobs']:,} blobs in {r['eviction_seconds']} s",
         ""),
        ("eviction rate", f"{r['eviction_blobs_per_s']:,.0f} blobs/s", ">= 5,000 blobs/s"),
        ("HEAD p50 / p99 idle", f"{r['head_idle_p50_ms']} / {r['head_idle_p99_ms']} ms",
         f"{r['probe_rate']} HEAD/s, fixed rate"),
        ("HEAD p50 / p99 during eviction", f"{r['head_evicting_p50_ms']} / {r['head_evicting_p99_ms']} ms", ""),
        ("p99 during eviction / p99 idle", f"{r['p99_ratio']}x (median of the runs' ratios)", "< 2x"),
        ("each run: blobs/s, p99 idle / during", "; ".join(
            f"{x['eviction_blobs_per_s']:,.0f}, {x['head_idle_p99_ms']:.1f} / {x['head_evicting_p99_ms']:.1f} ms "
            f"({x['p99_ratio']}x)" for x in runs), ""),
    ]
    lines = ["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, help="write eviction[-smoke].json and .md into this directory")
    parser.add_argument("--roots", type=int, help="roots in the index (20 blobs each)")
    parser.add_argument("--victims", type=int, help="roots to evict")
    parser.add_argument("--reps", type=int, help="runs, each on a fresh copy of the index (default 1 smoke, 3)")
    parser.add_argument("--keep-fill", type=Path, help="fill the index once into this directory and evict a copy "
                        "of it on every run (the fill takes minutes at full size)")
    args = parser.parse_args()
    result = run(args.smoke, roots=args.roots, victims=args.victims, keep_fill=args.keep_fill, reps=args.reps)
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
