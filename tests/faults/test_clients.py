"""Misbehaving clients against a real server process: disconnects, trickling, stampedes, and a graceful stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc


def raw(server: Cachesvc) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return s


def session(server: Cachesvc, repo: str = "c/app") -> str:
    status, headers, _ = Http(server.url).request("POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202
    return headers["Location"]


def test_disconnect_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root") as server:
        data = os.urandom(2_000_000)
        # A monolithic upload cut off half-way.
        s = raw(server)
        s.sendall(f"POST /v2/c/app/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:700_000])
        time.sleep(0.3)
        s.close()
        # A chunk cut off half-way: the session keeps only what was acknowledged.
        location = session(server)
        Http(server.url).request("PATCH", location, data[:100_000], {"Content-Range": "0-99999"})
        s = raw(server)
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 100000-1999999\r\n"
                  f"Content-Length: 1900000\r\n\r\n".encode() + data[100_000:900_000])
        time.sleep(0.3)
        s.close()
        time.sleep(0.5)
        files = {p.name: p.stat().st_size for p in (server.root / "uploads").iterdir()}
        assert files == {location.rsplit("/", 1)[1]: 100_000}, files
        h = Http(server.url)
        status, headers, _ = h.request("GET", location)
        assert status == 204 and headers["Range"] == "0-99999"
        status, _, _ = h.request("PUT", f"{location}?digest={sha256(data)}", data[100_000:],
                                 {"Content-Range": f"100000-{len(data) - 1}"})
        assert status == 201
        status, _, body = h.request("GET", f"/v2/c/app/blobs/{sha256(data)}")
        assert body == data
        assert "Traceback" not in server.log_text()


def test_trickling_client_is_cut_off(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root", extra_args=["--client-timeout", "2s"]) as server:
        location = session(server)
        s = raw(server)
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode())
        started = time.monotonic()
        reply = b""
        try:
            for _ in range(30):
                s.sendall(b"x" * 10)  # 10 bytes/s: far below any useful rate
                time.sleep(1)
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    reply += s.recv(4096)
                s.setblocking(True)
                if reply:
                    break
        except OSError:
            pass  # the server closed the connection on us: also a cut-off
        elapsed = time.monotonic() - started
        assert elapsed < 10, "a trickling client must not hold the upload for long"
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:100]
        status, headers, _ = Http(server.url).request("GET", location)
        assert status == 204 and headers["Range"] == "0-0"  # nothing of the trickle was kept


def test_eight_clients_push_the_same_digest(tmp_path: Path) -> None:
    with Cachesvc(tmp_path / "root") as server:
        data = os.urandom(5_000_000)
        results: list[int] = []
        barrier = threading.Barrier(8)

        def push() -> None:
            h = Http(server.url)
            location = session(server)
            barrier.wait()
            status, _, _ = h.request("PUT", f"{location}?digest={sha256(data)}", data)
            results.append(status)

        threads = [threading.Thread(target=push) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [201] * 8
        status, _, body = Http(server.url).request("GET", f"/v2/c/app/blobs/{sha256(data)}")
        assert status == 200 and body == data
        with open(server.root.parent / "usage.json", "w") as f:
            f.write(Http(server.url).request("GET", "/_cachesvc/api/usage")[2].decode())
        assert json.loads((server.root.parent / "usage.json").read_text())["blobs"] == 1
        assert list((server.root / "uploads").iterdir()) == []


def test_sigterm_drains_in_flight_and_flushes_recency(tmp_path: Path) -> None:
    server = Cachesvc(tmp_path / "root").start()
    h = Http(server.url)
    digest = h.push_image("c/app", "main", [os.urandom(1000)])
    rec_before = h.request("GET", "/_cachesvc/api/ls?repo=c/app")[2]
    time.sleep(1.1)
    h.request("GET", "/v2/c/app/manifests/main")  # a use that only lives in memory until a flush
    # A slow upload in flight when SIGTERM arrives still completes.
    data = os.urandom(3_000_000)
    location = session(server)
    result: dict[str, int] = {}

    def slow_put() -> None:
        s = raw(server)
        s.sendall(f"PUT {location}?digest={sha256(data)} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode())
        for i in range(0, len(data), 500_000):
            s.sendall(data[i:i + 500_000])
            time.sleep(0.2)
        result["status"] = int(s.recv(100).split()[1])

    t = threading.Thread(target=slow_put)
    t.start()
    time.sleep(0.3)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert server.proc.wait(30) == 0
    assert result.get("status") == 201
    server.proc = None
    server.start()
    status, _, body = Http(server.url).request("GET", f"/v2/c/app/blobs/{sha256(data)}")
    assert status == 200 and body == data
    before = json.loads(rec_before)["tags"][0]["last_used"]
    after = json.loads(Http(server.url).request("GET", "/_cachesvc/api/ls?repo=c/app")[2])["tags"][0]
    assert after["digest"] == digest and after["last_used"] > before
    server.stop()
