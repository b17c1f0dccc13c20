"""Fixtures for API tests: an in-process server with default settings (``make_server`` for others)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.support.inproc import Running


@pytest.fixture
async def reg(make_server: Callable[..., Awaitable[Running]]) -> Running:
    return await make_server()
