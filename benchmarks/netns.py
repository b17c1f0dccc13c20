"""A private pair of network namespaces for the build benchmark: the *builder* and a *remote* host.

Nothing in the machine's own network namespace changes: both ends of the link live in namespaces this module
creates (and deletes)::

    builder netns (cbb-<pid>)                              remote netns (cbr-<pid>)
      lo: dockerd/buildah, cachesvc, co-located registries    lo
      veth 10.213.0.1/30  ---- tc tbf, each direction ----  veth 10.213.0.2/30: docker-registry

Everything the builder does runs inside the builder namespace, so its loopback counters count exactly the
bytes the benchmark moves between the engine and a co-located registry, and the veth counters the bytes to
the remote registry. The link's bandwidth is shaped with ``tc qdisc ... tbf`` on both veth ends (this kernel
has tbf and htb but no netem). The veth's own round trip is ~0.05 ms: a registry in the same rack. A farther
one is modelled by ``benchmarks/delayline.py`` in the remote namespace (``build_bench --link-rtt MS``).

Processes are put into a namespace with ``nsenter --net=/run/netns/NAME`` (only the network namespace:
dockerd's mounts stay in the machine's mount namespace, where the benchmark can see and release them);
the remote registry is started with ``ip netns exec``, which also gives it a matching /sys.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks.procstat import ProcessCpu

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
BUILDER_ADDR = "10.213.0.1"
REMOTE_ADDR = "10.213.0.2"
PREFIX_LEN = 30


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=True, timeout=30)


def cleanup_stale(prefixes: tuple[str, ...] = ("cbb-", "cbr-")) -> list[str]:
    """Delete namespaces an earlier, killed run of this benchmark left behind (its pid no longer exists)."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        if not name.startswith(prefixes):
            continue
        pid = name.split("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def tbf_args(rate_bits: int) -> list[str]:
    """``tc ... tbf`` arguments for ``rate_bits`` per second.

    burst: 4 ms worth of bytes (at least 64 KiB, more than one GSO segment), so the shaper never drops a
    packet for being larger than its bucket; queue: 20 ms worth (at least 1 MiB), enough to keep one TCP flow
    at the rate without building a long standing queue.
    """
    rate_bytes = rate_bits // 8
    burst = max(64 * 1024, rate_bytes * 4 // 1000)
    limit = max(1 << 20, rate_bytes * 20 // 1000)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "limit", str(limit)]


@dataclass
class LinkCounters:
    """Bytes and packets seen on one interface (both directions)."""

    rx_bytes: int
    tx_bytes: int

    @property
    def total(self) -> int:
        return self.rx_bytes + self.tx_bytes


class NetnsPair:
    """The builder and remote namespaces, linked by a rate-limited veth pair; a context manager."""

    def __init__(self, rate_bits: int, tag: str | None = None) -> None:
        tag = tag or str(os.getpid())
        self.builder = f"cbb-{tag}"
        self.remote = f"cbr-{tag}"
        self.veth_builder = f"vb{tag}"[:15]
        self.veth_remote = f"vr{tag}"[:15]
        self.rate_bits = rate_bits
        self.created = False

    # -- lifecycle ----------------------------------------------------------------------------------------
    def create(self) -> NetnsPair:
        cleanup_stale()
        for ns in (self.builder, self.remote):
            _ip("netns", "del", ns, check=False)
            _ip("netns", "add", ns)
        self.created = True
        for ns in (self.builder, self.remote):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.builder, "link", "add", self.veth_builder, "type", "veth", "peer", "name",
            self.veth_remote, "netns", self.remote)
        _ip("-n", self.builder, "addr", "add", f"{BUILDER_ADDR}/{PREFIX_LEN}", "dev", self.veth_builder)
        _ip("-n", self.remote, "addr", "add", f"{REMOTE_ADDR}/{PREFIX_LEN}", "dev", self.veth_remote)
        _ip("-n", self.builder, "link", "set", self.veth_builder, "up")
        _ip("-n", self.remote, "link", "set", self.veth_remote, "up")
        if self.rate_bits > 0:
            _tc("-n", self.builder, "qdisc", "add", "dev", self.veth_builder, "root", *tbf_args(self.rate_bits))
            _tc("-n", self.remote, "qdisc", "add", "dev", self.veth_remote, "root", *tbf_args(self.rate_bits))
        return self

    def delete(self) -> None:
        if not self.created:
            return
        for ns in (self.builder, self.remote):
            _ip("netns", "del", ns, check=False)
        self.created = False

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- running things inside --------------------------------------------------------------------------
    @staticmethod
    def enter(ns: str) -> list[str]:
        """Command prefix that runs a program in namespace ``ns`` (network only)."""
        return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]

    @staticmethod
    def exec_in(ns: str) -> list[str]:
        """Command prefix ``ip netns exec NS`` (network namespace plus a matching /sys)."""
        return ["ip", "netns", "exec", ns]

    @staticmethod
    def call_in(ns: str, fn: Callable[[], T], timeout: float = 60) -> T:
        """Run ``fn()`` on a new thread that has joined namespace ``ns``: its sockets are created there.

        Only that thread changes namespace (setns(2) with CLONE_NEWNET is per thread), and it exits after.
        """
        box: dict[str, object] = {}

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({ns}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as e:  # re-raised in the caller
                box["error"] = e

        thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in netns {ns} did not finish within {timeout}s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    # -- counters ---------------------------------------------------------------------------------------
    @staticmethod
    def counters(ns: str, dev: str) -> LinkCounters:
        out = _ip("-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout
        stats = json.loads(out)[0]["stats64"]
        return LinkCounters(int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"]))

    def loopback_bytes(self) -> int:
        """Bytes over the builder's loopback (each packet is counted once: lo's rx equals its tx)."""
        return self.counters(self.builder, "lo").rx_bytes

    def remote_bytes(self) -> int:
        """Bytes over the link to the remote host, both directions, headers included."""
        return self.counters(self.builder, self.veth_builder).total

    @staticmethod
    def pids(ns: str) -> list[int]:
        out = _ip("netns", "pids", ns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def processes(self) -> dict[int, ProcessCpu]:
        """Every process in both namespaces, with its CPU time so far."""
        out = {}
        for ns in (self.builder, self.remote):
            for pid in self.pids(ns):
                cpu = ProcessCpu.read(pid)
                if cpu is not None:
                    out[pid] = cpu
        return out

    def qdisc_text(self) -> str:
        with contextlib.suppress(subprocess.CalledProcessError):
            return _tc("-n", self.builder, "qdisc", "show", "dev", self.veth_builder).stdout.strip()
        return ""
