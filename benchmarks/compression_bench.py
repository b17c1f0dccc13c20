"""Cheap exports: a cache export of uncompressed layers (``compression=uncompressed``) against the same content
gzip-compressed by the client, into cachesvc with compression at rest on; and the pull rate of a blob stored
compressed at rest.

Content is real: tars of this machine's own ``/usr`` (binaries, shared libraries, docs and data), built once
per run with fixed times and owners. The client is skopeo, pushing an OCI layout whose layers are plain tar:
with ``--preserve-digests`` it sends them as they are (what BuildKit's ``compression=uncompressed`` does), and
with ``--dest-compress-format gzip`` it gzips each layer first, as a default BuildKit export does (containers/image
uses a parallel gzip, so its wall time is shorter than a single-stream gzip's but its CPU time is the same).

Each scenario gets a fresh server (``python -m cachesvc serve``). Figures: client CPU seconds and wall time of the
export; bytes on disk right after it and once compression at rest has finished; how long and how much server
CPU that took; then GETs of the largest layer (stored compressed at rest) with one and two streams, and 1 MiB
Range GETs, with a raw-socket client that discards the bytes (one verified pull checks every byte).

    .venv/bin/python -m benchmarks.compression_bench [--smoke] [--workdir DIR] [--json FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from benchmarks import regclient
from benchmarks.httpclient import Connection
from benchmarks.procstat import CpuMeter
from cachesvc.store.seekable import SeekableReader
from tests.support.clients import ContainersConfig, skopeo_copy
from tests.support.servers import Cachesvc

MiB = 1024 * 1024
# (name, source directories, size): like an image's layers (OS binaries and libraries, a Python application
# tree, shared data and docs); distinct content per layer, so nothing dedups across layers
FULL = [("os", ["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"], 192 * MiB),
        ("python", ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/google-cloud-sdk"], 192 * MiB),
        ("share", ["/usr/share"], 128 * MiB)]
SMOKE = [("os", ["/usr/bin", "/usr/sbin"], 12 * MiB),
         ("python", ["/usr/lib/python3", "/usr/lib/python3.11"], 12 * MiB),
         ("share", ["/usr/share"], 8 * MiB)]
PLAIN = "application/vnd.oci.image.layer.v1.tar"
TARGET_PULL_GBPS = 1.0


# -- content -------------------------------------------------------------------------------------------------
def _files(dirs: list[str]) -> Iterator[str]:
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                yield os.path.join(dirpath, name)


def build_layer(dest: Path, dirs: list[str], size: int) -> str:
    """A deterministic tar of real files under ``dirs``, about ``size`` bytes; returns its digest."""

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 946684800, 0, 0, "", ""
        return info

    with open(dest, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(dirs):
            if f.tell() >= size:
                break
            try:
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > size // 4:
                    continue
                tar.add(path, arcname=path.lstrip("/"), recursive=False, filter=fixed)
            except OSError:
                continue
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_layout(layout: Path, layers: list[tuple[Path, str]]) -> dict[str, Any]:
    """An OCI layout with the plain tars as layers (hard-linked, not copied)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return digest

    descs = []
    for path, digest in layers:
        target = blobs / digest[7:]
        if not target.exists():
            os.link(path, target)
        descs.append({"mediaType": PLAIN, "digest": digest, "size": path.stat().st_size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2000-01-01T00:00:00Z",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
                         "history": [{"created_by": f"bench layer {i}"} for i in range(len(descs))]}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": descs}).encode()
    mdigest = put(manifest)
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                           "digest": mdigest, "size": len(manifest),
                                           "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return {"manifest": mdigest, "layers": descs}


# -- measurements --------------------------------------------------------------------------------------------
def codec_rates(sample: bytes) -> dict[str, float]:
    """Single-core rates on the layer content: what the builder pays for gzip, and what zstd costs here."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    packed = gz.compress(sample) + gz.flush()
    out["gzip6_MBps"] = len(sample) / (time.perf_counter() - t) / 1e6
    out["gzip6_ratio"] = len(packed) / len(sample)
    c = zstandard.ZstdCompressor(level=1)
    t = time.perf_counter()
    z = c.compress(sample)
    out["zstd1_MBps"] = len(sample) / (time.perf_counter() - t) / 1e6
    out["zstd1_ratio"] = len(z) / len(sample)
    d = zstandard.ZstdDecompressor()
    t = time.perf_counter()
    for _ in range(3):
        d.decompress(z)
    out["unzstd_MBps"] = 3 * len(sample) / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    gzip.decompress(packed)
    out["gunzip_MBps"] = len(sample) / (time.perf_counter() - t) / 1e6
    return {k: round(v, 3) for k, v in out.items()}


def usage(server: Cachesvc) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/_cachesvc/api/usage", timeout=60) as r:
        return json.loads(r.read())


def wait_at_rest(server: Cachesvc, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        u = usage(server)
        if u["compression"]["queued"] == 0:
            return u
        if time.monotonic() > deadline:
            raise TimeoutError(f"compression at rest still busy: {u['compression']}")
        time.sleep(0.1)


def export(name: str, layout: Path, workdir: Path, compress: bool) -> tuple[Cachesvc, dict[str, Any]]:
    server = Cachesvc(workdir / f"cachesvc-{name}").start()
    assert server.proc is not None
    config = ContainersConfig(workdir / f"containers-{name}", insecure_hosts=[server.host])
    extra = ["--dest-compress", "--dest-compress-format", "gzip"] if compress else []
    with CpuMeter({"server": server.proc.pid}) as push:
        skopeo_copy(f"oci:{layout}:latest", f"docker://{server.host}/cache/app:main", config=config,
                    preserve_digests=not compress, extra_args=extra, timeout=1800)
    after_push = usage(server)
    with CpuMeter({"server": server.proc.pid}) as rest:
        final = wait_at_rest(server)
    row = {
        "scenario": name, "client_compresses": compress,
        "export_wall_s": round(push.elapsed, 3),
        "client_cpu_s": round(push.cores["client"] * push.elapsed, 3),
        "server_cpu_s": round(push.cores["server"] * push.elapsed, 3),
        "other_load_cores": push.cores["other"],
        "logical_bytes": final["stored_bytes"],
        "disk_bytes_after_export": after_push["disk_bytes"],
        "disk_bytes_at_rest": final["disk_bytes"],
        "saved_bytes": final["saved_bytes"],
        "at_rest_wall_s": round(rest.elapsed, 3),  # includes the quiet period before the worker starts
        "at_rest_server_cpu_s": round(rest.cores["server"] * rest.elapsed, 3),
        "compressed_blobs": final["compression"]["compressed_blobs"],
    }
    return server, row


def _pull_once(url: str, digest: str, size: int) -> float:
    with Connection(url) as conn:
        t = time.perf_counter()
        resp = conn.request("GET", f"/v2/cache/app/blobs/{digest}", keep_body=False, sink=lambda _: None)
        took = time.perf_counter() - t
    assert resp.status == 200 and resp.length == size, (resp.status, resp.length)
    return took


def decompress_limit(path: str, passes: int = 2) -> float:
    """GB/s of one core decompressing the stored file itself (the ceiling a single-threaded reader would have)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = SeekableReader(fd)
        best = 0.0
        for _ in range(passes):
            t = time.perf_counter()
            for _piece in reader.iter_range(0, reader.size):
                pass
            best = max(best, reader.size / (time.perf_counter() - t) / 1e9)
        return best
    finally:
        os.close(fd)


def pull_rates(server: Cachesvc, digest: str, size: int, reps: int) -> dict[str, Any]:
    """One stream, ``reps`` times: best and median GB/s, with the CPU cores used meanwhile by each side."""
    assert server.proc is not None
    with Connection(server.url) as conn:  # one verified pull first: every byte is the byte pushed
        regclient.get_blob(conn, "cache/app", digest, verify=True)
    runs = []
    for _ in range(reps):
        with CpuMeter({"server": server.proc.pid}) as m:
            took = _pull_once(server.url, digest, size)
        runs.append((size / took / 1e9, m.cores))
    best = max(runs, key=lambda r: r[0])
    stored = server.root / "blobs" / "sha256" / digest[7:9] / (digest[7:] + ".zst")
    return {"blob_bytes": size, "compressed_at_rest": stored.exists(),
            "decompress_1_core_GBps": round(decompress_limit(str(stored)), 3) if stored.exists() else None,
            "pull_1_stream_GBps_best": round(best[0], 3),
            "pull_1_stream_GBps_median": round(statistics.median(r[0] for r in runs), 3),
            "cores_at_best": best[1]}


def pull_extras(server: Cachesvc, digest: str, size: int) -> dict[str, Any]:
    """Two streams at once, and 1 MiB Range GETs at random offsets."""
    elapsed: list[float] = []

    def worker() -> None:
        elapsed.append(_pull_once(server.url, digest, size))

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two = 2 * size / (time.perf_counter() - t) / 1e9
    rnd = random.Random(1)
    n_ranges = 100
    with Connection(server.url) as conn:
        t = time.perf_counter()
        for _ in range(n_ranges):
            start = rnd.randrange(0, max(1, size - MiB))
            resp = conn.request("GET", f"/v2/cache/app/blobs/{digest}",
                                {"Range": f"bytes={start}-{start + MiB - 1}"}, keep_body=False, sink=lambda _: None)
            assert resp.status == 206 and resp.length == min(MiB, size - start)
        ranges = n_ranges / (time.perf_counter() - t)
    return {"pull_2_streams_GBps": round(two, 3), "range_1MiB_per_s": round(ranges, 1)}


# -- the run -----------------------------------------------------------------------------------------------
def run(smoke: bool, workdir: Path | None = None, keep: bool = False) -> dict[str, Any]:
    """Build the content, run both exports and the pulls; returns every figure (JSON-friendly)."""
    spec = SMOKE if smoke else FULL
    base = Path(tempfile.mkdtemp(prefix="cachesvc-compression-bench-", dir=str(workdir or "/var/tmp")))
    servers: list[Cachesvc] = []
    try:
        t = time.perf_counter()
        layers = []
        for name, dirs, size in spec:
            path = base / f"{name}.tar"
            layers.append((path, build_layer(path, dirs, size)))
        layout = base / "layout"
        image = write_layout(layout, layers)
        content_s = time.perf_counter() - t
        with open(layers[-1][0], "rb") as f:
            sample = f.read(16 * MiB if smoke else 64 * MiB)
        rates = codec_rates(sample)
        rows = []
        plain_server, row = export("uncompressed", layout, base, compress=False)
        servers.append(plain_server)
        rows.append(row)
        gzip_server, row = export("gzip", layout, base, compress=True)
        servers.append(gzip_server)
        rows.append(row)
        reps = 2 if smoke else 5
        pulls = {}
        for (name, _, _), desc in zip(spec, image["layers"], strict=True):
            pulls[name] = pull_rates(plain_server, desc["digest"], desc["size"], reps)
        biggest = max(image["layers"], key=lambda d: d["size"])
        extras = pull_extras(plain_server, biggest["digest"], biggest["size"])
        gz_manifest = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{gzip_server.url}/v2/cache/app/manifests/main",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}), timeout=60).read())
        gz_biggest = max(gz_manifest["layers"], key=lambda d: d["size"])
        plain_file = {**pull_rates(gzip_server, gz_biggest["digest"], gz_biggest["size"], reps),
                      **pull_extras(gzip_server, gz_biggest["digest"], gz_biggest["size"])}
        return {
            "profile": "smoke" if smoke else "full", "cpus": os.cpu_count(),
            "layers": [{"name": n, "bytes": d["size"]} for (n, _, _), d in zip(spec, image["layers"], strict=True)],
            "content_build_s": round(content_s, 1), "codec_rates_single_core": rates, "exports": rows,
            "pull_compressed_at_rest": pulls, "pull_compressed_at_rest_largest": extras,
            "pull_plain_gzip_blob_sendfile": plain_file,
            "target_pull_GBps": TARGET_PULL_GBPS,
        }
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _size(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def markdown(r: dict[str, Any]) -> str:
    rates = r["codec_rates_single_core"]
    lines = [f"## Compression at rest ({r['profile']}, {r['cpus']} cores)", "",
             "Layers (tars of /usr): " + ", ".join(f"{x['name']} {_size(x['bytes'])}" for x in r["layers"]), "",
             f"Single core on this content: gzip -6 {rates['gzip6_MBps']:.0f} MB/s (ratio {rates['gzip6_ratio']:.2f}), "
             f"zstd -1 {rates['zstd1_MBps']:.0f} MB/s (ratio {rates['zstd1_ratio']:.2f}), "
             f"zstd decompression {rates['unzstd_MBps']:.0f} MB/s, gunzip {rates['gunzip_MBps']:.0f} MB/s.", "",
             "| export | client CPU | wall | server CPU | on disk after export | on disk at rest | "
             "compression at rest (wall / server CPU) |",
             "|---|---|---|---|---|---|---|"]
    for e in r["exports"]:
        lines.append(f"| {'gzip by the client' if e['client_compresses'] else 'uncompressed'} | "
                     f"{e['client_cpu_s']:.2f} s | {e['export_wall_s']:.2f} s | {e['server_cpu_s']:.2f} s | "
                     f"{_size(e['disk_bytes_after_export'])} | {_size(e['disk_bytes_at_rest'])} | "
                     f"{e['at_rest_wall_s']:.1f} s / {e['at_rest_server_cpu_s']:.1f} s |")
    lines += ["", "| pull (raw client, bytes discarded) | blob | 1 stream best / median | 1-core zstd limit | "
              "cores at best (server, client, other) |", "|---|---|---|---|---|"]
    rows = [(f"{name} layer, compressed at rest", x) for name, x in r["pull_compressed_at_rest"].items()]
    rows.append(("largest gzip layer, plain file (sendfile)", r["pull_plain_gzip_blob_sendfile"]))
    for label, x in rows:
        c = x["cores_at_best"]
        limit = f"{x['decompress_1_core_GBps']:.2f} GB/s" if x["decompress_1_core_GBps"] else "-"
        lines.append(f"| {label} | {_size(x['blob_bytes'])} | {x['pull_1_stream_GBps_best']:.2f} / "
                     f"{x['pull_1_stream_GBps_median']:.2f} GB/s | {limit} | {c['server']:.2f}, {c['client']:.2f}, "
                     f"{c['other']:.2f} |")
    e, g = r["pull_compressed_at_rest_largest"], r["pull_plain_gzip_blob_sendfile"]
    lines += ["", f"Largest layer compressed at rest: 2 streams {e['pull_2_streams_GBps']:.2f} GB/s, 1 MiB ranges "
              f"{e['range_1MiB_per_s']:.0f}/s (plain gzip file: {g['pull_2_streams_GBps']:.2f} GB/s, "
              f"{g['range_1MiB_per_s']:.0f}/s)."]
    best = max(x["pull_1_stream_GBps_best"] for x in r["pull_compressed_at_rest"].values())
    lines.append(f"Target: pull of a compressed-at-rest blob >= {r['target_pull_GBps']} GB/s: best "
                 f"{best:.2f} GB/s ({'met' if best >= r['target_pull_GBps'] else 'not met'}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (about a minute)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the run's data (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    ap.add_argument("--out", type=Path, default=None,
                    help="write compression[-smoke].json and .md into this directory (e.g. benchmarks/results)")
    args = ap.parse_args(argv)
    result = run(args.smoke, args.workdir, args.keep)
    text = markdown(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.out:
        name = "compression-smoke" if args.smoke else "compression"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"{name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
