"""Pure parsers and formatters for the untrusted text of authentication: ``Authorization`` headers, token-request
``scope`` strings, and the ``WWW-Authenticate`` challenge.

Every parser raises :class:`AuthHeaderError` (never anything else) on malformed input; the caller turns that into
a spec ``UNAUTHORIZED`` (401) or a 400, so a strange header can never become a server error.

Grammar (RFC 9110 §11, RFC 7617 Basic, RFC 6750 Bearer, and the Docker token-scope grammar)::

    Authorization: Basic  base64(user ":" password)        user: no ':'; both UTF-8
    Authorization: Bearer token68                          token68 = 1*(ALPHA/DIGIT/-._~+/) *"="
    scope = resourcetype [ "(" class ")" ] ":" resourcename ":" action *( "," action )
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

MAX_HEADER = 8192  # longer Authorization values are refused outright (no base64/HMAC work on megabytes)
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]*")
_RESOURCE_TYPE = re.compile(r"[a-z0-9]+(?:\([a-z0-9]+\))?")
_ACTION = re.compile(r"[a-z*]+")
# What a realm host may look like before it is put into a quoted header value (Host headers are untrusted).
_HOST = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class AuthHeaderError(ValueError):
    """Malformed authentication input; the message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Basic:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Bearer:
    token: str


@dataclass(frozen=True, slots=True)
class Scope:
    """One requested or granted access: ``repository:cache/app:pull,push`` -> ("repository", "cache/app", …)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_authorization(value: str) -> Basic | Bearer:
    """``Authorization`` header value -> :class:`Basic` or :class:`Bearer`; AuthHeaderError otherwise."""
    if len(value) > MAX_HEADER:
        raise AuthHeaderError("Authorization header too long")
    scheme, _, rest = value.strip(" \t").partition(" ")
    if not _SCHEME.fullmatch(scheme):
        raise AuthHeaderError("malformed Authorization header")
    credentials = rest.strip(" \t")
    kind = scheme.lower()
    if kind == "basic":
        return parse_basic(credentials)
    if kind == "bearer":
        if not _TOKEN68.fullmatch(credentials):
            raise AuthHeaderError("malformed bearer token")
        return Bearer(credentials)
    raise AuthHeaderError(f"unsupported authorization scheme {scheme[:20]!r}")


def parse_basic(credentials: str) -> Basic:
    """The token68 of a Basic header -> user and password (RFC 7617, UTF-8)."""
    if not _TOKEN68.fullmatch(credentials):
        raise AuthHeaderError("malformed basic credentials")
    try:
        raw = base64.b64decode(credentials, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthHeaderError("basic credentials are not base64 of UTF-8 text") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise AuthHeaderError("basic credentials lack the ':' between user and password")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise AuthHeaderError("control characters in the user name")
    return Basic(user, password)


def encode_basic(user: str, password: str) -> str:
    """The header value a client sends (tests and the operator CLI use it)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_scope(text: str) -> Scope:
    """One scope string; the name may itself contain ':' (a registry host:port), so split from both ends."""
    if len(text) > 1024:
        raise AuthHeaderError("scope too long")
    rtype, sep1, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not sep1 or not sep2 or not name or not _RESOURCE_TYPE.fullmatch(rtype):
        raise AuthHeaderError(f"malformed scope {text[:100]!r}")
    actions = tuple(a for a in actions_text.split(",") if a)
    if not actions or not all(_ACTION.fullmatch(a) for a in actions):
        raise AuthHeaderError(f"malformed actions in scope {text[:100]!r}")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F or c in '"\\' for c in name):
        raise AuthHeaderError(f"malformed resource name in scope {text[:100]!r}")
    return Scope(rtype, name, tuple(dict.fromkeys(actions)))


def parse_scopes(values: list[str]) -> list[Scope]:
    """Every ``scope`` query value of a token request; one value may hold several, space-separated (OAuth2)."""
    out: list[Scope] = []
    for value in values:
        for part in value.split(" "):
            if part:
                out.append(parse_scope(part))
    if len(out) > 64:
        raise AuthHeaderError("too many scopes")
    return out


def quote(value: str) -> str:
    """An HTTP quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def safe_host(host: str | None) -> str | None:
    """The request's Host if it looks like a host[:port] (it goes into a header other clients trust), else None."""
    if host and len(host) <= 300 and _HOST.fullmatch(host):
        return host
    return None


def challenge(scheme: str, realm: str, service: str, scope: str | None = None, error: str | None = None) -> str:
    """A ``WWW-Authenticate`` value: ``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"``."""
    if scheme == "basic":
        return f"Basic realm={quote(service)}"
    parts = [f"realm={quote(realm)}", f"service={quote(service)}"]
    if scope:
        parts.append(f"scope={quote(scope)}")
    if error:
        parts.append(f"error={quote(error)}")
    return "Bearer " + ",".join(parts)
