"""The knobs, the start-up refusal, TLS configuration errors, and the credential helper commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from cachesvc.auth import AuthConfigError, is_loopback, startup_checks
from cachesvc.auth.commands import auth_header_from_env
from cachesvc.auth.credentials import load_credentials
from cachesvc.auth.headers import Basic, parse_authorization
from cachesvc.settings import Settings, SettingsError, add_flags, load_settings
from tests.support.servers import free_port


def parse_flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return vars(parser.parse_args(list(argv)))


def test_auth_knobs_from_flags_env_and_toml(tmp_path: Path) -> None:
    s = load_settings(parse_flags("--allow-anonymous", "--auth-file", "a.toml", "--token-ttl", "2m",
                                  "--auth-challenge", "basic"), env={})
    assert s.allow_anonymous is True and s.auth_file == Path("a.toml") and s.token_ttl == 120
    assert s.auth_challenge == "basic"
    assert load_settings(parse_flags(), env={}).allow_anonymous is False
    for text, value in (("yes", True), ("1", True), ("TRUE", True), ("no", False), ("0", False), ("off", False)):
        assert load_settings({}, env={"CACHESVC_ALLOW_ANONYMOUS": text}).allow_anonymous is value
    with pytest.raises(SettingsError, match="CACHESVC_ALLOW_ANONYMOUS"):
        load_settings({}, env={"CACHESVC_ALLOW_ANONYMOUS": "maybe"})
    config = tmp_path / "c.toml"
    config.write_text('allow_anonymous = true\ntls_cert = "c.pem"\ntls_key = "k.pem"\ntoken_realm = "https://x/t"\n')
    s = load_settings({}, env={}, config=config)
    assert s.allow_anonymous is True and s.tls_cert == Path("c.pem") and s.token_realm == "https://x/t"
    with pytest.raises(SettingsError, match="token-ttl"):
        load_settings(parse_flags("--token-ttl", "0"), env={})
    with pytest.raises(SettingsError):
        load_settings(parse_flags("--auth-challenge", "digest"), env={})


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("", "0.0.0.0", "::", "10.0.0.1", "example.com"):
        assert not is_loopback(host), host


def test_startup_rules(tmp_path: Path) -> None:
    assert startup_checks(Settings(listen="127.0.0.1:5000")) is None
    with pytest.raises(AuthConfigError, match=r"refusing to serve 0\.0\.0\.0:5000 without authentication"):
        startup_checks(Settings(listen="0.0.0.0:5000"))
    assert startup_checks(Settings(listen="0.0.0.0:5000", allow_anonymous=True)) is None
    assert startup_checks(Settings(listen="0.0.0.0:5000", auth_file=tmp_path / "a.toml")) is None
    with pytest.raises(AuthConfigError, match="must be given together"):
        startup_checks(Settings(tls_cert=tmp_path / "c.pem"))
    with pytest.raises(AuthConfigError, match="not found"):
        startup_checks(Settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(AuthConfigError, match="cannot use TLS certificate"):
        startup_checks(Settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachesvc", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_serve_refuses_with_one_line(tmp_path: Path) -> None:
    r = serve("--listen", f"0.0.0.0:{free_port()}", "--root", str(tmp_path / "root"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve" in lines[0] and "--allow-anonymous" in lines[0], r.stderr
    assert not (tmp_path / "root").exists()  # refused before touching the data directory
    r = serve("--listen", f"127.0.0.1:{free_port()}", "--root", str(tmp_path / "root"),
              "--auth-file", str(tmp_path / "missing.toml"))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"cachesvc: auth file not found: {tmp_path / 'missing.toml'}"]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_hash_password_and_gen_token(tmp_path: Path) -> None:
    r = cli("hash-password", "--rounds", "4", stdin="s3cret pass\n")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.strip()
    assert bcrypt.checkpw(b"s3cret pass", hashed.encode())
    assert cli("hash-password", stdin="\n").returncode == 1
    r = cli("gen-token", "builder", "--actions", "pull,push", "--prefix", "cache/")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("cst_") and len(token) > 40
    path = tmp_path / "auth.toml"
    path.write_text(f'[[user]]\nname = "me"\npassword_bcrypt = "{hashed}"\n\n{r.stderr}')
    creds = load_credentials(path)  # what the helpers print is a valid credentials file
    principal = creds.token(token)
    assert principal is not None and principal.name == "builder"
    assert principal.allows("repository", "cache/app", "push") and not principal.allows("repository", "x", "pull")
    assert creds.check_password("me", "s3cret pass") is creds.users["me"]


def test_operator_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHESVC_CREDS", raising=False)
    assert auth_header_from_env() == {}
    monkeypatch.setenv("CACHESVC_CREDS", "ops:pa:ss")
    assert parse_authorization(auth_header_from_env()["Authorization"]) == Basic("ops", "pa:ss")
