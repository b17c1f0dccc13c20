"""The machine's own limits, measured in the same run as the registries so each figure can be read as a fraction
of what the hardware allows: loopback TCP, sequential disk write (+fsync) and read (cached and O_DIRECT),
sha256, and, for request rates, the ceiling of a do-nothing aiohttp+uvloop server (cachesvc's own stack).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import loadgen
from benchmarks.profiles import Profile

MB = 1_000_000
BLOCK = 1024 * 1024


@dataclass
class Limit:
    key: str
    label: str
    value: float  # the best of the samples: a limit is what the machine can do when nothing gets in the way
    unit: str  # "MB/s" or "req/s"
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def merge(*measured: dict[str, Limit]) -> dict[str, Limit]:
    """Limits measured several times in a run (at its start and its end), each keeping its best value."""
    out: dict[str, Limit] = {}
    for found in measured:
        for key, lim in found.items():
            have = out.setdefault(key, Limit(key, lim.label, lim.value, lim.unit))
            have.samples.append(lim.value)
            have.value = max(have.samples)
    return out


_RECEIVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
def sink(c):
    buf = bytearray(1 << 20)
    total = 0
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        total += k
    c.sendall(total.to_bytes(8, "big"))
    c.close()
threads = []
for _ in range(int(sys.argv[1])):
    c, _ = srv.accept()
    t = threading.Thread(target=sink, args=(c,))
    t.start()
    threads.append(t)
for t in threads:
    t.join()
"""


