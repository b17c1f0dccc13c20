"""Authorization through the in-process server: every route's permission, the challenge, the token endpoint,
token scoping, expiry and tampering, mounts, anonymous access, admin and metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from cachesvc.api import admin
from cachesvc.api.errors import RegistryError
from cachesvc.api.routes import REGISTRY_ROUTES
from cachesvc.auth.credentials import hash_password
from cachesvc.auth.guard import ADMIN_GRANTED, REPO_ROUTES, SERVER_ROUTES
from tests.auth.conftest import STATIC_TOKENS, basic, bearer
from tests.support.inproc import Clock, Running, sha256

D = sha256(b"some layer")
MakeServer = Callable[..., Awaitable[Running]]


async def call(reg: Running, method: str, path: str, headers: dict[str, str] | None = None,
               **kw: Any) -> tuple[int, Any, Any]:
    async with reg.http.request(method, path, headers=headers or {}, allow_redirects=False, **kw) as r:
        raw = await r.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        return r.status, r.headers, body


def code(body: Any) -> str:
    assert isinstance(body, dict) and body["errors"], body
    return str(body["errors"][0]["code"])


async def token_for(reg: Running, who: dict[str, str], *scopes: str) -> str:
    query = [("service", "cachesvc"), *(("scope", s) for s in scopes)]
    status, headers, body = await call(reg, "GET", "/token", who, params=query)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]
    return str(body["token"])


def claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


# -- the route table -------------------------------------------------------------------------------------------


def test_every_route_has_a_permission() -> None:
    """A new route without an entry would be refused (fail closed); this makes the omission visible."""
    for route in REGISTRY_ROUTES:
        for method in route.methods:
            looked_up = "GET" if method == "HEAD" else method  # as the guard does
            assert route.template in SERVER_ROUTES or (route.template, looked_up) in REPO_ROUTES, (method, route)
    for label in ("/healthz", "/readyz", "/metrics", "/_cachesvc/api/{action}", "/token", "other"):
        assert label in SERVER_ROUTES


async def test_every_server_label_has_a_permission(reg: Running) -> None:
    """The labels ``Server.resolve`` gives the paths outside the route table (operator pages, /token, …)."""
    assert reg.server is not None
    for path in ("/healthz", "/readyz", "/metrics", "/token", "/_cachesvc", "/_cachesvc/", "/_cachesvc/api/usage",
                 "/favicon.ico", "/v2/", "/v2/_catalog"):
        label = reg.server.resolve("GET", path)[0]
        assert label in SERVER_ROUTES, (path, label)


@pytest.fixture(scope="module")
def per_action_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users that each hold exactly one repository action on cache/, and one holding all three."""
    h = hash_password("pw", rounds=4)
    text = ""
    for user, actions in (("u_pull", ["pull"]), ("u_push", ["push"]), ("u_delete", ["delete"]),
                          ("u_all", ["pull", "push", "delete"])):
        text += (f'[[user]]\nname = "{user}"\npassword_bcrypt = "{h}"\n'
                 f'permissions = [{{ prefix = "cache", actions = {json.dumps(actions)} }}]\n\n')
    path = tmp_path_factory.mktemp("per-action") / "auth.toml"
    path.write_text(text)
    return path


ROUTES = [  # method, path, action needed
    ("HEAD", f"/v2/cache/app/blobs/{D}", "pull"),
    ("GET", f"/v2/cache/app/blobs/{D}", "pull"),
    ("DELETE", f"/v2/cache/app/blobs/{D}", "delete"),
    ("POST", "/v2/cache/app/blobs/uploads/", "push"),
    ("GET", "/v2/cache/app/blobs/uploads/no-such-session", "push"),
    ("PATCH", "/v2/cache/app/blobs/uploads/no-such-session", "push"),
    ("PUT", f"/v2/cache/app/blobs/uploads/no-such-session?digest={D}", "push"),
    ("DELETE", "/v2/cache/app/blobs/uploads/no-such-session", "push"),
    ("HEAD", "/v2/cache/app/manifests/latest", "pull"),
    ("GET", "/v2/cache/app/manifests/latest", "pull"),
    ("PUT", "/v2/cache/app/manifests/latest", "push"),
    ("DELETE", f"/v2/cache/app/manifests/{D}", "delete"),
    ("GET", "/v2/cache/app/tags/list", "pull"),
    ("GET", f"/v2/cache/app/referrers/{D}", "pull"),
]


