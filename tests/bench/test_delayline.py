"""The build benchmark's delay line over real sockets: it adds at least the RTT, and relays every byte and the
end of each stream intact."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoServer:
    """Echoes each connection's bytes back, then closes once the client has closed its side."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.sock.close()


def start_relay(upstream: int, rtt_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.delayline", "--listen", f"127.0.0.1:{port}",
                             "--to", f"127.0.0.1:{upstream}", "--rtt-ms", str(rtt_ms)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    assert b"delayline:" in proc.stdout.readline()  # printed once it listens
    return proc, port


@pytest.fixture
def relay(echo: EchoServer) -> Iterator[int]:
    proc, port = start_relay(echo.port, 60)
    yield port
    proc.terminate()
    assert proc.wait(10) == 0


def round_trip(port: int, payload: bytes) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += s.recv(1 << 16)
        assert got == payload
        return time.monotonic() - t0


def test_a_request_and_its_answer_take_at_least_the_rtt(relay: int, echo: EchoServer) -> None:
    direct = round_trip(echo.port, b"ping")
    delayed = [round_trip(relay, b"ping") for _ in range(3)]
    assert all(d >= 0.060 for d in delayed), delayed  # never early: 30 ms each way
    assert direct < 0.060
    assert min(delayed) < 1.0, delayed  # and not lost in some queue


def test_every_byte_and_the_end_of_stream_come_through(relay: int) -> None:
    payload = os.urandom(24 << 20)
    want = hashlib.sha256(payload).hexdigest()
    with socket.create_connection(("127.0.0.1", relay)) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        h, n = hashlib.sha256(), 0
        while data := s.recv(1 << 20):  # ends only if the echo server's close came through the relay
            h.update(data)
            n += len(data)
        sender.join()
    assert n == len(payload)
    assert h.hexdigest() == want


def test_many_connections_at_once(relay: int) -> None:
    results: list[float] = []
    threads = [threading.Thread(target=lambda i=i: results.append(round_trip(relay, bytes([i]) * 100_000)))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16
    assert min(results) >= 0.060


def test_upstream_down_closes_the_client_and_keeps_serving(echo: EchoServer) -> None:
    proc, port = start_relay(free_port(), 10)  # nothing listens upstream
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            assert s.recv(10) == b""
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            assert s.recv(10) == b""
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_arguments_exit_non_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.delayline", "--listen", "127.0.0.1:1", "--to",
                           "127.0.0.1:2", "--rtt-ms", "-1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--rtt-ms must be >= 0" in proc.stderr
