"""Skipping a test whose real client is not installed, with a reason that names the Debian package to install."""

from __future__ import annotations

import pytest

from tests.support.clients import ToolMissing, tool_path


def need(*tools: str) -> None:
    """Skip the calling test unless every named client binary is installed."""
    for tool in tools:
        try:
            tool_path(tool)
        except ToolMissing as e:
            pytest.skip(str(e))
