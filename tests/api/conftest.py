"""Fixtures for API tests: an in-process server on a real socket with a real RocksDB and real files."""

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
    started: list[Running] = []

    async def make(**overrides: Any) -> Running:
        r = await Running(tmp_path / f"root{len(started)}", clock, **overrides).start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()


@pytest.fixture
async def reg(make_server: Callable[..., Awaitable[Running]]) -> Running:
    return await make_server()
