"""Pure parsing: sizes, durations and the settings layers (defaults <- TOML <- env <- flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cachesvc.settings import Settings, SettingsError, load_settings
from cachesvc.units import format_duration, format_size, parse_duration, parse_size, parse_size_or_percent


def test_sizes() -> None:
    assert parse_size("50GiB") == 50 * 1024**3
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("123") == 123
    assert parse_size("4 MiB") == 4 * 1024**2
    for bad in ("", "GB", "-1", "5 parsecs", "1e9"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_size_or_percent("10%") == (0, 0.1)
    assert parse_size_or_percent("1GiB") == (1024**3, 0.0)
    with pytest.raises(ValueError):
        parse_size_or_percent("150%")
    assert format_size(1536) == "1.5 KiB"


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("14d") == 14 * 86400
    assert parse_duration("250ms") == 0.25
    for bad in ("", "h", "1y", "3 days", "1h 30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(3700) == "1h1m"


def test_layers_and_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('listen = "127.0.0.1:6000"\nmax-size = "1GiB"\npin = ["a:*", "b:main"]\nroot = "/x"\n')
    s = load_settings({}, env={}, config=cfg)
    assert (s.listen, s.max_size, s.pin, str(s.root)) == ("127.0.0.1:6000", 1024**3, ["a:*", "b:main"], "/x")
    s = load_settings({}, env={"CACHESVC_CONFIG": str(cfg), "CACHESVC_MAX_SIZE": "2GiB", "CACHESVC_PIN": "c:*,d:x"})
    assert s.max_size == 2 * 1024**3 and s.pin == ["c:*", "d:x"] and s.listen == "127.0.0.1:6000"
    s = load_settings({"max_size": "3GiB", "config": str(cfg)}, env={"CACHESVC_MAX_SIZE": "2GiB"})
    assert s.max_size == 3 * 1024**3
    assert load_settings({}, env={}) == Settings()


def test_errors_name_their_origin(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="env CACHESVC_MAX_SIZE"):
        load_settings({}, env={"CACHESVC_MAX_SIZE": "lots"})
    with pytest.raises(SettingsError, match="flag --listen"):
        load_settings({"listen": "nohostport"}, env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings({}, env={}, config=bad)
    with pytest.raises(SettingsError, match="not found"):
        load_settings({}, env={}, config=tmp_path / "missing.toml")


def test_cli_bad_flag_is_one_line_and_nonzero(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cachesvc", "serve", "--max-size", "huge", "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "flag --max-size" in r.stderr


def test_readme_documents_every_knob() -> None:
    from dataclasses import fields

    from cachesvc.settings import env_name, flag_name

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in fields(Settings)
               if f"`{flag_name(f.name)}" not in table or f"`{env_name(f.name)}`" not in table]
    assert not missing, f"README's configuration table lacks: {missing}"
