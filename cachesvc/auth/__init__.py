"""Authentication and authorization: credentials file, the token flow, the per-request gate, TLS and start-up rules.

* ``credentials`` — the ``--auth-file`` (users with bcrypt passwords, static tokens, per-prefix permissions).
* ``headers`` — parsers of ``Authorization`` and token ``scope`` strings, the ``WWW-Authenticate`` challenge.
* ``tokens`` — HS256-signed short-lived tokens and the key at ``<root>/auth.key``.
* ``guard`` — the hook ``Server.handle`` calls, the route -> permission table, and ``/token``.
* ``listener`` — refusing to serve a non-loopback address without auth; the TLS context.
* ``commands`` — ``cachesvc hash-password`` and ``cachesvc gen-token``.
"""

from cachesvc.auth.credentials import AuthConfigError
from cachesvc.auth.guard import ADMIN_GRANTED, TOKEN_PATH, Guard
from cachesvc.auth.listener import is_loopback, startup_checks

__all__ = ["ADMIN_GRANTED", "TOKEN_PATH", "AuthConfigError", "Guard", "is_loopback", "startup_checks"]
