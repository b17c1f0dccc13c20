"""Hypothesis drives the real server with random authentication input: ``Authorization`` headers (raw bytes,
Basic of random bytes, wrong passwords, random and mutated signed tokens), token-endpoint parameters and ``Host``.
Whatever arrives, the answer is the spec's 401/403/400 with its JSON error body: never a 500.

The server runs in-process on its own event loop thread, so that each example is one plain blocking request.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesvc.auth.headers import encode_basic
from tests.auth.conftest import PASSWORDS, STATIC_TOKENS, basic
from tests.support.inproc import Clock, Running

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROTECTED = [("GET", "/v2/"), ("HEAD", "/v2/cache/app/manifests/latest"), ("GET", "/v2/cache/app/tags/list"),
             ("POST", "/v2/cache/app/blobs/uploads/"), ("GET", "/metrics"), ("GET", "/_cachesvc/api/usage"),
             ("GET", "/v2/_catalog"), ("DELETE", "/v2/base/x/manifests/latest")]


class Background:
    """A ``Running`` server on an event loop in a thread; ``request`` sends raw header bytes with http.client."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = self.run(Running(root, Clock(), **overrides).start())
        self.port = int(self.running.url.rsplit(":", 1)[1])

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.run(self.running.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(self, method: str, path: str, headers: list[tuple[str, bytes | str]] = (),  # type: ignore[assignment]
                body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            own_host = any(name.lower() == "host" for name, _ in headers)
            conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.msg, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, auth_file: Path) -> Iterator[Background]:
    bg = Background(tmp_path_factory.mktemp("fuzz") / "root", auth_file=auth_file)
    try:
        yield bg
    finally:
        bg.stop()


@pytest.fixture(scope="module")
def signed_token(server: Background) -> str:
    query = urlencode({"service": "cachesvc", "scope": "repository:cache/app:pull"})
    status, _, body = server.request("GET", f"/token?{query}", list(basic("alice").items()))
    assert status == 200, body
    return str(json.loads(body)["token"])


def assert_spec_error(status: int, headers: http.client.HTTPMessage, body: bytes, method: str,
                      allowed: tuple[int, ...]) -> dict[str, Any] | None:
    assert status in allowed, (status, body[:300])
    assert headers.get_content_type() == "application/json", body[:300]
    if method == "HEAD":
        return None
    doc = json.loads(body)
    assert isinstance(doc["errors"], list) and doc["errors"], doc
    for err in doc["errors"]:
        assert isinstance(err["code"], str) and isinstance(err["message"], str), err
    return dict(doc)


# Bytes an HTTP/1.1 field value may hold (RFC 9110 §5.5: HTAB, SP, VCHAR, obs-text), so the request always
# reaches cachesvc instead of being refused by the HTTP parser.
FIELD_BYTES = st.binary(max_size=200).map(lambda b: bytes(c for c in b if c in (9, 32) or 0x21 <= c <= 0x7E
                                                           or c >= 0x80))
TOKEN68 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", max_size=120)
WRONG_PASSWORD = st.text(max_size=80).filter(lambda p: p not in PASSWORDS.values() and p not in STATIC_TOKENS.values())
SCHEMES = st.sampled_from(["Basic", "basic", "BASIC", "Bearer", "bearer", "Digest", "Negotiate", "", "Basic\t"])


def mutate(token: str, data: st.DataObject) -> str:
    """A signed token with one character changed, dropped or added, or its segments shuffled."""
    kind = data.draw(st.sampled_from(["change", "drop", "add", "swap"]))
    if kind == "swap":
        a, b, c = token.split(".")
        return data.draw(st.sampled_from([f"{b}.{a}.{c}", f"{a}.{a}.{c}", f"{a}.{b}.{b}", f"{a}.{b}", f"{a}.{b}.{c}."]))
    i = data.draw(st.integers(0, len(token) - 1))
    if kind == "drop":
        return token[:i] + token[i + 1:]
    ch = data.draw(st.sampled_from("ABCxyz019-_.+/="))
    if kind == "add":
        return token[:i] + ch + token[i:]
    if token[i] == ch:
        ch = "Q" if ch != "Q" else "R"
    return token[:i] + ch + token[i + 1:]


@st.composite
def bad_authorization(draw: st.DrawFn, token: str) -> bytes:
    kind = draw(st.sampled_from(["raw", "scheme+raw", "basic-bytes", "basic-wrong", "bearer", "mutated"]))
    if kind == "raw":
        return draw(FIELD_BYTES)
    if kind == "scheme+raw":
        return draw(SCHEMES).encode() + b" " + draw(FIELD_BYTES)
    if kind == "basic-bytes":
        return b"Basic " + base64.b64encode(draw(st.binary(max_size=100)))
    if kind == "basic-wrong":
        user = draw(st.sampled_from([*PASSWORDS, *STATIC_TOKENS, "nobody", "", "ALICE"]))
        return encode_basic(user, draw(WRONG_PASSWORD)).encode()
    if kind == "bearer":
        return draw(st.sampled_from(["Bearer ", "bearer  ", "Bearer\t"])).encode() + draw(TOKEN68).encode()
    return ("Bearer " + mutate(token, draw(st.data()))).encode()


@FUZZ
@given(data=st.data(), route=st.sampled_from(PROTECTED))
def test_random_authorization_is_401(server: Background, signed_token: str, data: st.DataObject,
                                     route: tuple[str, str]) -> None:
    value = data.draw(bad_authorization(signed_token))
    method, path = route
    status, headers, body = server.request(method, path, [("Authorization", value)])
    doc = assert_spec_error(status, headers, body, method, (401,))
    assert headers["WWW-Authenticate"].startswith("Bearer realm=")
    if doc is not None:
        assert doc["errors"][0]["code"] == "UNAUTHORIZED"


@FUZZ
@given(value=st.one_of(FIELD_BYTES, st.builds(lambda t: b"Bearer " + t.encode(), TOKEN68)),
       route=st.sampled_from(PROTECTED))
def test_random_authorization_at_the_token_endpoint(server: Background, value: bytes,
                                                    route: tuple[str, str]) -> None:
    status, headers, body = server.request("GET", "/token?service=cachesvc&scope=repository:cache/app:pull",
                                           [("Authorization", value)])
    assert_spec_error(status, headers, body, "GET", (401,))
    assert headers["WWW-Authenticate"] == 'Basic realm="cachesvc"'


QUERY_TEXT = st.text(st.characters(codec="utf-8"), max_size=80)
SCOPE_TEXT = st.one_of(QUERY_TEXT, st.builds(lambda t, n, a: f"{t}:{n}:{a}",
                                             st.sampled_from(["repository", "registry", "x", "repository(p)", ""]),
                                             QUERY_TEXT, st.sampled_from(["pull", "pull,push", "*", "", "PULL"])))


@FUZZ
@given(params=st.lists(st.tuples(st.sampled_from(["scope", "service", "account", "client_id", "offline_token",
                                                  "grant_type", "scope"]), SCOPE_TEXT), max_size=6))
def test_random_token_requests(server: Background, params: list[tuple[str, str]]) -> None:
    status, headers, body = server.request("GET", "/token?" + urlencode(params), list(basic("alice").items()))
    if status == 200:
        doc = json.loads(body)
        assert doc["token"] == doc["access_token"]
    else:
        assert_spec_error(status, headers, body, "GET", (400,))


FORM = st.lists(st.tuples(st.sampled_from(["grant_type", "username", "password", "scope", "service", "refresh_token",
                                           "client_id"]), QUERY_TEXT), max_size=6).map(lambda p: urlencode(p).encode())
CONTENT_TYPES = st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=x",
                                 "multipart/form-data; boundary=zz", "multipart/form-data", "text/plain", ""])


@FUZZ
@given(body_in=st.one_of(FORM, st.binary(max_size=300)), content_type=CONTENT_TYPES)
def test_random_token_forms(server: Background, body_in: bytes, content_type: str) -> None:
    status, headers, body = server.request("POST", "/token", [("Content-Type", content_type)], body_in)
    if status == 200:
        assert json.loads(body)["token"]
    else:
        assert_spec_error(status, headers, body, "POST", (400, 401))


@FUZZ
@given(host=FIELD_BYTES.filter(lambda b: b.strip(b" \t") != b""), route=st.sampled_from(PROTECTED))
def test_random_host_never_leaks_into_the_challenge(server: Background, host: bytes, route: tuple[str, str]) -> None:
    method, path = route
    status, headers, body = server.request(method, path, [("Host", host)])
    assert_spec_error(status, headers, body, method, (401,))
    realm = headers["WWW-Authenticate"].split('"')[1]
    assert realm.startswith("http://") and realm.endswith("/token")
    assert all(c not in realm[7:-6] for c in '"\\ \t/'), realm
