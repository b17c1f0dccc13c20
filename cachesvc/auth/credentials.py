"""The credentials file (``--auth-file``): who may do what, and checking a presented secret.

The file is TOML and holds no secret in the clear: users carry a bcrypt hash of their password, static tokens the
SHA-256 of the token (a token is long and random, so a fast hash is enough and keeps per-request checks cheap)::

    [[user]]                                   # HTTP Basic, and the token endpoint
    name = "ci"
    password_bcrypt = "$2b$12$…"               # cachesvc hash-password < secret
    permissions = [
      { prefix = "cache/", actions = ["pull", "push"] },
      { prefix = "base/",  actions = ["pull"] },
    ]

    [[token]]                                  # Authorization: Bearer <token>, or Basic with user = name
    name = "prometheus"
    token_sha256 = "9f86d0…"                   # cachesvc gen-token prometheus
    permissions = [{ actions = ["metrics"] }]

    [anonymous]                                # optional: what requests without credentials may do
    permissions = [{ prefix = "public/", actions = ["pull"] }]

Repository actions are ``pull``, ``push`` and ``delete``; a ``prefix`` matches by path components (``cache`` and
``cache/`` both match ``cache`` and ``cache/app``, never ``cachex``); an absent or empty prefix matches every
repository. ``admin`` (the ``/_cachesvc/api/`` operator API and ``/v2/_catalog``) and ``metrics`` (``/metrics``) are
server-wide, so they go in an entry without a prefix. The file is read at start-up: edit it and restart.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

REPO_ACTIONS = frozenset({"pull", "push", "delete"})
SERVER_ACTIONS = frozenset({"admin", "metrics"})
ALL_ACTIONS = REPO_ACTIONS | SERVER_ACTIONS
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,127}")


class AuthConfigError(ValueError):
    """The auth settings or credentials file cannot be used; the message names the problem in one line."""


@dataclass(frozen=True, slots=True)
class Permission:
    prefix: str  # "" for every repository; stored without a trailing "/"
    actions: frozenset[str]

    def covers(self, name: str) -> bool:
        p = self.prefix
        return not p or name == p or (name.startswith(p) and name[len(p):len(p) + 1] == "/")


@dataclass(frozen=True)
class Principal:
    """A user, a static token or the anonymous client, with what it may do."""

    kind: str  # "user", "token" or "anonymous"
    name: str
    permissions: tuple[Permission, ...] = ()
    secret: str = field(default="", repr=False)  # bcrypt hash or token sha256

    def allows(self, rtype: str, name: str, action: str) -> bool:
        if rtype == "repository":
            return action in REPO_ACTIONS and any(action in p.actions and p.covers(name) for p in self.permissions)
        if rtype == "registry":
            wanted = {"catalog": "admin", "admin": "admin", "metrics": "metrics"}.get(name)
            return wanted is not None and any(wanted in p.actions for p in self.permissions)
        return False

    @property
    def key(self) -> str:
        """What a signed token names as its subject."""
        return f"{self.kind}:{self.name}"


ANONYMOUS_NOBODY = Principal("anonymous", "")


@dataclass
class Credentials:
    users: dict[str, Principal]
    tokens: dict[str, Principal]  # by token sha256
    anonymous: Principal | None

    def by_key(self, key: str) -> Principal | None:
        """The principal a signed token was issued to, if it is still in the file."""
        kind, _, name = key.partition(":")
        if kind == "user":
            return self.users.get(name)
        if kind == "token":
            return next((t for t in self.tokens.values() if t.name == name), None)
        if kind == "anonymous":
            return self.anonymous
        return None

    def token(self, presented: str) -> Principal | None:
        """A static token by its value, looked up by its hash (a hash lookup leaks nothing usable by timing)."""
        try:
            return self.tokens.get(hashlib.sha256(presented.encode()).hexdigest())
        except UnicodeEncodeError:
            return None

    def _rounds(self) -> int:
        return max(int(u.secret[4:6]) for u in self.users.values())

    def check_password(self, user: str, password: str) -> Principal | None:
        """Slow (bcrypt): run it off the event loop. Static tokens also log in as ``name:token``."""
        try:
            secret = password.encode()
        except UnicodeEncodeError:
            return None
        found = self.users.get(user)
        if found is None:
            tok = self.token(password)
            if tok is not None and tok.name == user:
                return tok
        if found is None and not self.users:
            return None
        # An unknown user is checked against a dummy hash of the same cost, so the answer takes as long.
        hashed = found.secret.encode() if found is not None else _dummy_hash(self._rounds())
        try:
            ok = bcrypt.checkpw(secret, hashed)
        except ValueError:  # bcrypt >= 5 refuses passwords over 72 bytes instead of truncating them
            ok = False
        return found if ok and found is not None else None


@functools.cache
def _dummy_hash(rounds: int) -> bytes:
    return bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds))


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for ``password_bcrypt`` (``cachesvc hash-password``)."""
    secret = password.encode()
    if len(secret) > 72:
        raise ValueError("bcrypt passwords are limited to 72 bytes")
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_credentials(path: Path) -> Credentials:
    """Read and validate the credentials file; AuthConfigError names the first problem found."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AuthConfigError(f"auth file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AuthConfigError(f"auth file {path}: {e}") from None
    where = str(path)
    _only(data, {"user", "token", "anonymous"}, where)
    users: dict[str, Principal] = {}
    tokens: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(_list(data.get("user", []), f"{where}: user")):
        at = f"{where}: user[{i}]"
        _only(entry, {"name", "password_bcrypt", "permissions"}, at)
        name = _name(entry, at, names)
        secret = entry.get("password_bcrypt")
        if not isinstance(secret, str) or not _BCRYPT.fullmatch(secret) or not 4 <= int(secret[4:6]) <= 31:
            raise AuthConfigError(f"{at}: password_bcrypt must be a bcrypt hash ($2b$…; cachesvc hash-password)")
        users[name] = Principal("user", name, _permissions(entry.get("permissions", []), at), secret)
    for i, entry in enumerate(_list(data.get("token", []), f"{where}: token")):
        at = f"{where}: token[{i}]"
        _only(entry, {"name", "token_sha256", "permissions"}, at)
        name = _name(entry, at, names)
        digest = entry.get("token_sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise AuthConfigError(f"{at}: token_sha256 must be 64 lowercase hex digits (cachesvc gen-token)")
        if digest in tokens:
            raise AuthConfigError(f"{at}: the same token is listed twice")
        tokens[digest] = Principal("token", name, _permissions(entry.get("permissions", []), at), digest)
    anonymous = None
    if "anonymous" in data:
        entry = data["anonymous"]
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where}: anonymous must be a table")
        _only(entry, {"permissions"}, f"{where}: anonymous")
        anonymous = Principal("anonymous", "", _permissions(entry.get("permissions", []), f"{where}: anonymous"))
    return Credentials(users, tokens, anonymous)


def _only(entry: Any, allowed: set[str], at: str) -> None:
    if not isinstance(entry, dict):
        raise AuthConfigError(f"{at}: must be a table")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise AuthConfigError(f"{at}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _list(value: Any, at: str) -> list[Any]:
    if not isinstance(value, list):
        raise AuthConfigError(f"{at} must be an array of tables ([[…]])")
    return value


def _name(entry: dict[str, Any], at: str, seen: set[str]) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthConfigError(f"{at}: name must be 1-128 letters, digits or ._@+- (no ':')")
    if name in seen:
        raise AuthConfigError(f"{at}: name {name!r} is used twice (users and tokens share one namespace)")
    seen.add(name)
    return name


def _permissions(value: Any, at: str) -> tuple[Permission, ...]:
    out = []
    for i, entry in enumerate(_list(value, f"{at}: permissions")):
        where = f"{at}: permissions[{i}]"
        _only(entry, {"prefix", "actions"}, where)
        prefix = entry.get("prefix", "")
        actions = entry.get("actions")
        if not isinstance(prefix, str) or any(c.isspace() for c in prefix):
            raise AuthConfigError(f"{where}: prefix must be a string without spaces")
        if not isinstance(actions, list) or not actions or not all(isinstance(a, str) for a in actions):
            raise AuthConfigError(f"{where}: actions must be a non-empty list of strings")
        unknown = sorted(set(actions) - ALL_ACTIONS)
        if unknown:
            raise AuthConfigError(f"{where}: unknown action {unknown[0]!r} (known: {', '.join(sorted(ALL_ACTIONS))})")
        prefix = prefix.strip("/") if prefix not in ("", "*", "/") else ""
        if prefix and SERVER_ACTIONS & set(actions):
            raise AuthConfigError(f"{where}: admin and metrics are server-wide; put them in an entry without prefix")
        out.append(Permission(prefix, frozenset(actions)))
    return tuple(out)
