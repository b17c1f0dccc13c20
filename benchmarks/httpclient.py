"""A small, fast HTTP/1.1 keep-alive client on a raw socket: bodies are sent from memory views and received
into one reusable buffer, so the client costs little more than the kernel copies (it must not be what limits
a throughput figure). One ``Connection`` per thread; the socket calls release the GIL.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

RECV_BUFFER = 1024 * 1024
INLINE_BODY = 64 * 1024  # bodies up to this size go out in the same send as the headers

Body = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview] | None
Sink = Callable[[memoryview], object]


class HttpError(RuntimeError):
    """A response that the benchmark did not expect (wrong status, short body, broken connection)."""


class _Stale(ConnectionError):
    """A kept-alive connection the server had already closed: safe to retry on a new one."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers keep the last value
    body: bytes  # empty unless the caller asked to keep it
    length: int  # body bytes received

    def expect(self, *statuses: int, what: str = "") -> Response:
        if self.status not in statuses:
            detail = self.body[:300].decode(errors="replace")
            raise HttpError(f"{what or 'request'}: HTTP {self.status}, expected {statuses}: {detail}")
        return self


def _pieces(body: Body) -> list[memoryview]:
    if body is None:
        return []
    if isinstance(body, (bytes, bytearray, memoryview)):
        return [memoryview(body).cast("B")]
    return [memoryview(p).cast("B") for p in body]


class Connection:
    """One persistent connection to ``base`` (``http://host:port``), reconnecting when the server closes it."""

    def __init__(self, base: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = f"{self.host}:{self.port}"
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.pending = b""
        self.sent_at = 0.0  # when the last request was fully handed to the kernel

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.pending = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.pending = b""
        return sock

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: Body = None, *,
                keep_body: bool = True, sink: Sink | None = None) -> Response:
        """Send one request and read the whole response. The body is kept (``keep_body``), handed piece by
        piece to ``sink``, or dropped. A reused connection the server had closed is retried once."""
        pieces = _pieces(body)
        size = sum(len(p) for p in pieces)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.authority}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if pieces or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reused = self.sock is not None
        try:
            self._send(head, pieces, size)
            self.sent_at = time.perf_counter()
            return self._read_response(method, keep_body, sink)
        except (_Stale, BrokenPipeError, ConnectionResetError) as e:
            self.close()
            if not reused:
                raise HttpError(f"{method} {path}: {e}") from e
        self._send(head, pieces, size)
        self.sent_at = time.perf_counter()
        return self._read_response(method, keep_body, sink)

    def _send(self, head: bytes, pieces: list[memoryview], size: int) -> None:
        sock = self.sock or self._connect()
        if size <= INLINE_BODY:
            sock.sendall(b"".join([head, *pieces]))
            return
        sock.sendall(head)
        for piece in pieces:
            sock.sendall(piece)

    def _recv_some(self) -> bytes:
        assert self.sock is not None
        n = self.sock.recv_into(self.view)
        return bytes(self.view[:n])

    def _read_response(self, method: str, keep_body: bool, sink: Sink | None) -> Response:
        data = self.pending
        first = True
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = self._recv_some()
            if not chunk:
                if first and not data:
                    raise _Stale("connection closed before a response")
                raise HttpError("connection closed inside the response headers")
            first = False
            data += chunk
        head, rest = data[:end].decode("latin-1"), data[end + 4:]
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        kept = bytearray()

        def deliver(piece: memoryview | bytes) -> None:
            if keep_body:
                kept.extend(piece)
            elif sink is not None:
                sink(memoryview(piece))

        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if no_body:
            length, self.pending = 0, rest
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            length = self._read_chunked(rest, deliver)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            self._read_exact(rest, length, deliver)
        else:  # body until the server closes
            length = len(rest)
            deliver(rest)
            while chunk := self._recv_some():
                length += len(chunk)
                deliver(chunk)
            self.close()
        conn = headers.get("connection", "").lower()
        if conn == "close" or (parts[0] == "HTTP/1.0" and conn != "keep-alive"):
            self.close()
        return Response(status, headers, bytes(kept), length)

    def _read_exact(self, rest: bytes, length: int, deliver: Callable[[memoryview | bytes], None]) -> None:
        if len(rest) >= length:
            deliver(rest[:length])
            self.pending = rest[length:]
            return
        if rest:
            deliver(rest)
        remaining = length - len(rest)
        assert self.sock is not None
        recv_into, view = self.sock.recv_into, self.view
        while remaining:
            n = recv_into(view, min(remaining, RECV_BUFFER))
            if n == 0:
                raise HttpError(f"connection closed with {remaining} body bytes missing")
            deliver(view[:n])
            remaining -= n
        self.pending = b""

    def _read_chunked(self, rest: bytes, deliver: Callable[[memoryview | bytes], None]) -> int:
        data, total = rest, 0
        while True:
            while b"\r\n" not in data:
                more = self._recv_some()
                if not more:
                    raise HttpError("connection closed inside a chunked body")
                data += more
            line, _, data = data.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(data) < size + 2:
                more = self._recv_some()
                if not more:
                    raise HttpError("connection closed inside a chunk")
                data += more
            if size == 0:
                # no trailers expected: the terminating CRLF follows the last chunk
                self.pending = data[2:]
                return total
            deliver(data[:size])
            total += size
            data = data[size + 2:]


