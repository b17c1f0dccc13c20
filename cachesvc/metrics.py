"""Prometheus metric families, all in one place so names and labels stay consistent.

Each server process gets its own :class:`Metrics` (its own registry), which keeps tests that start several
stores in one process independent.
"""

from __future__ import annotations

from typing import Any

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
        # Compression at rest (cachesvc/store/compression.py); the gauges are refreshed on each scrape.
        self.compression_results = Counter("cachesvc_compression_results_total",
                                           "Blobs examined for compression at rest, by outcome (compressed, "
                                           "already_compressed, small, incompressible, no_gain, failed, corrupt, "
                                           "gone)", ["result"], registry=r)
        self.compression_input_bytes = Counter("cachesvc_compression_input_bytes_total",
                                               "Bytes of blobs compressed at rest (their size before)", registry=r)
        self.compression_seconds = Counter("cachesvc_compression_seconds_total",
                                           "Time spent examining, compressing and verifying blobs at rest",
                                           registry=r)
        self.compression_queue = Gauge("cachesvc_compression_queue", "Blobs waiting for compression at rest",
                                       registry=r)
        self.compressed_blobs = Gauge("cachesvc_compressed_blobs", "Blobs stored compressed at rest", registry=r)
        self.compression_saved_bytes = Gauge("cachesvc_compression_saved_bytes",
                                             "Bytes compression at rest saves: logical minus on-disk bytes",
                                             registry=r)
        self.repository_bytes = Gauge("cachesvc_repository_bytes",
                                      "The 20 largest repositories: logical bytes (kind=logical), bytes on disk "
                                      "(disk) and bytes saved by compression at rest (saved)",
                                      ["repository", "kind"], registry=r)
        self.decompressed_bytes = Counter("cachesvc_decompressed_served_bytes_total",
                                          "Bytes served from blobs compressed at rest (decompressed)", registry=r)
        # Shared tier (cachesvc/remote). Per tier: tier=local|shared|miss; queue gauges are read on each scrape.
        self.tier_lookups = Counter("cachesvc_tier_lookups_total",
                                    "Blob and manifest lookups by where they were answered: local (this disk), "
                                    "shared (the object store behind --remote) or miss", ["kind", "tier"],
                                    registry=r)
        self._lookup_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.remote_queue_depth = Gauge("cachesvc_remote_queue_depth",
                                        "Write-behind entries waiting for upload to the shared tier", registry=r)
        self.remote_queue_lag = Gauge("cachesvc_remote_queue_lag_seconds",
                                      "How long the oldest write-behind entry has waited (0: queue empty)",
                                      registry=r)
        self.remote_bytes = Counter("cachesvc_remote_bytes_total",
                                    "Bytes moved to (up) and from (down) the shared tier", ["direction"],
                                    registry=r)
        self.remote_uploads = Counter("cachesvc_remote_uploads_total",
                                      "Write-behind entries by kind and outcome (ok, retry, dropped, superseded)",
                                      ["kind", "result"], registry=r)
        self.remote_fetches = Counter("cachesvc_remote_fetches_total",
                                      "Reads from the shared tier on local misses, by kind and outcome (ok, "
                                      "missing, incomplete, corrupt, unavailable)", ["kind", "result"], registry=r)

    def lookup(self, kind: str, result: str, tier: str) -> None:
        """Count a blob or manifest lookup by result and by tier (label children cached: this runs on every
        HEAD and GET, and ``labels()`` costs more than the increment)."""
        children = self._lookup_children.get((kind, result, tier))
        if children is None:
            children = self._lookup_children[(kind, result, tier)] = (
                self.lookups.labels(kind, result), self.tier_lookups.labels(kind, tier))
        children[0].inc()
        children[1].inc()


class TrafficCollector:
    """Per-repository lookups and hit ratio from the traffic table, with bounded cardinality: the TOP_N busiest
    repositories get their own label, every other repository is summed under ``repository="other"``."""

    TOP_N = 20

    def __init__(self, traffic: Any) -> None:
        self.traffic = traffic

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lookups = CounterMetricFamily("cachesvc_repository_lookups", "Blob and manifest lookups per repository "
                                      f"(top {self.TOP_N} by traffic, the rest as other)",
                                      labels=["repository", "result"])
        ratio = GaugeMetricFamily("cachesvc_repository_hit_ratio", "Hits over lookups since start per repository "
                                  f"(top {self.TOP_N} by traffic, the rest as other)", labels=["repository"])
        top = self.traffic.top(self.TOP_N)
        other_hits = self.traffic.total.hits - sum(c.hits for _, c in top)
        other_misses = self.traffic.total.misses - sum(c.misses for _, c in top)
        rows = [(r, c.hits, c.misses) for r, c in top] + [("other", other_hits, other_misses)]
        for repo, hits, misses in rows:
            lookups.add_metric([repo, "hit"], hits)
            lookups.add_metric([repo, "miss"], misses)
            if hits + misses:
                ratio.add_metric([repo], hits / (hits + misses))
        yield lookups
        yield ratio
        total, _ = self.traffic.last_hour()
        hour = GaugeMetricFamily("cachesvc_hit_ratio_last_hour", "Hits over lookups in the last 60 minutes")
        if total.lookups:
            hour.add_metric([], total.hits / total.lookups)
        yield hour

    def describe(self) -> Any:
        return []