def loopback(streams: int, seconds: float, payload: memoryview, source: Path | None = None) -> float:
    """MB/s through ``streams`` loopback TCP connections into a separate receiving process that recv_into's a
    1 MiB buffer (as the benchmark client does). The sender copies from memory (``sendall``: a push), or with
    ``source`` sends a page-cached file with ``sendfile`` (zero-copy: how both registries serve a pull)."""
    # receivers in as many processes as there are cores (one process's threads would share one GIL)
    nproc = max(1, min(streams, os.cpu_count() or 1))
    shares = [streams // nproc + (1 if i < streams % nproc else 0) for i in range(nproc)]
    procs = [subprocess.Popen([sys.executable, "-c", _RECEIVER, str(n)], stdout=subprocess.PIPE, text=True)
             for n in shares]
    try:
        ports = [int(p.stdout.readline()) for p in procs if p.stdout is not None]
        totals: list[int] = []
        chunk = payload[:4 * BLOCK]

        def send(port: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                deadline = time.perf_counter() + seconds
                if source is None:
                    while time.perf_counter() < deadline:
                        s.sendall(chunk)
                else:
                    with open(source, "rb") as f:
                        size, offset = os.fstat(f.fileno()).st_size, 0
                        while time.perf_counter() < deadline:
                            offset += os.sendfile(s.fileno(), f.fileno(), offset, 16 * BLOCK)
                            if offset >= size:
                                offset = 0
                s.shutdown(socket.SHUT_WR)
                totals.append(int.from_bytes(s.recv(8), "big"))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=send, args=(port,)) for port, n in zip(ports, shares, strict=True)
                   for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            p.wait(30)
    return sum(totals) / elapsed / MB


def disk_write_fsync(path: Path, size: int, payload: memoryview) -> float:
    """MB/s writing ``size`` bytes sequentially in 1 MiB blocks, fsync included (what a verified upload costs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        written = 0
        while written < size:
            n = min(BLOCK, size - written)
            written += os.write(fd, payload[written % (len(payload) - BLOCK):][:n])
        os.fsync(fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    return size / elapsed / MB


def disk_read_cached(path: Path) -> float:
    """MB/s reading a file that is in the page cache (blobs just pushed are)."""
    buf = bytearray(BLOCK)
    t0 = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total / (time.perf_counter() - t0) / MB


def disk_read_direct(path: Path) -> float | None:
    """MB/s reading the file with O_DIRECT (bypassing the page cache: the device itself); None if unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return None
    buf = mmap.mmap(-1, 4 * BLOCK)  # page-aligned, as O_DIRECT requires
    try:
        t0 = time.perf_counter()
        total = 0
        while n := os.readv(fd, [buf]):
            total += n
        return total / (time.perf_counter() - t0) / MB
    except OSError:
        return None
    finally:
        os.close(fd)
        buf.close()


def sha256_rate(size: int, payload: memoryview, threads: int = 1) -> float:
    """MB/s of hashlib sha256 over 1 MiB updates, in ``threads`` threads at once (hashlib drops the GIL)."""
    per_thread = size // threads

    def work() -> None:
        h = hashlib.sha256()
        done = 0
        while done < per_thread:
            h.update(payload[done % (len(payload) - BLOCK):][:BLOCK])
            done += BLOCK

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per_thread * threads / (time.perf_counter() - t0) / MB


_CEILING_SERVER = r"""
import asyncio, sys
import uvloop
from aiohttp import web
BODY = b"x" * int(sys.argv[2])
async def handle(request):
    if request.method == "HEAD":
        return web.Response(status=200, headers={"Content-Length": "1234",
                                                 "Content-Type": "application/octet-stream"})
    return web.Response(status=200, body=BODY, content_type="application/vnd.oci.image.manifest.v1+json")
async def main():
    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


@contextlib.contextmanager
def ceiling_server(body_size: int) -> Iterator[str]:
    """A do-nothing aiohttp low-level server on uvloop (the stack cachesvc runs on); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _CEILING_SERVER, str(port), str(body_size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("ceiling server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def measure(profile: Profile, workdir: Path, payload: memoryview, manifest_size: int,
            progress: Callable[[str], None]) -> dict[str, Limit]:
    """Every limit, keyed for lookup by the registry benchmark. The disk test file stays in ``workdir`` (it is
    deleted with the rest of the run's data at the very end, never between measurements: see ``discard``)."""
    out: dict[str, Limit] = {}

    def add(key: str, label: str, value: float | None, unit: str = "MB/s") -> None:
        if value is not None:
            out[key] = Limit(key, label, round(value, 1), unit, [round(value, 1)])
            progress(f"limit {label}: {value:,.0f} {unit}")

    probe = workdir / "disk-probe.bin"
    add("disk_write", "disk write+fsync, sequential", disk_write_fsync(probe, profile.disk_test_size, payload))
    add("disk_read_cached", "disk read, page cache", disk_read_cached(probe))
    add("disk_read_direct", "disk read, O_DIRECT", disk_read_direct(probe))
    secs = profile.loopback_seconds
    for n in (1, 8):
        streams = f"{n} stream{'s' * (n > 1)}"
        add(f"loopback_copy_{n}", f"loopback TCP memory->memory, {streams}", loopback(n, secs, payload))
        add(f"loopback_sendfile_{n}", f"loopback TCP sendfile(cached file)->memory, {streams}",
            loopback(n, secs, payload, probe))
    add("sha256_1", "sha256, 1 thread", sha256_rate(profile.sha_size, payload))
    cpus = os.cpu_count() or 1
    add("sha256_all", f"sha256, {cpus} threads", sha256_rate(profile.sha_size, payload, cpus))
    seconds = max(1, profile.rate_seconds // 2)
    with ceiling_server(manifest_size) as url:
        for c in profile.concurrencies:
            head = loadgen.ab_head(f"{url}/v2/x/blobs/sha256:0", c, seconds).check(expect_errors=False)
            add(f"ceiling_head_c{c}", f"aiohttp+uvloop no-op HEAD, c={c}", head.rps, "req/s")
            get = loadgen.wrk(f"{url}/v2/x/manifests/t", c, seconds).check(expect_errors=False)
            add(f"ceiling_get_c{c}", f"aiohttp+uvloop no-op GET {manifest_size} B, c={c}", get.rps, "req/s")
    return out
