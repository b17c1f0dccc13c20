"""Logging: readable text by default, one JSON object per line with ``--log-format json``.

The access log gets one line per request with the fields operators filter on (request id, method, route,
repository, status, bytes, duration, cache hit or miss). It is on the hot path of every request, so it does not
go through the ``logging`` machinery: lines are formatted directly and written in batches (at most every 50 ms,
and at shutdown); other log records go through ``logging`` with the same two formats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

FLUSH_INTERVAL = 0.05


def _timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record.created)


class AccessLog:
    """One line per request, batched to the stream."""

    def __init__(self, stream: TextIO, fmt: str = "text", enabled: bool = True) -> None:
        self.stream = stream
        self.json = fmt == "json"
        self.enabled = enabled
        self.buffer: list[str] = []
        self._second = -1
        self._second_text = ""
        self._scheduled = False

    def _ts(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._second:
            self._second = sec
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._second_text}.{int(now % 1 * 1000):03d}Z"

    def write(self, rid: str, method: str, path: str, route: str, repo: str | None, status: int, bytes_out: int,
              bytes_in: int, seconds: float, cache: str | None, error: str | None) -> None:
        if not self.enabled:
            return
        ms = round(seconds * 1000, 2)
        if self.json:
            entry = {"ts": self._ts(), "level": "info", "logger": "cachesvc.access", "id": rid, "method": method,
                     "path": path, "route": route, "repo": repo, "status": status, "bytes_out": bytes_out,
                     "bytes_in": bytes_in, "ms": ms, "cache": cache}
            if error:
                entry["error"] = error
            line = json.dumps(entry)
        else:
            line = (f"{self._ts()} INFO cachesvc.access {rid} {method} {path} {status} bytes_out={bytes_out} "
                    f"bytes_in={bytes_in} ms={ms} route={route}")
            if repo:
                line += f" repo={repo}"
            if cache:
                line += f" cache={cache}"
            if error:
                line += f" error={error}"
        self.buffer.append(line)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self.buffer:
            lines, self.buffer = self.buffer, []
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def setup(fmt: str = "text", level: str = "info") -> AccessLog:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True
    return AccessLog(sys.stderr, fmt, enabled=logging.getLogger("cachesvc.access").isEnabledFor(logging.INFO))