async def test_route_permissions(make_server: MakeServer, per_action_file: Path) -> None:
    reg = await make_server(auth_file=per_action_file)
    tokens = {a: await token_for(reg, basic("u_all", "pw"), f"repository:cache/app:{a}")
              for a in ("pull", "push", "delete")}
    for method, path, action in ROUTES:
        where = f"{method} {path}"
        # nobody: 401 with a challenge naming the scope that would do
        status, headers, body = await call(reg, method, path)
        assert status == 401, where
        scope = "pull,push" if action == "push" else action
        assert headers["WWW-Authenticate"] == (f'Bearer realm="{reg.url}/token",service="cachesvc",'
                                               f'scope="repository:cache/app:{scope}"'), where
        if method != "HEAD":
            assert code(body) == "UNAUTHORIZED"
        for other in ("pull", "push", "delete"):
            # a user holding only this action gets through (to whatever the handler says), others get 403
            status, _, body = await call(reg, method, path, basic(f"u_{other}", "pw"))
            if other == action:
                assert status not in (401, 403), (where, other, body)
            else:
                assert status == 403, (where, other)
                if method != "HEAD":
                    assert code(body) == "DENIED"
            # a signed token is scoped: only the matching action; u_all could get the others, so 401 + hint
            status, headers, _ = await call(reg, method, path, bearer(tokens[other]))
            if other == action:
                assert status not in (401, 403), (where, other)
            else:
                assert status == 401, (where, other)
                assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]


async def test_server_routes(reg: Running) -> None:
    ops, alice, prom = basic("ops"), basic("alice"), bearer(STATIC_TOKENS["prom"])
    for path in ("/healthz", "/readyz", "/nowhere"):
        assert (await call(reg, "GET", path))[0] in (200, 404)
    # /v2/: any valid identity, and every valid identity
    status, headers, body = await call(reg, "GET", "/v2/")
    assert status == 401 and code(body) == "UNAUTHORIZED"
    assert headers["WWW-Authenticate"] == f'Bearer realm="{reg.url}/token",service="cachesvc"'
    for who in (ops, alice, basic("pusher"), prom):
        assert (await call(reg, "GET", "/v2/", who))[0] == 200
    assert (await call(reg, "GET", "/v2/", bearer(await token_for(reg, basic("bob")))))[0] == 200
    # /metrics: the metrics permission
    assert (await call(reg, "GET", "/metrics"))[0] == 401
    assert (await call(reg, "GET", "/metrics", alice))[0] == 403
    for who in (ops, prom):
        status, _, body = await call(reg, "GET", "/metrics", who)
        assert status == 200 and b"cachesvc_" in body
    # the operator API and the catalog: admin
    for method, path in (("GET", "/_cachesvc/api/usage"), ("GET", "/v2/_catalog"), ("GET", "/_cachesvc/")):
        assert (await call(reg, method, path))[0] == 401
        assert (await call(reg, method, path, alice))[0] == 403
        assert (await call(reg, method, path, prom))[0] == 403
        assert (await call(reg, method, path, ops))[0] == 200
    admin_token = await token_for(reg, ops, "registry:catalog:*", "registry:admin:*")
    assert (await call(reg, "GET", "/v2/_catalog", bearer(admin_token)))[0] == 200
    assert (await call(reg, "GET", "/_cachesvc/api/usage", bearer(admin_token)))[0] == 200
    assert (await call(reg, "GET", "/metrics", bearer(admin_token)))[0] == 401  # not in the token's scopes


def test_admin_api_answers_remote_admins_only_when_granted() -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.1.2.3", 40000) if name == "peername" else default)
    request = make_mocked_request("GET", "/_cachesvc/api/usage", transport=transport)
    assert request.remote == "10.1.2.3"
    with pytest.raises(RegistryError) as e:
        admin.require_local(request)
    assert e.value.code == "DENIED"
    request[ADMIN_GRANTED] = True
    admin.require_local(request)


# -- credentials -----------------------------------------------------------------------------------------------


