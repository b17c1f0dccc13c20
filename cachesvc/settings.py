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


def _positive_duration_or_default(value: str | float) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def _positive_int(value: str | int) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return n


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false (also 1/0, yes/no, on/off), got {value!r}")


def _positive_duration(value: str | float) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def _optional_path(value: str | Path | None) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _remote_url(value: str) -> str:
    text = str(value).strip()
    if text and (not text.startswith(("s3://", "s3a://")) or len(text.split("://", 1)[1].strip("/")) == 0):
        raise ValueError(f"must be s3://BUCKET[/PREFIX], got {value!r}")
    return text


def _endpoint_url(value: str) -> str:
    text = str(value).strip()
    if text and not text.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return text.rstrip("/")


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
    client_timeout: float = _knob(60.0, "a client that sends no byte of a request body for this long, or averages "
                                  "under 1 KiB/s after it, is cut off", _positive_duration_or_default,
                                  metavar="DURATION")
    log_format: str = _knob("text", "access and error log format: text or json", _choice("text", "json"),
                            metavar="FORMAT")
    log_level: str = _knob("info", "debug, info, warning or error",
                           _choice("debug", "info", "warning", "error"), metavar="LEVEL")
    compress_at_rest: str = _knob("auto", "keep uncompressed blobs (plain tar layers, JSON) zstd-compressed on "
                                  "disk, in the background, and serve the original bytes: auto or off",
                                  _choice("auto", "off"), metavar="MODE")
    auth_file: Path | None = _knob(None, "credentials file (TOML): users, static tokens and their permissions; "
                                   "turns authentication on", _optional_path, metavar="FILE")
    verify_on_read: bool = _knob(False, "re-hash every blob while it is served; on a mismatch the response is "
                                 "aborted before its last byte and the blob quarantined", _bool)
    allow_anonymous: bool = _knob(False, "serve a non-loopback --listen without --auth-file (anyone who can reach "
                                  "it may read and write)", _bool)
    auth_challenge: str = _knob("bearer", "what a 401 offers: bearer (the token flow) or basic",
                                _choice("bearer", "basic"), metavar="SCHEME")
    auth_service: str = _knob("cachesvc", "service name in the challenge and in issued tokens", str, metavar="NAME")
    token_realm: str = _knob("", "token endpoint URL put in the challenge (default: this server's /token, from "
                             "the request's Host)", str, metavar="URL")
    token_ttl: float = _knob(300.0, "lifetime of tokens issued by /token", _positive_duration, metavar="DURATION")
    tls_cert: Path | None = _knob(None, "PEM certificate (chain) to serve TLS with; needs --tls-key",
                                  _optional_path, metavar="FILE")
    tls_key: Path | None = _knob(None, "PEM private key for --tls-cert", _optional_path, metavar="FILE")
    # -- shared tier (cachesvc/remote): an S3-compatible object store behind the local tier ----------------
    remote: str = _knob("", "shared tier: s3://BUCKET[/PREFIX] on an S3-compatible object store; credentials from "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN ('': off)", _remote_url,
                        metavar="s3://BUCKET[/PREFIX]")
    remote_endpoint: str = _knob("", "the object store's URL, e.g. http://127.0.0.1:8333 ('': AWS_ENDPOINT_URL, "
                                 "else AWS S3)", _endpoint_url, metavar="URL")
    remote_region: str = _knob("", "region for request signing ('': AWS_REGION, else us-east-1)", str,
                               metavar="REGION")
    remote_mode: str = _knob("read-write", "read-write, or read-only: read through, never write (autoscaled "
                             "extras)", _choice("read-write", "read-only"), metavar="MODE")
    remote_timeout: float = _knob(3.0, "longest a lookup in the shared tier may take before a miss is answered "
                                  "404", _positive_duration, metavar="DURATION")
    remote_concurrency: int = _knob(4, "uploads to the shared tier in parallel (background downloads: twice "
                                    "that)", _positive_int, metavar="N")
    remote_touch_interval: float = _knob(3600.0, "refresh a cache's last-use marker in the shared tier at most "
                                         "this often (remote-gc reads them)", _positive_duration,
                                         metavar="DURATION")
    prefetch: list[str] = _knob(None, "at start, pull the shared tier's caches whose repo:tag matches this glob "
                                "into the local tier, in the background (repeatable)", str, repeat=True,
                                metavar="PATTERN")

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
        elif isinstance(f.default, bool):  # a switch: --allow-anonymous; env/TOML take true/false
            parser.add_argument(flag_name(f.name), dest=f.name, action="store_true", default=None, help=help_text)
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
