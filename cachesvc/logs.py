"""Logging: readable text by default, one JSON object per line with ``--log-format json``.

The access log gets one line per request with the fields operators filter on (request id, method, route,
repository, status, bytes, duration, cache hit or miss).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("cachesvc.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields:
            record.msg = access_text(fields)
            record.args = None
        return super().format(record)


def access_text(f: dict[str, Any]) -> str:
    line = (f"{f['id']} {f['method']} {f['path']} {f['status']} bytes_out={f['bytes_out']} "
            f"bytes_in={f['bytes_in']} ms={f['ms']} route={f['route']}")
    if f.get("repo"):
        line += f" repo={f['repo']}"
    if f.get("cache"):
        line += f" cache={f['cache']}"
    if f.get("error"):
        line += f" error={f['error']}"
    return line


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True


def access(fields: dict[str, Any]) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("", extra={"fields": fields})
