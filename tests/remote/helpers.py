"""Helpers of the shared-tier tests: where the object store under test is, and how to watch a builder's tier."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.inproc import Running
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import Cachesvc


@dataclass
class ObjectStoreUnderTest:
    """Where the tests' shared tier lives, and how to reach it."""

    base_url: str  # s3://bucket[/prefix]
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)
    cluster: SeaweedFS | None = None

    def url(self, name: str) -> str:
        """A prefix of its own for one test."""
        return f"{self.base_url.rstrip('/')}/{name}-{uuid.uuid4().hex[:8]}"

    def remote(self, url: str, timeout: float = 3.0) -> Any:
        from cachesvc.remote.objects import Remote

        return Remote(url, endpoint=self.endpoint, timeout=timeout)

    def flags(self, url: str) -> list[str]:
        out = ["--remote", url]
        if self.endpoint:
            out += ["--remote-endpoint", self.endpoint]
        return out


async def drained(server: Running, timeout: float = 30.0) -> None:
    """Wait until a server's write-behind queue is empty."""
    tier = server.server.remote if server.server else None
    assert tier is not None and tier.writeback is not None
    deadline = time.monotonic() + timeout
    while tier.writeback.depth or tier.writeback.active:
        assert time.monotonic() < deadline, f"write-behind still has {tier.writeback.depth} entries: " \
                                            f"{tier.writeback.last_error}"
        await asyncio.sleep(0.05)


def builder(root: Path, store: ObjectStoreUnderTest, url: str, *extra: str, port: int | None = None) -> Cachesvc:
    """A ``cachesvc serve`` process with its own root on the shared tier ``url`` (not started)."""
    return Cachesvc(root, port=port, extra_args=[*store.flags(url), *extra], env=store.env)


def remote_status(server: Cachesvc) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/_cachesvc/api/remote", timeout=10) as r:
        return dict(json.loads(r.read()))


def wait_drained(server: Cachesvc, timeout: float = 60.0) -> dict[str, Any]:
    """Until the server's write-behind queue is empty; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = remote_status(server)
        if status["queue"]["depth"] == 0:
            return status
        assert time.monotonic() < deadline, f"write-behind not drained after {timeout}s: {status['queue']}"
        time.sleep(0.1)


def metrics(server: Cachesvc) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
