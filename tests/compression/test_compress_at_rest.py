"""Compression at rest through the registry API: what gets compressed, that every byte served is the byte pushed
(full GETs and ranges, property-tested), accounting (usage, metrics, per repository), eviction by on-disk size,
restarts, the background worker and its quiet period, fsck."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesvc.store import compression
from tests.compression.conftest import ThreadedServer
from tests.compression.layers import config_json, gzip_of, text_tar, zstd_of
from tests.support.inproc import sha256

MiB = 1024 * 1024


def disk_files(s: ThreadedServer) -> dict[str, int]:
    """Every file under blobs/ with its size."""
    return {str(p.relative_to(s.root / "blobs")): p.stat().st_size for p in (s.root / "blobs").rglob("*")
            if p.is_file()}


def counters(s: ThreadedServer) -> dict[str, int]:
    return s.sync(lambda: dict(s.store.index.counters))


def usage(s: ThreadedServer) -> dict:
    status, _, body = s.request("GET", "/_cachesvc/api/usage")
    assert status == 200
    return json.loads(body)


def test_plain_tar_and_json_are_compressed_compressed_layers_left_alone(server: ThreadedServer, small_tar: bytes,
                                                                        config: bytes) -> None:
    gz, zs = gzip_of(text_tar(10, 200_000)), zstd_of(text_tar(11, 200_000))
    rnd = os.urandom(100_000)
    blobs = {"tar": small_tar, "json": config, "gzip": gz, "zstd": zs, "random": rnd, "tiny": b'{"a": 1}'}
    digests = {k: server.push_blob("cache/app", v) for k, v in blobs.items()}
    assert server.drain() == len(blobs)
    expect = {"tar": True, "json": True, "gzip": False, "zstd": False, "random": False, "tiny": False}
    for kind, digest in digests.items():
        plain, packed = server.forms(digest)
        assert (plain, packed) == (not expect[kind], expect[kind]), kind
        rec = server.sync(lambda d=digest: server.store.index.blob(d))
        assert rec.size == len(blobs[kind])
        on_disk = os.path.getsize(server.store.files.zpath(digest) if packed else server.store.files.path(digest))
        assert rec.stored_size == on_disk, kind
        if expect[kind]:
            assert on_disk <= 0.9 * len(blobs[kind])
        # the client sees exactly what it pushed: size, digest, bytes
        status, headers, body = server.get_blob("cache/app", digest)
        assert status == 200 and body == blobs[kind] and headers["content-length"] == str(len(blobs[kind]))
        assert headers["docker-content-digest"] == digest
        status, headers, _ = server.request("HEAD", f"/v2/cache/app/blobs/{digest}")
        assert status == 200 and headers["content-length"] == str(len(blobs[kind]))
    results = server.store.metrics.compression_results
    assert results.labels("compressed")._value.get() == 2
    assert results.labels("already_compressed")._value.get() == 2
    assert results.labels("small")._value.get() == 1
    assert results.labels("no_gain")._value.get() + results.labels("incompressible")._value.get() == 1


def test_counters_usage_metrics_and_per_repository_figures(server: ThreadedServer, small_tar: bytes,
                                                           config: bytes) -> None:
    server.push_image("cache/a", "main", [small_tar], config)
    server.push_image("cache/b", "main", [small_tar, gzip_of(b"x" * 50_000)], config_json(9))
    assert server.drain() >= 4
    c = counters(server)
    manifests = c["manifest_bytes"]
    assert c["disk_bytes"] == sum(disk_files(server).values()) + manifests  # bytes on disk, exactly
    assert c["stored_bytes"] == c["blob_bytes"] + manifests  # logical
    assert c["compressed_blobs"] == 3
    u = usage(server)
    assert u["saved_bytes"] == c["stored_bytes"] - c["disk_bytes"] > 0
    assert u["compression"]["mode"] == "auto" and u["compression"]["queued"] == 0
    repos = {r["name"]: r for r in u["repositories"]}
    tar_packed = os.path.getsize(server.store.files.zpath(sha256(small_tar)))
    cfg_packed = os.path.getsize(server.store.files.zpath(sha256(config)))
    a = repos["cache/a"]
    assert a["saved_bytes"] == (len(small_tar) - tar_packed) + (len(config) - cfg_packed)
    assert a["disk_bytes"] == a["bytes"] - a["saved_bytes"]
    assert repos["cache/b"]["saved_bytes"] > len(small_tar) - tar_packed  # its own config was compressed too
    status, _, body = server.request("GET", "/metrics")
    text = body.decode()
    assert f"cachesvc_compression_saved_bytes {float(u['saved_bytes'])}" in text
    assert 'cachesvc_repository_bytes{kind="saved",repository="cache/a"} ' + f"{float(a['saved_bytes'])}" in text
    assert "cachesvc_compressed_blobs 3.0" in text
    # a cross-repository mount of a compressed blob carries its saving into the new repository
    status, _, _ = server.request("POST", f"/v2/cache/c/blobs/uploads/?mount={sha256(small_tar)}&from=cache/a")
    assert status == 201
    repos = {r["name"]: r for r in usage(server)["repositories"]}
    assert repos["cache/c"]["saved_bytes"] == len(small_tar) - tar_packed
    # deleting it there takes the saving away again
    status, _, _ = server.request("DELETE", f"/v2/cache/c/blobs/{sha256(small_tar)}")
    assert status == 202
    repos = {r["name"]: r for r in usage(server)["repositories"]}
    assert repos.get("cache/c", {"saved_bytes": 0})["saved_bytes"] == 0


@pytest.fixture(scope="module")
def range_server(tmp_path_factory: pytest.TempPathFactory) -> ThreadedServer:
    s = ThreadedServer(tmp_path_factory.mktemp("ranges") / "root")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stored_big(range_server: ThreadedServer, big_tar: bytes) -> str:
    digest = range_server.push_blob("cache/big", big_tar)
    range_server.drain()
    assert range_server.forms(digest) == (False, True)
    return digest


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(spec=st.one_of(
    st.tuples(st.just("span"), st.integers(0, 6 * MiB), st.integers(0, 3 * MiB)),
    st.tuples(st.just("open"), st.integers(0, 6 * MiB), st.just(0)),
    st.tuples(st.just("suffix"), st.integers(1, 6 * MiB), st.just(0)),
    st.tuples(st.just("boundary"), st.integers(1, 2), st.integers(-3, 3)),
))
def test_any_range_of_a_compressed_blob_is_the_exact_bytes(range_server: ThreadedServer, stored_big: str,
                                                           big_tar: bytes, spec: tuple[str, int, int]) -> None:
    size = len(big_tar)
    kind, a, b = spec
    if kind == "span":
        header, first, last = f"bytes={a}-{a + b}", a, min(a + b, size - 1)
    elif kind == "open":
        header, first, last = f"bytes={a}-", a, size - 1
    elif kind == "suffix":
        header, first, last = f"bytes=-{a}", max(0, size - a), size - 1
    else:  # straddling a frame boundary (frames are 2 MiB)
        start = max(0, a * 2 * MiB + b)
        header, first, last = f"bytes={start}-{start + 10}", start, min(start + 10, size - 1)
    status, headers, body = range_server.get_blob("cache/big", stored_big, header)
    if first >= size:
        assert status == 416
        return
    assert status == 206, body[:200]
    assert body == big_tar[first:last + 1]
    assert headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert headers["content-length"] == str(last - first + 1)


def test_full_get_of_a_multi_frame_blob(range_server: ThreadedServer, stored_big: str, big_tar: bytes) -> None:
    status, _, body = range_server.get_blob("cache/big", stored_big)
    assert status == 200 and hashlib.sha256(body).hexdigest() == stored_big[7:] and body == big_tar


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), size=st.integers(600, 400_000), start=st.floats(0, 1), span=st.floats(0, 1))
def test_any_pushed_content_comes_back_identical(range_server: ThreadedServer, seed: int, size: int, start: float,
                                                 span: float) -> None:
    data = text_tar(seed, size) if seed % 3 else config_json(seed, layers=1 + size // 2000)
    digest = range_server.push_blob("cache/prop", data)
    range_server.drain()
    status, _, body = range_server.get_blob("cache/prop", digest)
    assert status == 200 and body == data
    first = int(start * (len(data) - 1))
    last = min(len(data) - 1, first + int(span * len(data)))
    status, _, body = range_server.get_blob("cache/prop", digest, f"bytes={first}-{last}")
    assert status == 206 and body == data[first:last + 1]


def test_eviction_counts_and_frees_bytes_on_disk(make_threaded: Callable[..., ThreadedServer]) -> None:
    layers = [text_tar(20 + i, 400_000) for i in range(4)]
    logical = sum(len(x) for x in layers)
    budget = 1_000_000  # under the logical total, well over what the compressed layers take
    s = make_threaded(max_size=budget)
    for i, layer in enumerate(layers):
        s.push_image("cache/app", f"t{i}", [layer], config_json(i))
        s.drain()
    assert logical > budget
    c = counters(s)
    assert c["disk_bytes"] < budget and c["stored_bytes"] > budget
    status, _, body = s.request("POST", "/_cachesvc/api/evict")
    assert status == 200 and json.loads(body)["evictions"] == []  # within budget by bytes on disk
    for i in range(4):
        assert s.request("HEAD", f"/v2/cache/app/manifests/t{i}")[0] == 200
    # evicting one root frees its compressed size, and both forms of its blobs are gone
    before = c["disk_bytes"]
    packed = os.path.getsize(s.store.files.zpath(sha256(layers[0])))
    packed += os.path.getsize(s.store.files.zpath(sha256(config_json(0))))
    manifest = len(s.request("GET", "/v2/cache/app/manifests/t0")[2])
    status, _, body = s.request("POST", "/_cachesvc/api/rm", json.dumps({"ref": "cache/app:t0"}).encode())
    assert status == 200, body
    (ev,) = json.loads(body)["evictions"]
    after = counters(s)["disk_bytes"]
    assert before - after == ev["bytes"] == packed + manifest  # the compressed files and the manifest
    assert s.call(s.store.reclaimer.drained(10))  # files go in the background, after the index
    assert s.forms(sha256(layers[0])) == (False, False)
    assert after == sum(disk_files(s).values()) + counters(s)["manifest_bytes"]


def test_queue_survives_a_restart_and_backfill_after_off(make_threaded: Callable[..., ThreadedServer],
                                                         small_tar: bytes, config: bytes) -> None:
    s = make_threaded()
    d = s.push_blob("cache/app", small_tar)  # queued, not compressed yet (quiet period)
    assert s.forms(d) == (True, False)
    s.restart()
    assert s.store.compressor.pending() == 1
    s.drain()
    assert s.forms(d) == (False, True)
    # stored while compression was off: found by the one-off scan once it is on again
    off = make_threaded(compress_at_rest="off")
    d2 = off.push_blob("cache/app", config)
    assert off.drain() == 0 and off.forms(d2) == (True, False)
    assert usage(off)["compression"]["mode"] == "off"
    root = off.root
    off.stop()
    on = ThreadedServer(root)
    try:
        assert on.drain() == 1
        assert on.forms(d2) == (False, True)
        assert on.get_blob("cache/app", d2)[2] == config
        on.restart()  # the scan is done: it does not run again
        assert on.store.compressor.backfill is None and on.store.compressor.pending() == 0
    finally:
        on.stop()


def test_background_worker_waits_for_quiet(server: ThreadedServer, small_tar: bytes,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "QUIET_SECONDS", 0.3)
    status, headers, _ = server.request("POST", "/v2/cache/app/blobs/uploads/")  # an upload stays open
    assert status == 202
    d = server.push_blob("cache/app", small_tar)
    time.sleep(0.8)
    assert server.forms(d) == (True, False), "compressed while an upload was open"
    server.request("DELETE", headers["location"])
    deadline = time.monotonic() + 10
    while server.forms(d) != (False, True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.forms(d) == (False, True)
    assert server.get_blob("cache/app", d)[2] == small_tar


def test_a_reader_of_the_plain_file_keeps_streaming_through_the_swap(server: ThreadedServer,
                                                                     big_tar: bytes) -> None:
    import http.client

    d = server.push_blob("cache/app", big_tar)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", f"/v2/cache/app/blobs/{d}")
    resp = conn.getresponse()
    head = resp.read(1000)  # the response holds the plain file open (sendfile)
    server.drain()
    assert server.forms(d) == (False, True)
    rest = resp.read()
    conn.close()
    assert head + rest == big_tar


def test_fsck_hashes_decompressed_content_and_finds_damage(server: ThreadedServer, small_tar: bytes,
                                                           config: bytes) -> None:
    from cachesvc.store.fsck import fsck

    server.push_image("cache/app", "main", [small_tar], config)
    server.drain()
    events: list[dict] = []

    async def emit(e: dict) -> None:
        events.append(e)

    report = server.call(fsck(server.store, repair=False, emit=emit))
    assert (report.corrupt, report.missing, report.stray) == (0, 0, 0) and report.bytes == len(small_tar) + len(
        config)
    # a leftover second form is reported as stray (and removed by repair)
    d = sha256(config)
    Path(server.store.files.path(d)).write_bytes(config)
    report = server.call(fsck(server.store, repair=True, emit=emit))
    assert report.stray == 1 and report.removed_stray == 1 and server.forms(d) == (False, True)
    # a damaged compressed file is corrupt; repair quarantines it and drops what needs it
    zpath = Path(server.store.files.zpath(sha256(small_tar)))
    damaged = bytearray(zpath.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    zpath.write_bytes(damaged)
    report = server.call(fsck(server.store, repair=True, emit=emit))
    assert report.corrupt == 1 and report.quarantined == 1 and report.dropped_manifests == 1
    assert (server.root / "quarantine" / f"sha256-{sha256(small_tar)[7:]}.zst").exists()
    assert server.request("GET", "/v2/cache/app/manifests/main")[0] == 404


def test_off_leaves_everything_plain(make_threaded: Callable[..., ThreadedServer], small_tar: bytes) -> None:
    s = make_threaded(compress_at_rest="off")
    d = s.push_blob("cache/app", small_tar)
    assert s.drain() == 0 and s.forms(d) == (True, False)
    assert counters(s)["disk_bytes"] == len(small_tar)


def test_a_damaged_seek_table_is_a_clean_miss(server: ThreadedServer, small_tar: bytes, config: bytes) -> None:
    server.push_image("cache/app", "main", [small_tar], config)
    server.drain()
    d = sha256(small_tar)
    zpath = Path(server.store.files.zpath(d))
    zpath.write_bytes(zpath.read_bytes()[:-7])
    status, _, _ = server.get_blob("cache/app", d)
    assert status == 404
    assert server.request("HEAD", "/v2/cache/app/manifests/main")[0] == 404
    assert (server.root / "quarantine" / f"sha256-{d[7:]}.zst").exists()


def test_multi_threaded_compression_gives_the_same_file(make_threaded: Callable[..., ThreadedServer],
                                                        big_tar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from cachesvc.store.seekable import compress_bytes

    monkeypatch.setattr(compression, "default_workers", lambda: 3)
    s = make_threaded()
    assert s.store.compressor.workers == 3
    d = s.push_blob("cache/app", big_tar)
    s.drain()
    assert Path(s.store.files.zpath(d)).read_bytes() == compress_bytes(big_tar)
    assert s.get_blob("cache/app", d)[2] == big_tar


def test_clients_that_hang_up_mid_stream_leak_nothing(range_server: ThreadedServer, stored_big: str,
                                                      big_tar: bytes) -> None:
    import socket

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    range_server.get_blob("cache/big", stored_big)  # warm up the worker threads
    before = open_fds()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", range_server.port)) as sock:
            sock.sendall(f"GET /v2/cache/big/blobs/{stored_big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(1000)
    deadline = time.monotonic() + 10
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before
    status, _, body = range_server.get_blob("cache/big", stored_big)
    assert status == 200 and body == big_tar


def test_verify_on_read_checks_the_decompressed_bytes(make_threaded: Callable[..., ThreadedServer],
                                                      small_tar: bytes, config: bytes) -> None:
    """A compressed file that decompresses cleanly to the wrong bytes (frame checksums cannot see that) is
    cut off before its last byte and quarantined, with --verify-on-read."""
    import http.client

    from cachesvc.store.seekable import compress_bytes

    s = make_threaded(verify_on_read=True)
    s.push_image("cache/app", "main", [small_tar], config)
    s.drain()
    d = sha256(small_tar)
    assert s.forms(d) == (False, True)
    status, _, body = s.get_blob("cache/app", d)
    assert status == 200 and body == small_tar  # whole and verified
    wrong = bytearray(small_tar)
    wrong[len(wrong) - 10] ^= 0x01
    Path(s.store.files.zpath(d)).write_bytes(compress_bytes(bytes(wrong)))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        s.get_blob("cache/app", d)
    assert (s.root / "quarantine").exists() and any((s.root / "quarantine").iterdir())
    assert s.request("GET", "/v2/cache/app/manifests/main")[0] == 404
