"""The server: wires the store, the route table, error mapping, access logs and metrics into one handler.

It runs on aiohttp's low-level ``web.Server`` with its own small router: the full ``web.Application`` stack costs
several times more per request, which matters for the HEAD storms BuildKit sends on every cache export.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachesvc import logs
from cachesvc.api import admin, status_page
from cachesvc.api.context import BYTES_IN, CACHE_RESULT, Registry
from cachesvc.api.errors import RegistryError
from cachesvc.api.routes import REGISTRY_ROUTES, Handler, Router
from cachesvc.auth import TOKEN_PATH, AuthConfigError, Guard, startup_checks
from cachesvc.metrics import Metrics, TrafficCollector
from cachesvc.remote import remote_tier
from cachesvc.settings import Settings
from cachesvc.store import compression
from cachesvc.store.store import Store
from cachesvc.traffic import Traffic

log = logging.getLogger("cachesvc.server")

OPERATOR_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ADMIN_PREFIX = "/_cachesvc/api/"
DRAIN_TIMEOUT = 20.0  # seconds SIGTERM waits for requests in flight
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (see serve)
COMMON_HEADERS = {"Docker-Distribution-Api-Version": "registry/2.0"}


class Server:
    """A cachesvc instance: store + HTTP handler. ``start()``/``close()`` bracket its life."""

    def __init__(self, settings: Settings, *, store: Store | None = None,
                 access_log: logs.AccessLog | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store or Store(settings, metrics=self.metrics)
        self.traffic = Traffic(self.store.clock)
        self.registry = Registry(self.store, settings, self.metrics, self.traffic)
        self.metrics.registry.register(TrafficCollector(self.traffic))
        self.router = Router(REGISTRY_ROUTES)
        self.access_log = access_log or logs.AccessLog(sys.stderr, settings.log_format,
                                                       enabled=log.isEnabledFor(logging.INFO))
        self._request_metrics: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        self.inflight = 0
        self.draining = False
        self.started = time.time()
        # None without --auth-file: then no request pays anything for authentication.
        self.auth: Guard | None = Guard.from_settings(settings, self.store.clock)
        # The shared tier (cachesvc/remote), None without --remote: then local misses are simply 404.
        self.remote = remote_tier(settings, self.store, self.metrics)
        self.registry.remote = self.remote

    async def start(self) -> None:
        await self.store.start()
        if self.auth is not None:
            self.auth.open(self.store.layout)
        if self.remote is not None:
            await self.remote.start()

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()
        await self.store.close()
        self.access_log.flush()

    # -- the one handler -----------------------------------------------------------------------------------
    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        t0 = time.perf_counter()
        rid = request.headers.get("X-Request-Id") or f"{self._id_prefix}-{next(self._ids)}"
        path = request.rel_url.raw_path
        method = request.method
        route_label = "other"
        params: dict[str, str] = {}
        error: str | None = None
        resp: web.StreamResponse | None = None
        self.inflight += 1
        try:
            route_label, params, handler = self.resolve(method, path)
            if self.auth is not None:
                request = await self.auth.authorize(request, method, route_label, params)
            resp = await handler(self.registry, request, params)
            resp.headers.update(COMMON_HEADERS)
            resp.headers["X-Request-Id"] = rid
            if self.draining:
                resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
        except RegistryError as e:
            error = e.code
            resp = e.response(head=method == "HEAD")
        except (asyncio.CancelledError, ConnectionError, TimeoutError) as e:
            # The client went away (or stalled) mid-response: nothing more can be said to it.
            self._finish(rid, method, path, route_label, params, 499, request, t0, type(e).__name__, None)
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.exception("request %s %s %s failed", rid, method, path, extra={"request_id": rid})
            if resp is not None and resp.prepared:
                self._finish(rid, method, path, route_label, params, resp.status, request, t0, error, resp)
                raise
            resp = RegistryError("UNKNOWN", {"request_id": rid}, status=500).response(head=method == "HEAD")
        finally:
            self.inflight -= 1
        if error is not None:
            resp.headers.update(COMMON_HEADERS)
            resp.headers["X-Request-Id"] = rid
        self._finish(rid, method, path, route_label, params, resp.status, request, t0, error, resp)
        return resp

    def resolve(self, method: str, path: str) -> tuple[str, dict[str, str], Handler]:
        """The route label, path parameters and handler for a request (405/404 as spec errors)."""
        if path == TOKEN_PATH and self.auth is not None:
            return TOKEN_PATH, {}, self.auth.token_endpoint
        if path in ("/_cachesvc", "/_cachesvc/"):
            return "/_cachesvc/", {}, status_page.status_page
        if path.startswith(ADMIN_PREFIX):
            action = path[len(ADMIN_PREFIX):]
            return f"{ADMIN_PREFIX}{{action}}", {"action": action}, admin.admin_api
        if not path.startswith("/v2"):
            return (path if path in OPERATOR_PATHS else "other"), {}, self.operator_endpoint
        found = self.router.match(path)
        if found is None:
            raise RegistryError("NAME_UNKNOWN", {"path": path[:200]}, message="no such endpoint")
        route, params = found
        handler = route.methods.get(method)
        if handler is None and method == "HEAD" and "GET" in route.methods:
            handler = route.methods["GET"]
        if handler is None:
            raise RegistryError("UNSUPPORTED", {"method": method}, message="method not allowed", status=405,
                                headers={"Allow": ", ".join(sorted(route.methods))})
        return route.template, params, handler

    def _finish(self, rid: str, method: str, path: str, route: str, params: dict[str, str], status: int,
                request: BaseRequest, t0: float, error: str | None,
                resp: web.StreamResponse | None = None) -> None:
        elapsed = time.perf_counter() - t0
        key = (method, route, status)
        children = self._request_metrics.get(key)
        if children is None:  # label lookups are cached: they cost more than the increments
            children = (self.metrics.requests.labels(method, route, str(status)),
                        self.metrics.request_seconds.labels(route))
            self._request_metrics[key] = children
        children[0].inc()
        children[1].observe(elapsed)
        bytes_out = (resp.content_length or 0) if resp is not None and method != "HEAD" else 0
        self.access_log.write(rid, method, path.split("?")[0], route, params.get("name"), status, bytes_out,
                              request.get(BYTES_IN, 0), elapsed, request.get(CACHE_RESULT), error)

    # -- operator endpoints ------------------------------------------------------------------------------------
    async def operator_endpoint(self, reg: Registry, request: BaseRequest,
                                p: dict[str, str]) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/healthz":
            return web.json_response({"status": "ok", "uptime_seconds": round(time.time() - self.started, 1)})
        if path == "/readyz":
            ready, checks = self.readiness()
            return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                                     status=200 if ready else 503)
        if path == "/metrics":
            self.refresh_gauges()
            return web.Response(body=generate_latest(self.metrics.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})
        raise RegistryError("NAME_UNKNOWN", {"path": path[:200]}, message="no such endpoint")

    def readiness(self) -> tuple[bool, dict[str, object]]:
        checks: dict[str, object] = {"store_open": self.store.opened}
        try:
            probe = self.store.layout.uploads / ".readyz"
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
            checks["disk_writable"] = True
        except OSError as e:
            checks["disk_writable"] = f"no: {e.strerror}"
        ev = self.store.evictor
        free, floor = ev.free_bytes(), ev.min_free_bytes()
        checks["free_bytes"], checks["min_free_bytes"] = free, floor
        checks["space"] = True if free >= floor else f"no: {free} bytes free, below the {floor} floor"
        ready = all(checks[k] is True for k in ("store_open", "disk_writable", "space"))
        return ready, checks

    def refresh_gauges(self) -> None:
        c = self.store.index.counters
        m = self.metrics
        m.stored_bytes.set(c["stored_bytes"])
        m.disk_bytes.set(c["disk_bytes"])
        m.blobs.set(c["blobs"])
        m.manifests.set(c["manifests"])
        m.roots.set(c["roots"])
        m.budget_bytes.set(self.settings.max_size)
        st = os.statvfs(self.store.layout.root)
        m.free_bytes.set(st.f_bavail * st.f_frsize)
        m.upload_sessions.set(self.store.uploads.count)
        compression.refresh_gauges(self.store)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                access_log: logs.AccessLog | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT): open the store, listen, drain on the way out."""
    import signal

    try:
        ssl_context = startup_checks(settings)
        server = Server(settings, access_log=access_log)
    except AuthConfigError as e:
        raise SystemExit(f"cachesvc: {e}") from None
    await server.start()
    # Objects alive after start-up (modules, the app) never become garbage: freezing them keeps the cyclic
    # collector's full passes short, and a higher threshold makes them rare (a full pass over a big heap blocks
    # the event loop for tens of milliseconds).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # Background threads that run Python (eviction building its batches) hold the GIL for up to the switch
    # interval before a request waiting on the loop gets it back: 5 ms by default, half a millisecond here.
    sys.setswitchinterval(SWITCH_INTERVAL)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    low_level = web.Server(server.handle, access_log=None, read_bufsize=1 << 20, max_field_size=16384,
                           max_line_size=16384, keepalive_timeout=75)
    try:
        listener = await loop.create_server(low_level, settings.host or None, settings.port, backlog=1024,
                                            reuse_address=True, ssl=ssl_context)
    except OSError as e:
        await server.close()
        raise SystemExit(f"cachesvc: cannot listen on {settings.listen}: {e.strerror}") from None
    log.info("cachesvc serving on %s://%s (root %s; auth %s)", "https" if ssl_context else "http", settings.listen,
             server.store.layout.root, f"from {settings.auth_file}" if server.auth else "off")
    _notify_systemd(b"READY=1")
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: draining %d in-flight request(s)", server.inflight)
    _notify_systemd(b"STOPPING=1")
    listener.close()
    # aiohttp's own shutdown stops reading request bodies at once, so requests in flight (an upload half-way)
    # are drained here first, for a bounded time; responses meanwhile close their keep-alive connections.
    server.draining = True
    deadline = loop.time() + DRAIN_TIMEOUT
    while server.inflight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if server.inflight:
        log.warning("%d request(s) still in flight after %.0fs; closing them", server.inflight, DRAIN_TIMEOUT)
    await low_level.shutdown(timeout=1)
    await server.close()
    log.info("stopped")


def _notify_systemd(message: bytes) -> None:
    """sd_notify without a dependency: one datagram to $NOTIFY_SOCKET (Type=notify units)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    import socket

    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.sendall(message)
        except OSError as e:
            log.warning("could not notify systemd: %s", e)
