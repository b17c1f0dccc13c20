"""Client-side workloads against one registry URL: timed pulls, pushes, and the BuildKit cache export/import
pattern. Each function returns what it measured; ``regclient`` raises on any unexpected response."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from benchmarks import regclient
from benchmarks.content import Blob
from benchmarks.httpclient import Connection, HttpError

T = TypeVar("T")
CURL = shutil.which("curl") or "/usr/bin/curl"


class Clients:
    """One keep-alive connection per worker thread, closed together at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def get(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Connection(self.url)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def run_parallel(url: str, workers: int, items: Iterable[T], fn: Callable[[Connection, T], object]) -> None:
    """``fn(conn, item)`` for every item on ``workers`` threads; the first failure is raised."""
    clients = Clients(url)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(lambda it: fn(clients.get(), it), item) for item in items]:
                future.result()
    finally:
        clients.close()


def push_blob(url: str, repo: str, blob: Blob) -> None:
    with Connection(url) as conn:
        regclient.push_monolithic(conn, repo, blob.digest, blob.pieces())


def timed_push(url: str, repo: str, digest: str, data: memoryview, chunk: int | None) -> tuple[float, float]:
    """(seconds, tail) for one blob upload, monolithic (``chunk`` None) or PATCHed in ``chunk``-byte pieces;
    ``tail`` is the time from the last byte sent to the final 201 (verification, fsync, index commit)."""
    with Connection(url) as conn:
        conn.request("GET", "/v2/").expect(200, what="GET /v2/")  # connect outside the timed part
        t0 = time.perf_counter()
        if chunk is None:
            regclient.push_monolithic(conn, repo, digest, data)
        else:
            regclient.push_chunked(conn, repo, digest, data, chunk)
        t1 = time.perf_counter()
        return t1 - t0, t1 - conn.sent_at


def pull_rate(url: str, repo: str, digest: str, size: int, streams: int, seconds: float,
              range_size: int | None = None) -> tuple[float, int]:
    """(MB/s, requests) with ``streams`` connections GETting the blob (or random ``range_size`` slices of
    it) back to back for ``seconds``; bytes are dropped as they arrive."""
    totals = [0] * streams
    counts = [0] * streams
    errors: list[BaseException] = []
    start = threading.Barrier(streams + 1)

    def worker(i: int) -> None:
        rng = random.Random(i)
        try:
            with Connection(url) as conn:
                conn.request("GET", "/v2/").expect(200, what="GET /v2/")
                start.wait()
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    span = None
                    if range_size is not None:
                        span = (rng.randrange(0, size - range_size + 1), range_size)
                    got = regclient.get_blob(conn, repo, digest, byte_range=span)
                    if span is None and got != size:
                        raise HttpError(f"GET returned {got} bytes of a {size}-byte blob")
                    totals[i] += got
                    counts[i] += 1
        except BaseException as e:  # reported by the caller
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed first: raised below
        start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(totals) / elapsed / 1e6, sum(counts)


def curl_rate(url: str, repo: str, digest: str) -> float:
    """MB/s curl reports for one GET written to /dev/null (a check that the Python client is not the limit)."""
    out = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}",
                          f"{url}/v2/{repo}/blobs/{digest}"], capture_output=True, text=True, check=True,
                         timeout=300).stdout.split()
    if out[0] != "200":
        raise HttpError(f"curl got HTTP {out[0]}")
    return float(out[1]) / 1e6


def cache_export(url: str, repo: str, tag: str, config: Blob, layers: list[Blob], manifest: bytes,
                 workers: int) -> float:
    """Seconds for a BuildKit-style ``--export-cache type=registry``: HEAD the tag, then for every blob HEAD
    and (when missing) POST + one PUT with the whole body, ``workers`` at a time, then PUT the manifest."""

    def upload(conn: Connection, blob: Blob) -> None:
        if regclient.head_blob(conn, repo, blob.digest) is None:
            regclient.push_monolithic(conn, repo, blob.digest, blob.pieces())

    t0 = time.perf_counter()
    with Connection(url) as conn:
        regclient.head_manifest(conn, repo, tag)
        run_parallel(url, workers, [*layers, config], upload)
        regclient.put_manifest(conn, repo, tag, manifest)
    return time.perf_counter() - t0


def cache_import(url: str, repo: str, tag: str, workers: int) -> tuple[float, int, int]:
    """(seconds, blobs, bytes) for a cache import: GET the manifest by tag, then GET the config and every
    layer ``workers`` at a time, each verified against its digest."""
    t0 = time.perf_counter()
    with Connection(url) as conn:
        manifest = json.loads(regclient.get_manifest(conn, repo, tag))
    descriptors = [manifest["config"], *manifest["layers"]]

    def fetch(conn: Connection, desc: dict[str, object]) -> None:
        got = regclient.get_blob(conn, repo, str(desc["digest"]), verify=True)
        if got != desc["size"]:
            raise HttpError(f"blob {desc['digest']}: {got} bytes, manifest says {desc['size']}")

    run_parallel(url, workers, descriptors, fetch)
    elapsed = time.perf_counter() - t0
    return elapsed, len(descriptors), sum(int(d["size"]) for d in descriptors)
