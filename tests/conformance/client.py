"""A synchronous registry client that sends what upstream's reggie/resty/net-http stack puts on the wire.

Upstream drives the registry with `github.com/bloodorangeio/reggie` (a thin layer over resty v2 and Go's
`net/http`). The details that matter for conformance and that this client reproduces:

* `NewRequest(method, "/v2/<name>/...")` substitutes `<name>` (the default namespace unless `name=` is
  given), `<reference>`, `<digest>` and `<session_id>`; a URL that still holds a placeholder, or `///`, is
  refused ("request is invalid") before anything is sent.
* A path taken from `GetRelativeLocation()` keeps its own query (e.g. an upload `_state`); query params set
  on the request are appended after it, encoded like Go's `url.Values.Encode` (sorted keys, `:` as `%3A`).
* Bodies are handed to resty as an `io.Reader`, so `net/http` does not know their length: a non-empty body
  goes out with `Transfer-Encoding: chunked`, and a `Content-Length` header set by the test is dropped
  (`net/http` never writes a caller's Content-Length). PUT/POST/PATCH without a body send
  `Content-Length: 0`. GET, HEAD and OPTIONS never carry a body (resty drops it).
* `User-Agent: distribution-spec-conformance-tests`; `Accept-Encoding: gzip` on non-HEAD requests, with a
  gzip response body transparently decoded, as `net/http` does.
* Redirects are followed as `net/http`'s default policy does (10 at most; 301/302/303 turn a non-HEAD
  request into a body-less GET; 307/308 keep the method but are not followed when a body was sent, since
  the body cannot be replayed).
* A 401 carrying `WWW-Authenticate` is retried once with Basic credentials, or with a bearer token fetched
  from the challenge's realm (`OCI_AUTH_SCOPE` overriding the scope), as reggie does.

Only loopback hosts are contacted unless `CONFORMANCE_ALLOW_REMOTE=1`.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import ipaddress
import json
import logging
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlencode, urljoin, urlsplit

log = logging.getLogger("conformance.http")
log.setLevel(logging.DEBUG)

USER_AGENT = "distribution-spec-conformance-tests"
MAX_REDIRECTS = 10
TIMEOUT_SECONDS = 120.0
_INVALID_URL = re.compile(r"<name>|<reference>|<digest>|<session_id>|//{2,}")
_PAYLOAD_METHODS_WITHOUT_BODY = {"GET", "HEAD", "OPTIONS"}
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class RequestInvalid(Exception):
    """reggie's "request is invalid": a placeholder was left in the URL."""


class RemoteHostRefused(Exception):
    """The client was asked to contact a non-loopback host."""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_host(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not _is_loopback(host) and os.environ.get("CONFORMANCE_ALLOW_REMOTE", "") != "1":
        raise RemoteHostRefused(f"refusing to contact non-loopback host {host!r} ({url}); "
                                "set CONFORMANCE_ALLOW_REMOTE=1 to allow it")


def go_query_encode(params: list[tuple[str, str]]) -> str:
    """Go's `url.Values.Encode`: keys sorted, values in insertion order, `QueryEscape`d."""
    ordered = sorted(params, key=lambda kv: kv[0])
    return urlencode(ordered, quote_via=quote_plus, safe="")


@dataclass
class ErrorInfo:
    """One entry of an OCI error response's `errors` array."""

    code: str
    message: str
    detail: Any


@dataclass
class Response:
    """A registry response: status, headers (case-insensitive, first value wins) and the whole body."""

    status: int
    reason: str
    headers: Message
    body: bytes
    method: str
    url: str

    def status_code(self) -> int:
        """The HTTP status code (reggie's `StatusCode()`)."""
        return self.status

    def header(self, name: str) -> str:
        """Go's `Header().Get(name)`: the first value, or "" when absent."""
        value = self.headers.get(name)
        return "" if value is None else str(value)

    def text(self) -> str:
        """resty's `String()`: the body as text."""
        return self.body.decode("utf-8", errors="replace")

    def relative_location(self) -> str:
        """reggie's `GetRelativeLocation()`: the Location URL's (decoded) path plus its raw query."""
        loc = self.header("Location")
        try:
            parts = urlsplit(loc)
        except ValueError:
            return ""
        path = unquote(parts.path)
        if parts.query:
            path += "?" + parts.query
        return path

    def absolute_location(self) -> str:
        """reggie's `GetAbsoluteLocation()`: the Location header verbatim."""
        return self.header("Location")

    def errors(self) -> list[ErrorInfo]:
        """reggie's `Errors()`: decode `{"errors": [...]}`; raises ValueError where Go's Unmarshal fails."""
        doc = json.loads(self.body.decode("utf-8"))
        if doc is None:
            return []
        if not isinstance(doc, dict):
            raise ValueError(f"error body is not a JSON object: {self.text()[:200]!r}")
        entries = go_field(doc, "errors")
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise ValueError(f"`errors` is not an array: {entries!r}")
        out: list[ErrorInfo] = []
        for entry in entries:
            if entry is None:
                out.append(ErrorInfo("", "", None))
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"error entry is not an object: {entry!r}")
            code, message = go_field(entry, "code"), go_field(entry, "message")
            for value in (code, message):
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"error code/message is not a string: {entry!r}")
            out.append(ErrorInfo(code or "", message or "", go_field(entry, "detail")))
        return out

    def describe(self, limit: int = 600) -> str:
        """A one-paragraph summary for assertion messages."""
        body = self.text()
        if len(body) > limit:
            body = body[:limit] + "..."
        hdrs = ", ".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.url} -> {self.status} {self.reason}\n  headers: {hdrs}\n  body: {body!r}"


