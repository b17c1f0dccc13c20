"""The one typed settings object, and how it is filled: defaults <- TOML file <- ``CACHESVC_*`` env <- flags.

Every knob is declared once, as a field of :class:`Settings` with its help text and parser; the CLI flags, the
environment variable names and the TOML keys are all derived from that declaration, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cachesvc.units import parse_duration, parse_size, parse_size_or_percent

ENV_PREFIX = "CACHESVC_"


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return value


def _fraction(value: str | float) -> float:
    text = str(value).strip()
    f = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 < f <= 1:
        raise ValueError(f"must be a fraction in (0, 1] or a percentage, got {value!r}")
    return f


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value

    return parse


def _quota(value: str) -> str:
    pattern, sep, size = value.partition("=")
    if not sep or not pattern:
        raise ValueError(f"repo quota must be PATTERN=SIZE, got {value!r}")
    parse_size(size)
    return value


def _positive_int(value: str | int) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return n


def _knob(default: Any, help: str, parse: Callable[[Any], Any] | None = None, *, repeat: bool = False,
          metavar: str | None = None) -> Any:
    meta = {"help": help, "parse": parse or (lambda v: v), "repeat": repeat, "metavar": metavar}
    if repeat:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Everything the server can be told. Field names are the TOML keys; flags and env vars derive from them."""

    listen: str = _knob("127.0.0.1:5000", "address to serve on, HOST:PORT", _listen, metavar="HOST:PORT")
    root: Path = _knob(Path("./.cachesvc-data"), "data directory: blobs, upload sessions and the index", Path,
                       metavar="DIR")
    max_size: int = _knob(0, "budget for stored blobs and manifests, e.g. 50GiB (0: no budget)", parse_size,
                          metavar="SIZE")
    min_free: tuple[int, float] = _knob((0, 0.0), "free space to keep on the filesystem under --root, a size "
                                        "or a percentage (0: off)", parse_size_or_percent, metavar="SIZE|PCT")
    evict_to: float = _knob(0.9, "when over budget, evict down to this fraction of it", _fraction,
                            metavar="FRACTION")
    upload_grace: float = _knob(3600.0, "how long blobs no manifest references yet are kept (and HEAD leases "
                                "last)", parse_duration, metavar="DURATION")
    max_age: float = _knob(0.0, "evict roots unused this long even under budget (0: off)", parse_duration,
                           metavar="DURATION")
    pin: list[str] = _knob(None, "never evict repo:tag matching this glob (repeatable)", str, repeat=True,
                           metavar="PATTERN")
    repo_quota: list[str] = _knob(None, "per-repository budget, PATTERN=SIZE (repeatable)", _quota, repeat=True,
                                  metavar="PATTERN=SIZE")
    max_manifest_size: int = _knob(4 * 1024 * 1024, "largest manifest accepted", parse_size, metavar="SIZE")
    upload_timeout: float = _knob(86400.0, "upload sessions idle this long are dropped", parse_duration,
                                  metavar="DURATION")
    max_upload_sessions: int = _knob(1024, "upload sessions open at once", _positive_int, metavar="N")
    log_format: str = _knob("text", "access and error log format: text or json", _choice("text", "json"),
                            metavar="FORMAT")
    log_level: str = _knob("info", "debug, info, warning or error",
                           _choice("debug", "info", "warning", "error"), metavar="LEVEL")

    # -- derived views -------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SettingsError(ValueError):
    """A knob that could not be understood; the message names where it came from."""


def knob_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per knob (plus ``--config``) to a CLI parser; unset flags stay ``None``."""
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help=f"TOML settings file (env {ENV_PREFIX}CONFIG)")
    for f in fields(Settings):
        meta = f.metadata
        default = "[]" if meta["repeat"] else (f.default if not isinstance(f.default, tuple) else "0")
        help_text = f"{meta['help']} (env {env_name(f.name)}; default {default})"
        if meta["repeat"]:
            parser.add_argument(flag_name(f.name), dest=f.name, action="append", default=None,
                                metavar=meta["metavar"], help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=meta["metavar"],
                                help=help_text)


def load_settings(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                  config: str | os.PathLike[str] | None = None) -> Settings:
    """Build :class:`Settings` from the layers in order of precedence; raise :class:`SettingsError` on a bad knob."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    config = config or flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    flags.pop("config", None)
    raw: dict[str, tuple[Any, str]] = {}
    if config:
        raw.update(_read_toml(Path(config)))
    for f in fields(Settings):
        name = env_name(f.name)
        if name in env and env[name] != "":
            value: Any = env[name]
            if f.metadata["repeat"]:
                value = [v.strip() for v in value.split(",") if v.strip()]
            raw[f.name] = (value, f"env {name}")
    for key, value in flags.items():
        raw[key] = (value, f"flag {flag_name(key)}")

    settings = Settings()
    for f in fields(Settings):
        if f.name not in raw:
            continue
        value, origin = raw[f.name]
        parse = f.metadata["parse"]
        try:
            if f.metadata["repeat"]:
                items = value if isinstance(value, list | tuple) else [value]
                parsed: Any = [parse(str(v)) for v in items]
            else:
                parsed = parse(value)
        except (ValueError, TypeError) as e:
            raise SettingsError(f"{origin}: {e}") from None
        setattr(settings, f.name, parsed)
    return settings


def _read_toml(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"config file {path}: {e}") from None
    data = data.get("cachesvc", data) if isinstance(data.get("cachesvc"), dict) else data
    known = set(knob_names())
    out: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[name] = (value, f"{path}: {key}")
    return out


def describe(settings: Settings, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-friendly view of the effective settings (for logs and the admin API)."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        if keys and f.name not in keys:
            continue
        value = getattr(settings, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out
