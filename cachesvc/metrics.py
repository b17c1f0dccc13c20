"""Prometheus metric families, all in one place so names and labels stay consistent.

Each server process gets its own :class:`Metrics` (its own registry), which keeps tests that start several
stores in one process independent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The metric families cachesvc exports on ``/metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cachesvc_http_requests_total", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("cachesvc_http_request_duration_seconds", "Request duration by route",
                                         ["route"], buckets=DURATION_BUCKETS, registry=r)
        self.lookups = Counter("cachesvc_lookups_total", "Blob and manifest lookups by kind and result",
                               ["kind", "result"], registry=r)
        self.bytes_served = Counter("cachesvc_served_bytes_total", "Bytes of blobs and manifests sent",
                                    registry=r)
        self.bytes_received = Counter("cachesvc_received_bytes_total", "Bytes of blobs and manifests received",
                                      registry=r)
        self.stored_bytes = Gauge("cachesvc_stored_bytes", "Bytes of blobs and manifests stored", registry=r)
        self.disk_bytes = Gauge("cachesvc_stored_disk_bytes", "Bytes the stored content takes on disk",
                                registry=r)
        self.blobs = Gauge("cachesvc_blobs", "Blobs stored", registry=r)
        self.manifests = Gauge("cachesvc_manifests", "Manifests stored", registry=r)
        self.roots = Gauge("cachesvc_roots", "Roots (tagged or unreferenced manifests), the unit of eviction",
                           registry=r)
        self.budget_bytes = Gauge("cachesvc_budget_bytes", "Configured --max-size (0: none)", registry=r)
        self.free_bytes = Gauge("cachesvc_filesystem_free_bytes", "Free bytes on the filesystem under --root",
                                registry=r)
        self.upload_sessions = Gauge("cachesvc_upload_sessions", "Upload sessions open", registry=r)
        self.evictions = Counter("cachesvc_evictions_total", "Roots evicted, by reason", ["reason"], registry=r)
        self.evicted_bytes = Counter("cachesvc_evicted_bytes_total", "Bytes freed by eviction, by reason",
                                     ["reason"], registry=r)
        self.lost_blobs = Counter("cachesvc_lost_blobs_total",
                                  "Blobs found missing or corrupt on disk (their manifests were dropped)",
                                  registry=r)
        self.oversized_cache = Counter(
            "cachesvc_buildkit_oversized_cache_total",
            "Cache manifests or cache configs over BuildKit's 1 MiB import limit (accepted, but BuildKit will "
            "build cold)", ["kind"], registry=r)
