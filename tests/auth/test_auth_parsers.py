"""The pure pieces: Authorization/scope parsers, the challenge, signed tokens (expiry, tampering), the key file,
the credentials file and its permission matching."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesvc.auth.credentials import AuthConfigError, hash_password, load_credentials, token_hash
from cachesvc.auth.headers import (
    AuthHeaderError,
    Basic,
    Bearer,
    Scope,
    challenge,
    encode_basic,
    parse_authorization,
    parse_scope,
    parse_scopes,
    safe_host,
)
from cachesvc.auth.tokens import KEY_BYTES, Signer, TokenError, _b64, load_or_create_key
from tests.auth.conftest import STATIC_TOKENS, auth_toml
from tests.support.inproc import Clock

# -- Authorization ---------------------------------------------------------------------------------------------


def test_basic_and_bearer() -> None:
    assert parse_authorization(encode_basic("alice", "pa:ss wörd")) == Basic("alice", "pa:ss wörd")
    assert parse_authorization("basic " + base64.b64encode(b"u:").decode()) == Basic("u", "")
    assert parse_authorization("Bearer abc.DEF-_~+/==") == Bearer("abc.DEF-_~+/==")
    assert parse_authorization("  BEARER   tok  ") == Bearer("tok")


@pytest.mark.parametrize("value", [
    "", "Basic", "Basic ", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic " + base64.b64encode(b"a\x01b:x").decode(),
    "Basic YWxp Y2U=", "Bearer", "Bearer a b", "Bearer a,b", "Digest x", "Negotiate abc", "Bearer " + "a" * 9000,
    "B@sic xyz", "Basic YQ", "\x00Basic",
])
def test_malformed_authorization(value: str) -> None:
    with pytest.raises(AuthHeaderError):
        parse_authorization(value)


@given(st.text(max_size=300))
def test_authorization_parser_only_raises_its_error(value: str) -> None:
    try:
        parsed = parse_authorization(value)
    except AuthHeaderError:
        return
    assert isinstance(parsed, Basic | Bearer)


@given(st.text(max_size=40).filter(lambda u: ":" not in u and all(ord(c) >= 0x20 and c != "\x7f" for c in u)),
       st.text(max_size=80))
def test_basic_round_trips(user: str, password: str) -> None:
    assert parse_authorization(encode_basic(user, password)) == Basic(user, password)


# -- scopes and challenge --------------------------------------------------------------------------------------


def test_scopes() -> None:
    assert parse_scope("repository:cache/app:pull,push") == Scope("repository", "cache/app", ("pull", "push"))
    assert parse_scope("repository:localhost:5000/x:pull") == Scope("repository", "localhost:5000/x", ("pull",))
    assert parse_scope("repository(plugin):p:pull") == Scope("repository(plugin)", "p", ("pull",))
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", ("*",))
    assert parse_scope("repository:a:pull,pull,,push").actions == ("pull", "push")
    assert [str(s) for s in parse_scopes(["repository:a:pull repository:b:push", "registry:catalog:*"])] == [
        "repository:a:pull", "repository:b:push", "registry:catalog:*"]
    for bad in ("", "repository", "repository:a", "repository::pull", "repository:a:", "Repo:a:pull",
                "repository:a:PULL", 'repository:a"b:pull', "repository:a b:pull", "x" * 2000):
        with pytest.raises(AuthHeaderError):
            parse_scope(bad)


@given(st.lists(st.text(max_size=120), max_size=5))
def test_scope_parser_only_raises_its_error(values: list[str]) -> None:
    try:
        scopes = parse_scopes(values)
    except AuthHeaderError:
        return
    for s in scopes:
        assert parse_scope(str(s)) == s  # what we grant can be parsed back


def test_challenge() -> None:
    assert challenge("bearer", "http://h:1/token", "cachesvc", "repository:a:pull") == (
        'Bearer realm="http://h:1/token",service="cachesvc",scope="repository:a:pull"')
    assert challenge("bearer", "r", "s", None, "insufficient_scope") == (
        'Bearer realm="r",service="s",error="insufficient_scope"')
    assert challenge("basic", "r", 'a"b') == 'Basic realm="a\\"b"'
    assert safe_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert safe_host("[::1]:5000") == "[::1]:5000"
    for bad in ('evil"host', "a b", "", None, "x/y", "a\\b"):
        assert safe_host(bad) is None


# -- signed tokens ---------------------------------------------------------------------------------------------

KEY = b"k" * KEY_BYTES


def test_token_round_trip_and_expiry() -> None:
    clock = Clock()
    signer = Signer(KEY, "cachesvc", clock)
    token, issued = signer.issue("user:alice", [Scope("repository", "cache/a", ("pull",))], 300)
    assert issued == clock.now
    grant = signer.verify(token)
    assert grant.subject == "user:alice"
    assert grant.allows("repository", "cache/a", "pull")
    assert not grant.allows("repository", "cache/a", "push")
    assert not grant.allows("repository", "cache/b", "pull")
    clock.advance(299)
    signer.verify(token)
    clock.advance(1)
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token)


def test_token_tampering_is_refused() -> None:
    clock = Clock()
    signer = Signer(KEY, "cachesvc", clock)
    token, _ = signer.issue("user:bob", [Scope("repository", "base/x", ("pull",))], 300)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["access"][0]["actions"] = ["pull", "push"]
    forged_body = _b64(json.dumps(claims).encode())
    with pytest.raises(TokenError, match="signature"):
        signer.verify(f"{head}.{forged_body}.{sig}")
    none_head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    with pytest.raises(TokenError):
        signer.verify(f"{none_head}.{body}.")
    with pytest.raises(TokenError):  # signed with another key
        Signer(b"x" * KEY_BYTES, "cachesvc", clock).verify(token)
    with pytest.raises(TokenError, match="another service"):  # same key, another audience
        Signer(KEY, "other", clock).verify(token)
    # a correctly signed token must still claim HS256
    hs = Signer(KEY, "cachesvc", clock)
    bad_head = _b64(json.dumps({"alg": "HS512"}).encode())
    with pytest.raises(TokenError, match="algorithm"):
        hs.verify(f"{bad_head}.{body}.{hs._sign(bad_head, body)}")
    for junk in ("", "a.b", "a.b.c.d", "a.b.c", "é.é.é", "\udcff.a.b"):
        with pytest.raises(TokenError):
            signer.verify(junk)


@given(st.text(max_size=200))
def test_token_verify_only_raises_its_error(token: str) -> None:
    signer = Signer(KEY, "cachesvc", Clock())
    with pytest.raises(TokenError):
        signer.verify(token)


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # kept across restarts
    path.write_bytes(b"short")  # e.g. a crash mid-write in an old version: replaced, not used
    assert load_or_create_key(path) != key
    assert not (tmp_path / "auth.key.tmp").exists()


# -- credentials file ------------------------------------------------------------------------------------------


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(auth_toml(anonymous=True))
    creds = load_credentials(path)
    alice = creds.users["alice"]
    assert alice.allows("repository", "cache/app", "push")
    assert alice.allows("repository", "base", "pull") and alice.allows("repository", "base/x/y", "pull")
    assert not alice.allows("repository", "basement", "pull")  # prefixes match whole path components
    assert not alice.allows("repository", "base/x", "push")
    assert not alice.allows("registry", "admin", "*") and not alice.allows("registry", "catalog", "*")
    ops = creds.users["ops"]
    assert ops.allows("registry", "admin", "*") and ops.allows("registry", "catalog", "*")
    assert ops.allows("registry", "metrics", "*") and ops.allows("repository", "any/thing", "delete")
    assert creds.check_password("alice", "alice-secret") is alice
    assert creds.check_password("alice", "wrong") is None
    assert creds.check_password("nobody", "alice-secret") is None
    assert creds.check_password("alice", "x" * 100) is None  # over bcrypt's 72 bytes: refused, not an error
    assert creds.check_password("alice", "\udcff") is None
    ci = creds.token(STATIC_TOKENS["ci"])
    assert ci is not None and ci.name == "ci" and ci.allows("repository", "cache/ci", "push")
    assert creds.check_password("ci", STATIC_TOKENS["ci"]) is ci  # static tokens log in as name:token
    assert creds.check_password("prom", STATIC_TOKENS["ci"]) is None
    assert creds.token("nope") is None
    assert creds.anonymous is not None and creds.anonymous.allows("repository", "public/x", "pull")
    assert creds.by_key("user:alice") is alice and creds.by_key("token:ci") is ci
    assert creds.by_key("user:gone") is None and creds.by_key("weird") is None


@pytest.mark.parametrize(("text", "message"), [
    ("[[user]]\nname='a'\npassword_bcrypt='plain'\n", "bcrypt hash"),
    ("[[user]]\nname='a:b'\npassword_bcrypt='x'\n", "name must be"),
    ("[[token]]\nname='t'\ntoken_sha256='abc'\n", "64 lowercase hex"),
    ("[[user]]\nname='a'\npassword_bcrypt='{h}'\npermissions=[{{actions=['fly']}}]\n", "unknown action"),
    ("[[user]]\nname='a'\npassword_bcrypt='{h}'\npermissions=[{{prefix='x/',actions=['admin']}}]\n",
     "server-wide"),
    ("[[user]]\nname='a'\npassword_bcrypt='{h}'\npasword='x'\n", "unknown key"),
    ("[[user]]\nname='a'\npassword_bcrypt='{h}'\n[[token]]\nname='a'\ntoken_sha256='{t}'\n", "used twice"),
    ("[[users]]\nname='a'\n", "unknown key"),
    ("user = 3\n", "array of tables"),
    ("[[user]]\nname='a'\npassword_bcrypt='{h}'\npermissions=[{{actions=[]}}]\n", "non-empty list"),
    ("not toml [", "auth file"),
])
def test_credentials_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(text.format(h=hash_password("pw", rounds=4), t=token_hash("tok")))
    with pytest.raises(AuthConfigError, match=message):
        load_credentials(path)
    with pytest.raises(AuthConfigError, match="not found"):
        load_credentials(tmp_path / "missing.toml")


def test_hash_password_limits() -> None:
    assert hash_password("x", rounds=4).startswith("$2b$04$")
    with pytest.raises(ValueError):
        hash_password("x" * 73, rounds=4)
