"""Fixtures for the auth suite: a credentials file with known users and tokens, and in-process servers using it.

Passwords are hashed with bcrypt cost 4 (the minimum) so that the suite is fast; the server treats every cost
the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cachesvc.auth.credentials import hash_password, token_hash
from cachesvc.auth.headers import encode_basic
from tests.support.inproc import Running

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "ops": "ops-secret", "pusher": "pusher-secret"}
STATIC_TOKENS = {"prom": "cst_prometheus-token-0123456789", "ci": "cst_ci-token-abcdefghijklmnop"}


def auth_toml(anonymous: bool = False) -> str:
    """alice: pull+push+delete on cache/, pull on base/; bob: pull on base/ only; ops: everything incl. admin and
    metrics; pusher: push (no pull) on drop/; tokens: prom (metrics), ci (pull+push on cache/ci)."""
    h = {u: hash_password(p, rounds=4) for u, p in PASSWORDS.items()}
    text = f'''
[[user]]
name = "alice"
password_bcrypt = "{h["alice"]}"
permissions = [
  {{ prefix = "cache/", actions = ["pull", "push", "delete"] }},
  {{ prefix = "base", actions = ["pull"] }},
]

[[user]]
name = "bob"
password_bcrypt = "{h["bob"]}"
permissions = [{{ prefix = "base/", actions = ["pull"] }}]

[[user]]
name = "ops"
password_bcrypt = "{h["ops"]}"
permissions = [{{ actions = ["pull", "push", "delete"] }}, {{ actions = ["admin", "metrics"] }}]

[[user]]
name = "pusher"
password_bcrypt = "{h["pusher"]}"
permissions = [{{ prefix = "drop/", actions = ["push"] }}]

[[token]]
name = "prom"
token_sha256 = "{token_hash(STATIC_TOKENS["prom"])}"
permissions = [{{ actions = ["metrics"] }}]

[[token]]
name = "ci"
token_sha256 = "{token_hash(STATIC_TOKENS["ci"])}"
permissions = [{{ prefix = "cache/ci", actions = ["pull", "push"] }}]
'''
    if anonymous:
        text += '\n[anonymous]\npermissions = [{ prefix = "public/", actions = ["pull"] }]\n'
    return text


def basic(user: str, password: str | None = None) -> dict[str, str]:
    return {"Authorization": encode_basic(user, PASSWORDS.get(user, "") if password is None else password)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def auth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "auth.toml"
    path.write_text(auth_toml())
    return path


@pytest.fixture(scope="session")
def auth_file_anonymous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth-anon") / "auth.toml"
    path.write_text(auth_toml(anonymous=True))
    return path


@pytest.fixture
async def reg(make_server: Callable[..., Awaitable[Running]], auth_file: Path) -> Running:
    """An in-process server with authentication on (Bearer challenges)."""
    return await make_server(auth_file=auth_file)