def go_field(obj: dict[str, Any], name: str) -> Any:
    """`encoding/json` field lookup: an exact key first, then a case-insensitive match."""
    if name in obj:
        return obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if key.casefold() == folded:
            return value
    return None


@dataclass
class Request:
    """A request being built, with reggie's chainable setters."""

    client: RegistryClient
    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None

    def set_header(self, name: str, value: str) -> Request:
        """Set (replace) a header."""
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))
        return self

    def set_query_param(self, name: str, value: str) -> Request:
        """Set (replace) a query parameter, appended after any query already in the path."""
        self.query = [(k, v) for k, v in self.query if k != name]
        self.query.append((name, value))
        return self

    def set_body(self, body: bytes) -> Request:
        """Attach a body (sent as an unknown-length stream, like reggie's `SetBody`)."""
        self.body = bytes(body)
        return self

    def full_url(self) -> str:
        """The URL resty would request: the path's own query, then `&` and the encoded params."""
        if not self.query:
            return self.url
        extra = go_query_encode(self.query)
        parts = urlsplit(self.url)
        return self.url + ("&" if parts.query else "?") + extra


class RegistryClient:
    """reggie's `Client`: a base URL, a default namespace and optional credentials."""

    def __init__(self, root_url: str, default_name: str, *, username: str = "", password: str = "",
                 auth_scope: str = "", debug: bool = False) -> None:
        self.root_url = root_url.rstrip("/")
        self.default_name = default_name
        self.username = username
        self.password = password
        self.auth_scope = auth_scope
        self.debug = debug
        _check_host(self.root_url)

    def new_request(self, method: str, path: str, *, name: str | None = None, reference: str = "",
                    digest: str = "", session_id: str = "") -> Request:
        """reggie's `NewRequest`: substitute placeholders and prefix the root URL."""
        namespace = name if name else self.default_name
        path = (path.replace("<name>", namespace).replace("<reference>", reference)
                .replace("<digest>", digest).replace("<session_id>", session_id))
        return Request(self, method, self.root_url + path)

    def do(self, req: Request) -> Response:
        """reggie's `Do`: validate, send (following redirects), retry once with auth on a 401."""
        if _INVALID_URL.search(req.url):
            raise RequestInvalid(f"request is invalid: {req.url}")
        resp = self._send_following_redirects(req.method, req.full_url(), req.headers, req.body)
        if resp.status == 401 and resp.header("WWW-Authenticate"):
            auth = self._authorization_for(resp.header("WWW-Authenticate"))
            if auth:
                headers = [*req.headers, ("Authorization", auth)]
                resp = self._send_following_redirects(req.method, req.full_url(), headers, req.body)
        return resp

    # -- auth ---------------------------------------------------------------------------------------

    def _authorization_for(self, challenge: str) -> str:
        if challenge.lower().startswith("basic"):
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            return f"Basic {token}"
        params = dict(re.findall(r'([a-zA-Z]+)="(.+?)"', challenge))
        realm = params.get("realm", "")
        if not realm:
            return ""
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        scope = self.auth_scope or params.get("scope", "")
        if scope:
            query.append(("scope", scope))
        headers = [("Accept", "application/json")]
        if self.username or self.password:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            headers.append(("Authorization", f"Basic {basic}"))
        url = realm + ("?" + go_query_encode(query) if query else "")
        resp = self._send_following_redirects("GET", url, headers, None)
        try:
            info = json.loads(resp.body.decode("utf-8"))
        except ValueError:
            return ""
        token = (info.get("token") or info.get("access_token")) if isinstance(info, dict) else ""
        return f"Bearer {token}" if token else ""

    # -- transport ----------------------------------------------------------------------------------

    def _send_following_redirects(self, method: str, url: str, headers: list[tuple[str, str]],
                                  body: bytes | None) -> Response:
        if method in _PAYLOAD_METHODS_WITHOUT_BODY:
            body = None
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send_once(method, url, headers, body)
            location = resp.header("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            if resp.status in (307, 308):
                if body:  # net/http cannot rewind an io.Reader body, so it hands back the redirect
                    return resp
            else:
                if method != "HEAD":
                    method = "GET"
                body = None
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                headers = [(k, v) for k, v in headers if k.lower() not in ("authorization", "cookie")]
            url = target
        raise RuntimeError(f"stopped after {MAX_REDIRECTS} redirects: {url}")

    def _send_once(self, method: str, url: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> Response:
        _check_host(url)
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # reggie.WithInsecureSkipTLSVerify(true)
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_SECONDS,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_SECONDS)
        target = quote(unquote(parts.path), safe=_PATH_SAFE) or "/"
        if parts.query:
            target += "?" + parts.query
        sent: list[tuple[str, str]] = []
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            sent.append(("User-Agent", USER_AGENT))
            for name, value in headers:
                if name.lower() in ("content-length", "transfer-encoding", "host", "user-agent", "trailer"):
                    continue  # net/http writes these itself and ignores the caller's
                sent.append((name, value))
            if method != "HEAD" and not any(k.lower() in ("accept-encoding", "range") for k, _ in headers):
                sent.append(("Accept-Encoding", "gzip"))
            chunked = bool(body)
            if chunked:
                sent.append(("Transfer-Encoding", "chunked"))
            elif method in ("POST", "PUT", "PATCH"):
                sent.append(("Content-Length", "0"))
            for name, value in sent:
                conn.putheader(name, value)
            conn.endheaders(message_body=_one_chunk(body) if chunked else None, encode_chunked=chunked)
            raw = conn.getresponse()
            data = raw.read()
            resp_headers = raw.msg
            if (resp_headers.get("Content-Encoding") or "").lower() == "gzip" and data:
                data = gzip.decompress(data)
            resp = Response(raw.status, raw.reason, resp_headers, data, method, url)
        finally:
            conn.close()
        self._log(method, url, sent, body, resp)
        return resp

    def _log(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
             resp: Response) -> None:
        limit = 4096 if self.debug else 300
        shown = [(k, "*****" if k.lower() == "authorization" else v) for k, v in headers]
        req_body = "" if not body else f"\n    body ({len(body)} bytes): {body[:limit]!r}"
        resp_body = "" if not resp.body else f"\n    body ({len(resp.body)} bytes): {resp.body[:limit]!r}"
        log.debug("%s %s\n    %s%s\n  -> %s %s\n    %s%s", method, url,
                  ", ".join(f"{k}: {v}" for k, v in shown), req_body, resp.status, resp.reason,
                  ", ".join(f"{k}: {v}" for k, v in resp.headers.items()), resp_body)


def _one_chunk(body: bytes | None) -> Iterator[bytes]:
    if body:
        yield body
