"""Start-up rules for the listener: who may be served without authentication, and TLS.

* Authentication may be off only on loopback: a non-loopback ``--listen`` without ``--auth-file`` refuses to
  start unless ``--allow-anonymous`` says that anyone who can reach the port may read and write the cache.
* ``--tls-cert`` and ``--tls-key`` come together (PEM files); the listener then speaks only TLS (1.2 or later).
* Credentials over plain HTTP beyond loopback are allowed (a private builder network) but logged as a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from cachesvc.auth.credentials import AuthConfigError
from cachesvc.settings import Settings, flag_name

log = logging.getLogger("cachesvc.auth")


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine (``""``/``0.0.0.0``/``::`` do not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def startup_checks(settings: Settings) -> ssl.SSLContext | None:
    """Refuse a configuration that would expose the cache by accident; the TLS context if TLS is configured."""
    loopback = is_loopback(settings.host)
    if not loopback and settings.auth_file is None and not settings.allow_anonymous:
        raise AuthConfigError(
            f"refusing to serve {settings.listen} without authentication: give {flag_name('auth_file')} FILE, "
            f"or {flag_name('allow_anonymous')} to let anyone who can reach it read and write the cache")
    context = tls_context(settings)
    if settings.auth_file is not None and not loopback and context is None:
        log.warning("credentials and tokens for %s travel unencrypted: consider --tls-cert/--tls-key",
                    settings.listen)
    return context


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise AuthConfigError(f"{flag_name('tls_cert')} and {flag_name('tls_key')} must be given together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise AuthConfigError(f"TLS file not found: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise AuthConfigError(f"cannot use TLS certificate {cert} with key {key}: {e}") from None
    return context
