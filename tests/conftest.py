"""Fixtures shared by every suite: an injectable clock and in-process servers on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.inproc import Clock, Running


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_server(tmp_path: Path, clock: Clock) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start in-process servers (real RocksDB, real files, real sockets) with settings overrides; all stopped
    at the end of the test."""
    started: list[Running] = []

    async def make(**overrides: Any) -> Running:
        r = await Running(tmp_path / f"root{len(started)}", clock, **overrides).start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()