async def test_wrong_credentials_are_401_never_500(reg: Running) -> None:
    for headers in (basic("alice", "wrong"), basic("nobody", "x"), basic("alice", "x" * 200),
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Bearer a.b.c"}, {"Authorization": "Digest foo"},
                    {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
                    {"Authorization": "Bearer " + "x" * 8100}):
        for method, path in (("GET", "/v2/"), ("HEAD", "/v2/cache/app/manifests/x"), ("GET", "/metrics"),
                             ("GET", "/token")):
            status, headers_out, body = await call(reg, method, path, headers)
            assert status == 401, (headers, method, path, status, body)
            assert "WWW-Authenticate" in headers_out
            if method != "HEAD":
                assert code(body) == "UNAUTHORIZED"
    # two Authorization headers: refused rather than guessing which one counts
    status, _, _ = await call(reg, "GET", "/v2/", [("Authorization", basic("ops")["Authorization"]),  # type: ignore[arg-type]
                                                   ("Authorization", "Bearer x")])
    assert status == 401


async def test_basic_is_accepted_directly_and_static_tokens(reg: Running) -> None:
    alice = basic("alice")
    digest = await _push(reg, "cache/app", b"layer-data", alice)
    status, _, body = await call(reg, "GET", f"/v2/cache/app/blobs/{digest}", alice)
    assert status == 200 and body == b"layer-data"
    assert (await call(reg, "GET", f"/v2/cache/app/blobs/{digest}", basic("bob")))[0] == 403
    # the static token: as Bearer, and as Basic name:token (what docker login can send)
    ci = STATIC_TOKENS["ci"]
    for who in (bearer(ci), basic("ci", ci)):
        await _push(reg, "cache/ci", b"ci-layer", who)
        assert (await call(reg, "POST", "/v2/cache/other/blobs/uploads/", who))[0] == 403
    assert (await call(reg, "GET", "/v2/", basic("prom", ci)))[0] == 401  # another token's name


async def _push(reg: Running, repo: str, data: bytes, who: dict[str, str]) -> str:
    digest = sha256(data)
    status, _, body = await call(reg, "POST", f"/v2/{repo}/blobs/uploads/", who, params={"digest": digest},
                                 data=data)
    assert status == 201, body
    return digest


# -- the token endpoint ----------------------------------------------------------------------------------------


async def test_token_grants_requested_intersect_permitted(reg: Running) -> None:
    token = await token_for(reg, basic("alice"), "repository:cache/app:pull,push,delete",
                            "repository:base/x:pull,push", "repository:other:pull", "registry:catalog:*",
                            "repository:Bad..Name:pull", "plugin:x:pull")
    c = claims(token)
    assert c["sub"] == "user:alice" and c["aud"] == "cachesvc" and c["exp"] - c["iat"] == 300
    assert c["access"] == [{"type": "repository", "name": "cache/app", "actions": ["delete", "pull", "push"]},
                           {"type": "repository", "name": "base/x", "actions": ["pull"]}]
    token = await token_for(reg, basic("alice"), "repository:cache/app:*")
    assert claims(token)["access"][0]["actions"] == ["delete", "pull", "push"]
    # no scope at all (docker login): a token that only proves who you are
    assert claims(await token_for(reg, basic("alice")))["access"] == []
    # space-separated scopes in one parameter (OAuth2 style)
    token = await token_for(reg, basic("alice"), "repository:cache/a:pull repository:cache/b:push")
    assert [a["name"] for a in claims(token)["access"]] == ["cache/a", "cache/b"]


async def test_token_endpoint_refusals(reg: Running) -> None:
    status, headers, body = await call(reg, "GET", "/token", params={"service": "cachesvc"})
    assert status == 401 and code(body) == "UNAUTHORIZED"
    assert headers["WWW-Authenticate"] == 'Basic realm="cachesvc"'
    assert (await call(reg, "GET", "/token", basic("alice", "nope")))[0] == 401
    status, _, body = await call(reg, "GET", "/token", basic("alice"), params={"service": "elsewhere"})
    assert status == 400 and code(body) == "DENIED"
    status, _, body = await call(reg, "GET", "/token", basic("alice"), params={"scope": "repository:x"})
    assert status == 400
    signed = await token_for(reg, basic("alice"), "repository:cache/a:pull")
    assert (await call(reg, "GET", "/token", bearer(signed)))[0] == 401  # tokens do not mint tokens
    assert (await call(reg, "PUT", "/token", basic("alice")))[0] == 405
    # the OAuth2 password grant
    form = {"grant_type": "password", "username": "alice", "password": "alice-secret", "service": "cachesvc",
            "scope": "repository:cache/a:pull", "client_id": "test"}
    status, _, body = await call(reg, "POST", "/token", data=form)
    assert status == 200 and claims(body["token"])["access"][0]["name"] == "cache/a"
    status, _, _ = await call(reg, "POST", "/token", data={**form, "password": "wrong"})
    assert status == 401
    status, _, _ = await call(reg, "POST", "/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
    assert status == 400
    status, _, body = await call(reg, "POST", "/token", data=b"--zz\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=zz"})
    assert status == 400 and code(body) == "UNSUPPORTED"
    status, _, body = await call(reg, "POST", "/token", data=b"a=" + b"x" * 70_000, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and code(body) == "SIZE_INVALID"
    # static tokens get signed tokens too (that is how docker uses them after `docker login -u ci`)
    token = await token_for(reg, basic("ci", STATIC_TOKENS["ci"]), "repository:cache/ci:push")
    assert claims(token)["sub"] == "token:ci"


async def test_pull_token_cannot_push_or_read_elsewhere(reg: Running) -> None:
    alice = basic("alice")
    digest = await _push(reg, "cache/a", b"blob-in-a", alice)
    await _push(reg, "cache/b", b"blob-in-b", alice)
    pull_a = bearer(await token_for(reg, alice, "repository:cache/a:pull"))
    assert (await call(reg, "GET", f"/v2/cache/a/blobs/{digest}", pull_a))[0] == 200
    assert (await call(reg, "HEAD", f"/v2/cache/a/blobs/{digest}", pull_a))[0] == 200
    # cannot push to A, cannot read B: alice could get those scopes, so 401 with insufficient_scope
    for method, path in (("POST", "/v2/cache/a/blobs/uploads/"), ("PUT", "/v2/cache/a/manifests/v2"),
                         ("DELETE", f"/v2/cache/a/blobs/{digest}"),
                         ("GET", f"/v2/cache/b/blobs/{sha256(b'blob-in-b')}"), ("GET", "/v2/cache/b/tags/list")):
        status, headers, body = await call(reg, method, path, pull_a)
        assert status == 401, (method, path)
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    # bob's pull token on base/x: bob may never push there, so a definite 403
    bob_token = await token_for(reg, basic("bob"), "repository:base/x:pull,push")
    pull_bob = bearer(bob_token)
    assert claims(bob_token)["access"] == [{"type": "repository", "name": "base/x", "actions": ["pull"]}]
    status, _, body = await call(reg, "POST", "/v2/base/x/blobs/uploads/", pull_bob)
    assert status == 403 and code(body) == "DENIED"


async def test_token_expiry_tampering_and_restart(reg: Running, clock: Clock) -> None:
    token = await token_for(reg, basic("alice"), "repository:cache/a:pull")
    path = "/v2/cache/a/tags/list"
    assert (await call(reg, "GET", path, bearer(token)))[0] == 404  # through auth; no such repository
    head, _, sig = token.split(".")
    c = claims(token)
    c["access"][0]["actions"] = ["pull", "push"]
    forged = base64.urlsafe_b64encode(json.dumps(c).encode()).rstrip(b"=").decode()
    status, _, err = await call(reg, "GET", path, bearer(f"{head}.{forged}.{sig}"))
    assert status == 401 and "signature" in err["errors"][0]["detail"]["reason"]
    # the signing key outlives a restart, so tokens do too
    await reg.restart()
    assert (await call(reg, "GET", path, bearer(token)))[0] == 404
    clock.advance(301)
    status, _, err = await call(reg, "GET", path, bearer(token))
    assert status == 401 and "expired" in err["errors"][0]["detail"]["reason"]


async def test_token_of_a_removed_user(make_server: MakeServer, tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    h = hash_password("pw", rounds=4)
    path.write_text(f'[[user]]\nname = "temp"\npassword_bcrypt = "{h}"\npermissions = [{{ actions = ["pull"] }}]\n'
                    f'[[user]]\nname = "keep"\npassword_bcrypt = "{h}"\n')
    reg = await make_server(auth_file=path)
    token = await token_for(reg, basic("temp", "pw"), "repository:x:pull")
    path.write_text(f'[[user]]\nname = "keep"\npassword_bcrypt = "{h}"\n')
    await reg.restart()
    status, _, err = await call(reg, "GET", "/v2/x/tags/list", bearer(token))
    assert status == 401 and "no longer" in err["errors"][0]["detail"]["reason"]


async def test_mount_needs_pull_on_the_source(reg: Running) -> None:
    digest = await _push(reg, "cache/src", b"mountable", basic("alice"))
    query = {"mount": digest, "from": "cache/src"}
    # pusher may push to drop/ but not read cache/src: the mount is dropped, an upload session starts instead
    status, headers, _ = await call(reg, "POST", "/v2/drop/x/blobs/uploads/", basic("pusher"), params=query)
    assert status == 202 and "/blobs/uploads/" in headers["Location"]
    assert (await call(reg, "HEAD", f"/v2/drop/x/blobs/{digest}", basic("ops")))[0] == 404
    # alice may read the source: a real mount
    status, headers, _ = await call(reg, "POST", "/v2/cache/dst/blobs/uploads/", basic("alice"), params=query)
    assert status == 201 and headers["Docker-Content-Digest"] == digest


async def test_invalid_names_are_spec_errors(reg: Running) -> None:
    for path in ("/v2/UPPER/tags/list", "/v2/a___b/tags/list", "/v2/a%2Fb/manifests/x"):
        status, _, body = await call(reg, "GET", path)
        assert status == 400 and code(body) == "NAME_INVALID", path


async def test_anonymous_section(make_server: MakeServer, auth_file_anonymous: Path) -> None:
    reg = await make_server(auth_file=auth_file_anonymous)
    assert (await call(reg, "GET", "/v2/public/img/tags/list"))[0] == 404  # allowed, nothing there
    status, headers, _ = await call(reg, "GET", "/v2/private/img/tags/list")
    assert status == 401 and 'scope="repository:private/img:pull"' in headers["WWW-Authenticate"]
    assert (await call(reg, "GET", "/v2/"))[0] == 401  # still the way clients discover the token flow
    token = await token_for(reg, {}, "repository:public/img:pull,push", "repository:private/img:pull")
    assert claims(token)["sub"] == "anonymous:"
    assert claims(token)["access"] == [{"type": "repository", "name": "public/img", "actions": ["pull"]}]
    assert (await call(reg, "GET", "/v2/public/img/tags/list", bearer(token)))[0] == 404


async def test_challenge_options(make_server: MakeServer, auth_file: Path) -> None:
    reg = await make_server(auth_file=auth_file, auth_challenge="basic", auth_service="builders")
    status, headers, _ = await call(reg, "GET", "/v2/")
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="builders"'
    token = await token_for_service(reg, "builders")
    assert claims(token)["aud"] == "builders"
    reg2 = await make_server(auth_file=auth_file, token_realm="https://auth.example/token")
    _, headers, _ = await call(reg2, "GET", "/v2/")
    assert headers["WWW-Authenticate"].startswith('Bearer realm="https://auth.example/token"')
    # an odd Host header is never echoed into the challenge
    _, headers, _ = await call(reg2, "GET", "/v2/", {"Host": 'evil" x'})
    assert "evil" not in headers["WWW-Authenticate"]
    _, headers, _ = await call(reg, "GET", "/v2/cache/a/tags/list", {"Host": "cache.example:5000"})
    assert headers["WWW-Authenticate"] == 'Basic realm="builders"'
    reg3 = await make_server(auth_file=auth_file)
    _, headers, _ = await call(reg3, "GET", "/v2/", {"Host": "cache.example:5000"})
    assert headers["WWW-Authenticate"].startswith('Bearer realm="http://cache.example:5000/token"')
    _, headers, _ = await call(reg3, "GET", "/v2/", {"Host": 'evil" x'})
    assert headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.1:5000/token"')


async def token_for_service(reg: Running, service: str) -> str:
    status, _, body = await call(reg, "GET", "/token", basic("alice"), params={"service": service})
    assert status == 200, body
    return str(body["token"])


async def test_auth_off_costs_nothing(make_server: MakeServer) -> None:
    reg = await make_server()
    assert reg.server is not None and reg.server.auth is None
    status, headers, _ = await call(reg, "GET", "/v2/")
    assert status == 200 and "WWW-Authenticate" not in headers
    assert (await call(reg, "GET", "/token"))[0] == 404  # no token endpoint without auth
