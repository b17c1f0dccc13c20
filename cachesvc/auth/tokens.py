"""Short-lived signed tokens for the Docker/OCI token flow, and the key that signs them.

A token is a JWT (RFC 7519) signed with HMAC-SHA256, in the claim layout CNCF distribution uses, so it is
readable with any JWT tool; clients treat it as opaque. Only this server verifies it, so a symmetric key is
enough: 32 random bytes generated on first start and kept at ``<root>/auth.key`` (mode 0600). Tokens therefore
survive restarts (a client's token stays good until it expires) and stop working if the key file is removed.

Claims: ``iss`` ("cachesvc"), ``sub`` (``user:NAME``, ``token:NAME`` or ``anonymous:``), ``aud`` (the service),
``iat``/``nbf``/``exp`` (seconds), ``jti`` (random), ``access`` (``[{type, name, actions}]``: what was granted).
Verification refuses any other ``alg`` (no ``none``), a bad signature, another audience, and an expired token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachesvc.auth.headers import Scope

log = logging.getLogger("cachesvc.auth")

KEY_BYTES = 32
ISSUER = "cachesvc"
MAX_TOKEN = 8192
_HEADER = {"alg": "HS256", "typ": "JWT"}


class TokenError(ValueError):
    """A token that does not verify; the message says why (for the 401 detail and the log)."""


@dataclass(frozen=True)
class Grant:
    """What a verified token lets its bearer do, and for whom it was issued."""

    subject: str
    access: frozenset[tuple[str, str, str]]
    expires: float

    def allows(self, rtype: str, name: str, action: str) -> bool:
        return (rtype, name, action) in self.access


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token is not base64url") from None


class Signer:
    """Issues and verifies tokens with one key; ``clock`` is injectable so tests can move time."""

    def __init__(self, key: bytes, service: str, clock: Callable[[], float]) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError("signing key too short")
        self.key = key
        self.service = service
        self.clock = clock
        self.kid = hashlib.sha256(key).hexdigest()[:16]

    def issue(self, subject: str, scopes: list[Scope], ttl: float) -> tuple[str, float]:
        """A token for ``subject`` granting ``scopes``; returns it and its issue time."""
        now = self.clock()
        claims = {"iss": ISSUER, "sub": subject, "aud": self.service, "iat": int(now), "nbf": int(now) - 1,
                  "exp": int(now + ttl), "jti": _b64(os.urandom(12)),
                  "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)} for s in scopes]}
        head = _b64(json.dumps({**_HEADER, "kid": self.kid}, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{head}.{body}.{self._sign(head, body)}", now

    def _sign(self, head: str, body: str) -> str:
        return _b64(hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest())

    def verify(self, token: str) -> Grant:
        """The grant a token carries; TokenError if it is malformed, forged, for another service or expired."""
        if len(token) > MAX_TOKEN:
            raise TokenError("token too long")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a signed token")
        head, body, sig = parts
        try:
            expected = self._sign(head, body)
        except UnicodeEncodeError:
            raise TokenError("not a signed token") from None
        if not hmac.compare_digest(expected.encode(), sig.encode(errors="replace")):
            raise TokenError("bad token signature")
        header, claims = _json(head), _json(body)
        if header.get("alg") != "HS256":
            raise TokenError("unsupported token algorithm")
        if claims.get("aud") != self.service or claims.get("iss") != ISSUER:
            raise TokenError("token issued for another service")
        exp, nbf, sub = claims.get("exp"), claims.get("nbf", 0), claims.get("sub")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float) or not isinstance(sub, str):
            raise TokenError("malformed token claims")
        now = self.clock()
        if now >= exp:
            raise TokenError("token expired")
        if now < nbf:
            raise TokenError("token not valid yet")
        access: set[tuple[str, str, str]] = set()
        entries = claims.get("access", [])
        if not isinstance(entries, list):
            raise TokenError("malformed token claims")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("actions"), list):
                raise TokenError("malformed token claims")
            rtype, name = entry.get("type"), entry.get("name")
            if not isinstance(rtype, str) or not isinstance(name, str):
                raise TokenError("malformed token claims")
            access.update((rtype, name, a) for a in entry["actions"] if isinstance(a, str))
        return Grant(sub, frozenset(access), float(exp))


def _json(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part))
    except (ValueError, RecursionError):
        raise TokenError("token is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError("token is not a JSON object")
    return value


def load_or_create_key(path: Path) -> bytes:
    """The signing key at ``path``, created (0600, fsynced, atomically) on first start."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) >= KEY_BYTES:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o): anyone who reads it can forge tokens", path, mode)
        return key
    if key:
        log.warning("%s is truncated; generating a new token signing key", path)
    key = os.urandom(KEY_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return key
