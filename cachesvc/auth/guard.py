"""The request gate (what each route needs, who is asking, yes/401/403) and the token endpoint.

``Server.handle`` calls :meth:`Guard.authorize` once per request, after routing and only when an auth file is
configured; without one the server holds no guard and pays nothing per request.

What each route needs (``HEAD`` counts as ``GET``)::

    /healthz, /readyz, /token, unknown paths     nothing
    GET /v2/                                     any valid identity (401 + challenge without one: clients learn
                                                 where the token endpoint is from it)
    GET/HEAD blobs, manifests, tags, referrers   pull on the repository
    POST/PATCH/PUT/GET/DELETE uploads            push on the repository
    PUT manifests                                push
    DELETE blobs, manifests                      delete
    POST uploads ?mount=&from=                   push; and pull on ``from``, else the mount is dropped and a plain
                                                 upload session starts (the spec's fallback)
    GET /v2/_catalog                             admin (scope ``registry:catalog:*``): a listing of every
                                                 repository is an operator's view
    /_cachesvc/api/*, /_cachesvc/                admin (scope ``registry:admin:*``), from any address
    /metrics                                     metrics (scope ``registry:metrics:*``)

Identities: HTTP Basic (a user's password, or a static token as ``name:token``), ``Bearer`` with a static token,
``Bearer`` with a token from ``/token``, or none (the file's ``[anonymous]`` permissions, if any).

Answers: no or bad credentials -> 401 ``UNAUTHORIZED`` with ``WWW-Authenticate: Bearer realm=…/token,service=…,
scope=…`` (or ``Basic realm=…`` with ``--auth-challenge basic``); a signed token lacking a scope its holder could
get -> 401 with ``error="insufficient_scope"`` (fetch a new token); a known identity without the permission -> 403
``DENIED``. Basic is always accepted directly whatever the challenge says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc.api.errors import RegistryError
from cachesvc.api.names import NAME_RE, parse_name
from cachesvc.auth.credentials import REPO_ACTIONS, Credentials, Principal, load_credentials
from cachesvc.auth.headers import (
    AuthHeaderError,
    Basic,
    Scope,
    challenge,
    parse_authorization,
    parse_scopes,
    safe_host,
)
from cachesvc.auth.tokens import Grant, Signer, TokenError, load_or_create_key
from cachesvc.settings import Settings
from cachesvc.store.layout import Layout

try:
    from aiohttp.web import RequestKey
except ImportError:  # pragma: no cover - aiohttp < 3.12
    RequestKey = None  # type: ignore[assignment,misc]

log = logging.getLogger("cachesvc.auth")

TOKEN_PATH = "/token"
#: Set on a request the guard let through to the operator API: ``require_local`` then accepts any address.
ADMIN_GRANTED = RequestKey("admin_granted", bool) if RequestKey else "admin_granted"

OPEN = "open"
ANY_IDENTITY = "any"
Need = tuple[str, str, str]  # (resource type, name, action)

# (route template, method) -> repository action. HEAD is looked up as GET.
REPO_ROUTES: dict[tuple[str, str], str] = {
    ("/v2/{name}/blobs/uploads/", "POST"): "push",
    ("/v2/{name}/blobs/uploads/{session}", "GET"): "push",
    ("/v2/{name}/blobs/uploads/{session}", "PATCH"): "push",
    ("/v2/{name}/blobs/uploads/{session}", "PUT"): "push",
    ("/v2/{name}/blobs/uploads/{session}", "DELETE"): "push",
    ("/v2/{name}/blobs/{digest}", "GET"): "pull",
    ("/v2/{name}/blobs/{digest}", "DELETE"): "delete",
    ("/v2/{name}/manifests/{reference}", "GET"): "pull",
    ("/v2/{name}/manifests/{reference}", "PUT"): "push",
    ("/v2/{name}/manifests/{reference}", "DELETE"): "delete",
    ("/v2/{name}/tags/list", "GET"): "pull",
    ("/v2/{name}/referrers/{digest}", "GET"): "pull",
}
SERVER_ROUTES: dict[str, Need | str] = {
    "/healthz": OPEN, "/readyz": OPEN, "other": OPEN, TOKEN_PATH: OPEN,
    "/v2/": ANY_IDENTITY,
    "/v2/_catalog": ("registry", "catalog", "*"),
    "/_cachesvc/api/{action}": ("registry", "admin", "*"),
    "/_cachesvc/": ("registry", "admin", "*"),  # the status page: an operator's view
    "/metrics": ("registry", "metrics", "*"),
}
CACHE_ENTRIES = 4096
MAX_FORM = 64 * 1024
BCRYPT_PARALLEL = 4


@dataclass(frozen=True)
class Identity:
    """Who is asking: a principal from the file, and the signed token it came with (if any)."""

    principal: Principal
    grant: Grant | None = None

    def allows(self, rtype: str, name: str, action: str) -> bool:
        if self.grant is not None:
            return self.grant.allows(rtype, name, action)
        return self.principal.allows(rtype, name, action)


class Guard:
    """Authentication and authorization for one server; built only when ``--auth-file`` is given."""

    def __init__(self, settings: Settings, credentials: Credentials, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.credentials = credentials
        self.clock = clock
        self.service = settings.auth_service
        self.scheme = settings.auth_challenge
        self.signer: Signer | None = None
        self.anonymous = Identity(credentials.anonymous) if credentials.anonymous else None
        self._cache: dict[str, Identity] = {}
        self._bcrypt = asyncio.Semaphore(BCRYPT_PARALLEL)
        host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        self._fallback_host = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
        self._url_scheme = "https" if settings.tls_cert else "http"

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.time) -> Guard | None:
        if settings.auth_file is None:
            return None
        return cls(settings, load_credentials(settings.auth_file), clock)

    def open(self, layout: Layout) -> None:
        """Load (or create) the token signing key; the data directory must exist."""
        self.signer = Signer(load_or_create_key(layout.auth_key), self.service, self.clock)

    # -- the hook --------------------------------------------------------------------------------------------
    def requirement(self, method: str, route: str, params: dict[str, str]) -> Need | str:
        server = SERVER_ROUTES.get(route)
        if server is not None:
            return server
        action = REPO_ROUTES.get((route, "GET" if method == "HEAD" else method))
        if action is None:  # a route this table does not know: fail closed
            log.error("no permission mapping for %s %s: refused", method, route)
            return ("registry", "unmapped", "*")
        return ("repository", parse_name(params.get("name", "")), action)

    async def authorize(self, request: BaseRequest, method: str, route: str,
                        params: dict[str, str]) -> BaseRequest:
        """Let the request through (possibly rewritten: a mount the caller may not do is dropped) or raise 401/403."""
        need = self.requirement(method, route, params)
        if need == OPEN:
            return request
        identity = await self.identify(request)
        if need == ANY_IDENTITY:
            if identity is None:
                raise self.unauthorized(request, "authentication required")
            return request
        assert isinstance(need, tuple)
        subject = identity or self.anonymous
        if subject is None or not subject.allows(*need):
            raise self.refusal(request, identity, need)
        if need[:2] == ("registry", "admin"):
            request[ADMIN_GRANTED] = True
        elif route == "/v2/{name}/blobs/uploads/" and "mount" in request.query:
            request = self._check_mount(request, subject)
        return request

    def _check_mount(self, request: BaseRequest, subject: Identity) -> BaseRequest:
        source = request.query.get("from", "")
        if NAME_RE.fullmatch(source) and subject.allows("repository", source, "pull"):
            return request
        query = [(k, v) for k, v in request.query.items() if k not in ("mount", "from")]
        return request.clone(rel_url=request.rel_url.with_query(query))

    async def identify(self, request: BaseRequest) -> Identity | None:
        """The identity behind the ``Authorization`` header; None without one; 401 for one that does not check out."""
        values = request.headers.getall("Authorization", ())
        if not values:
            return None
        if len(values) > 1:
            raise self.unauthorized(request, "more than one Authorization header")
        value = values[0]
        cached = self._cache.get(value)
        if cached is not None and (cached.grant is None or cached.grant.expires > self.clock()):
            return cached
        try:
            parsed = parse_authorization(value)
        except AuthHeaderError as e:
            raise self.unauthorized(request, str(e)) from None
        if isinstance(parsed, Basic):
            principal = await self.check_password(parsed.user, parsed.password)
            if principal is None:
                raise self.unauthorized(request, "wrong user name or password")
            identity = Identity(principal)
        else:
            static = self.credentials.token(parsed.token)
            identity = Identity(static) if static is not None else self._verify(request, parsed.token)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[value] = identity
        return identity

    def _verify(self, request: BaseRequest, token: str) -> Identity:
        assert self.signer is not None, "Guard.open() was not called"
        try:
            grant = self.signer.verify(token)
        except TokenError as e:
            raise self.unauthorized(request, str(e)) from None
        principal = self.credentials.by_key(grant.subject)
        if principal is None:
            raise self.unauthorized(request, "the token's holder is no longer in the auth file")
        return Identity(principal, grant)

    async def check_password(self, user: str, password: str) -> Principal | None:
        """bcrypt off the event loop, a few at a time (each costs ~0.1-0.3 s of CPU)."""
        async with self._bcrypt:
            return await asyncio.to_thread(self.credentials.check_password, user, password)

    # -- answers ---------------------------------------------------------------------------------------------
    def realm(self, request: BaseRequest) -> str:
        if self.settings.token_realm:
            return self.settings.token_realm
        return f"{self._url_scheme}://{safe_host(request.host) or self._fallback_host}{TOKEN_PATH}"

    def unauthorized(self, request: BaseRequest, reason: str, need: Need | None = None,
                     error: str | None = None) -> RegistryError:
        scope = _challenge_scope(need) if need else None
        header = challenge(self.scheme, self.realm(request), self.service, scope, error)
        detail: dict[str, Any] = {"reason": reason}
        if scope:
            detail["scope"] = scope
        return RegistryError("UNAUTHORIZED", detail, headers={"WWW-Authenticate": header})

    def refusal(self, request: BaseRequest, identity: Identity | None, need: Need) -> RegistryError:
        if identity is None:
            return self.unauthorized(request, "authentication required", need)
        if identity.grant is not None and identity.principal.allows(*need):
            return self.unauthorized(request, "token lacks the scope; request a new one", need,
                                     error="insufficient_scope")
        return RegistryError("DENIED", {"reason": f"{identity.principal.kind} {identity.principal.name!r} may not "
                                                  f"{need[2]} {need[0]} {need[1]!r}"})

    # -- the token endpoint ----------------------------------------------------------------------------------
    async def token_endpoint(self, reg: object, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
        """``GET /token?service=…&scope=…`` (Basic, static bearer or anonymous) and the OAuth2 password grant
        (``POST`` form ``grant_type=password&username=…&password=…``). Refresh tokens are never issued."""
        if request.method == "POST":
            fields = await _form(request)
        elif request.method in ("GET", "HEAD"):
            fields = {k: request.query.getall(k) for k in set(request.query.keys())}
        else:
            raise RegistryError("UNSUPPORTED", {"method": request.method}, message="method not allowed",
                                status=405, headers={"Allow": "GET, POST"})
        service = (fields.get("service") or [self.service])[0]
        if service != self.service:
            raise RegistryError("DENIED", {"reason": f"this token service is {self.service!r}"},
                                message="unknown service", status=400)
        try:
            scopes = parse_scopes(fields.get("scope", []))
        except AuthHeaderError as e:
            raise RegistryError("DENIED", {"reason": str(e)}, message="invalid scope", status=400) from None
        principal = await self._token_principal(request, fields)
        granted = self.grant(principal, scopes)
        assert self.signer is not None, "Guard.open() was not called"
        ttl = self.settings.token_ttl
        token, issued = self.signer.issue(principal.key, granted, ttl)
        body = {"token": token, "access_token": token, "expires_in": int(ttl),
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued))}
        return web.Response(body=json.dumps(body).encode(), content_type="application/json",
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def _token_principal(self, request: BaseRequest, fields: dict[str, list[str]]) -> Principal:
        grant_type = (fields.get("grant_type") or [""])[0]
        if grant_type and grant_type != "password":
            raise RegistryError("UNSUPPORTED", {"reason": f"grant_type {grant_type[:40]!r} is not supported"},
                                message="unsupported grant type", status=400)
        if grant_type == "password":
            user, password = (fields.get("username") or [""])[0], (fields.get("password") or [""])[0]
            principal = await self.check_password(user, password)
            if principal is None:
                raise self._token_unauthorized("wrong user name or password")
            return principal
        try:
            identity = await self.identify(request)
        except RegistryError:
            raise self._token_unauthorized("wrong user name or password") from None
        if identity is not None:
            if identity.grant is not None:  # a signed token does not buy another one
                raise self._token_unauthorized("log in with a user name and password or a static token")
            return identity.principal
        if self.anonymous is None:
            raise self._token_unauthorized("authentication required")
        return self.anonymous.principal

    def _token_unauthorized(self, reason: str) -> RegistryError:
        return RegistryError("UNAUTHORIZED", {"reason": reason},
                             headers={"WWW-Authenticate": challenge("basic", "", self.service)})

    @staticmethod
    def grant(principal: Principal, scopes: list[Scope]) -> list[Scope]:
        """Requested ∩ permitted, scope by scope; scopes of unknown types or invalid names are left out."""
        out: list[Scope] = []
        for s in scopes:
            if s.type == "repository":
                try:
                    parse_name(s.name)
                except RegistryError:
                    continue
                wanted = REPO_ACTIONS if "*" in s.actions else [a for a in s.actions if a in REPO_ACTIONS]
                actions = tuple(a for a in sorted(wanted) if principal.allows("repository", s.name, a))
            elif s.type == "registry":
                actions = ("*",) if principal.allows("registry", s.name, "*") else ()
            else:
                actions = ()
            if actions:
                out.append(Scope(s.type, s.name, actions))
        return out


async def _form(request: BaseRequest) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (the only kind OAuth2 token requests use), size-capped."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise RegistryError("UNSUPPORTED", {"reason": "token requests are form-urlencoded"},
                            message="unsupported content type", status=400)
    raw = await request.content.read(MAX_FORM + 1)
    if len(raw) > MAX_FORM:
        raise RegistryError("SIZE_INVALID", {"reason": f"token request body over {MAX_FORM} bytes"})
    fields: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True):
        fields.setdefault(key, []).append(value)
    return fields


def _challenge_scope(need: Need) -> str:
    rtype, name, action = need
    if rtype == "repository":
        return f"repository:{name}:{'pull,push' if action == 'push' else action}"
    return f"{rtype}:{name}:{action}"
