"""A TCP relay that delays every byte by a fixed one-way time in each direction: the build benchmark's model of
a distant registry, since this kernel has no ``netem`` (nor ``fq``, which would honour departure times a tc
BPF program could set).

``python -m benchmarks.delayline --listen HOST:PORT --to HOST:PORT --rtt-ms MS``

It runs in the remote namespace, in front of the registry, behind the ``tc tbf`` link::

    builder --veth (tbf: bandwidth)--> delayline (RTT/2 each way) --> registry on the remote's loopback

Every chunk read from one side is written to the other side once ``RTT/2`` has passed since it was read, so
each request/response exchange gains one RTT, as over a real path. Each direction queues up to two bandwidth x
delay products, so the delay does not cap throughput below the link's rate. (Pipes and ``splice(2)`` would spare
the copies, but a pipe cannot grow past 1 MiB without CAP_SYS_RESOURCE: too small a window at 1 Gbit/s.) The
benchmark counts the relay's CPU time with the other processes of the run.

What it leaves out makes the remote *faster* than a real one at the same RTT: the relay terminates TCP, so a
client's connect() completes at once (a real handshake takes one RTT) and its congestion window grows at the
veth's ~0.05 ms RTT instead of the modelled one (no slow-start penalty).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque

CHUNK = 1 << 20
CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux
TFD_TIMER_ABSTIME = 1
#: errors that end a connection (the peer went away); anything else is a bug and is raised
GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Timer:
    """A timerfd armed for an absolute ``time.monotonic()`` instant: nanosecond wake-ups (epoll's own timeout is
    whole milliseconds, which would add up to 1 ms to every delay)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")

    def arm(self, at: float | None) -> None:
        """Fire at monotonic time ``at`` (None: disarm)."""
        spec = _Itimerspec()
        if at is not None:
            at = max(at, 1e-9)  # an all-zero it_value would disarm
            spec.it_value.tv_sec = int(at)
            spec.it_value.tv_nsec = int((at - int(at)) * 1e9)
        if self._libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


class Direction:
    """One direction of a relayed connection: chunks read from ``src`` wait in a queue until they are due."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, capacity: int) -> None:
        self.src, self.dst, self.delay, self.capacity = src, dst, delay, capacity
        self.queue: deque[tuple[float, memoryview]] = deque()  # (due, data); empty data = end of stream
        self.buffered = 0
        self.eof_read = False
        self.done = False

    def wants_read(self) -> bool:
        return not self.eof_read and self.buffered < self.capacity

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def read(self, now: float) -> None:
        """Queue what the source has, stamped with when it is due at the other end."""
        try:
            data = self.src.recv(CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.eof_read = True
        self.buffered += len(data)
        self.queue.append((now + self.delay, memoryview(data)))

    def write(self, now: float) -> None:
        """Send everything that is due (as much as the destination takes)."""
        while self.queue and self.queue[0][0] <= now:
            due, data = self.queue[0]
            if not data:
                self.queue.popleft()
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                self.done = True
                return
            try:
                n = self.dst.send(data)
            except BlockingIOError:
                return
            self.buffered -= n
            if n == len(data):
                self.queue.popleft()
            else:
                self.queue[0] = (due, data[n:])
                return  # the destination is full; wait until it is writable


class Connection:
    """A client connection and its upstream, relayed both ways."""

    def __init__(self, client: socket.socket, upstream: socket.socket, delay: float, capacity: int) -> None:
        self.client, self.upstream = client, upstream
        self.up = Direction(client, upstream, delay, capacity)
        self.down = Direction(upstream, client, delay, capacity)

    @property
    def finished(self) -> bool:
        return self.up.done and self.down.done

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()


class Relay:
    """Accepts on ``listen`` and relays each connection to ``upstream`` with ``rtt/2`` each way."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], rtt: float, rate_bytes: float) -> None:
        self.upstream = upstream
        self.delay = rtt / 2
        # two bandwidth x delay products (and at least 1 MiB), so a full queue never holds the link back
        self.capacity = max(1 << 20, int(rate_bytes * self.delay * 2))
        self.sel = selectors.DefaultSelector()
        self.server = socket.create_server(listen, reuse_port=False, backlog=128)
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ, None)
        self.timer = Timer()
        self.sel.register(self.timer.fd, selectors.EVENT_READ, self.timer)
        self.conns: set[Connection] = set()
        self.interest: dict[socket.socket, int] = {}

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except BlockingIOError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.add(Connection(client, upstream, self.delay, self.capacity))

    def _want(self, sock: socket.socket, events: int, conn: Connection) -> None:
        old = self.interest.get(sock, 0)
        if events == old:
            return
        if old == 0:
            self.sel.register(sock, events, conn)
        elif events == 0:
            self.sel.unregister(sock)
        else:
            self.sel.modify(sock, events, conn)
        self.interest[sock] = events

    def _drop(self, conn: Connection) -> None:
        for sock in (conn.client, conn.upstream):
            if self.interest.pop(sock, 0):
                self.sel.unregister(sock)
        conn.close()
        self.conns.discard(conn)

    def serve_forever(self) -> None:
        while True:
            now = time.monotonic()
            wake: float | None = None
            for conn in list(self.conns):
                try:
                    for d in (conn.up, conn.down):
                        d.write(now)
                except OSError as e:
                    if e.errno not in GONE:
                        raise
                    self._drop(conn)
                    continue
                if conn.finished:
                    self._drop(conn)
                    continue
                events = {conn.client: 0, conn.upstream: 0}
                for d in (conn.up, conn.down):
                    if d.wants_read():
                        events[d.src] |= selectors.EVENT_READ
                    due = d.next_due()
                    if due is not None:
                        if due <= now:
                            events[d.dst] |= selectors.EVENT_WRITE  # due but the destination was full
                        else:
                            wake = due if wake is None else min(wake, due)
                for sock, ev in events.items():
                    self._want(sock, ev, conn)
            self.timer.arm(wake)
            for key, _ in self.sel.select():
                if key.data is None:
                    self.accept()
                    continue
                if key.data is self.timer:
                    self.timer.clear()
                    continue
                conn = key.data
                if conn not in self.conns:
                    continue
                try:
                    for d in (conn.up, conn.down):
                        if d.src is key.fileobj and d.wants_read():
                            d.read(time.monotonic())
                except OSError as e:
                    if e.errno not in GONE:
                        raise
                    self._drop(conn)


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delayline", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="the upstream server")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add (half each way)")
    parser.add_argument("--rate-mbit", type=float, default=1000.0, help="link rate, to size the queues (1000)")
    args = parser.parse_args(argv)
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must be >= 0")
    relay = Relay(parse_addr(args.listen), parse_addr(args.to), args.rtt_ms / 1000, args.rate_mbit * 1e6 / 8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"delayline: {args.listen} -> {args.to}, +{args.rtt_ms:g} ms RTT", flush=True)
    relay.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
