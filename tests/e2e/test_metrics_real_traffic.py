"""/metrics after real client traffic: the counters move by exactly what the clients did."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.clients import Buildah, ContainersConfig, RequestLog, skopeo_copy
from tests.support.images import OciImage, write_build_context
from tests.support.servers import Cachesvc, ServerProcess

pytestmark = pytest.mark.e2e

PULLED = re.compile(r"^--> Cache pulled from remote \S+:([0-9a-f]{64})$", re.M)


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_skopeo_pull_moves_hit_counters_and_bytes(tmp_path: Path, registry: ServerProcess, busybox_image: OciImage,
                                                   containers_config: ContainersConfig) -> None:
    if not isinstance(registry, Cachesvc):
        pytest.skip("cachesvc's own metrics")
    dest = f"docker://{registry.host}/metrics/busybox:latest"
    before_push = scrape(registry.url)
    skopeo_copy(f"oci:{busybox_image.layout}:latest", dest, config=containers_config)
    after_push = scrape(registry.url)
    blobs = busybox_image.all_digests()
    blob_sizes = sum(len(busybox_image.blob_path(d).read_bytes()) for d in blobs)
    # The push checked every blob first (misses) and received every byte.
    assert delta(before_push, after_push, 'cachesvc_lookups_total{kind="blob",result="miss"}') >= len(blobs) - 1
    assert delta(before_push, after_push, "cachesvc_received_bytes_total") >= blob_sizes
    assert after_push["cachesvc_blobs"] == len(blobs) - 1  # the manifest is not a blob here
    skopeo_copy(dest, f"oci:{tmp_path / 'out'}:latest", config=containers_config)
    after_pull = scrape(registry.url)
    layer_and_config = len(blobs) - 1
    assert delta(after_push, after_pull, 'cachesvc_lookups_total{kind="blob",result="hit"}') == layer_and_config
    assert delta(after_push, after_pull, 'cachesvc_lookups_total{kind="manifest",result="hit"}') >= 1
    assert delta(after_push, after_pull, "cachesvc_served_bytes_total") >= blob_sizes - 2000
    assert after_pull['cachesvc_repository_lookups_total{repository="metrics/busybox",result="hit"}'] >= 2
    assert 0 < after_pull['cachesvc_repository_hit_ratio{repository="metrics/busybox"}'] < 1


def test_warm_rebuild_counts_one_hit_per_reused_layer(tmp_path: Path, registry: ServerProcess, base_image: str,
                                                      buildah: Buildah, request_log: RequestLog) -> None:
    if not isinstance(registry, Cachesvc):
        pytest.skip("cachesvc's own metrics")
    ctx = write_build_context(tmp_path / "ctx", base_image, uuid.uuid4().hex)
    cache = f"{registry.host}/cache/metrics"
    buildah.build(ctx.path, "localhost/metrics:1", cache_to=cache, cache_from=cache)
    buildah.wipe()
    before = scrape(registry.url)
    mark = request_log.mark()
    warm = buildah.build(ctx.path, "localhost/metrics:1", cache_to=cache, cache_from=cache)
    after = scrape(registry.url)
    reused = len(PULLED.findall(warm.output))
    assert reused == ctx.cacheable_steps
    blob_reads = [r for r in request_log.since(mark) if r.method in ("GET", "HEAD") and "/blobs/sha256:" in r.path
                  and r.status == 200]
    cache_layer_gets = [r for r in blob_reads if r.method == "GET" and "/cache/metrics/" in r.path]
    hits = delta(before, after, 'cachesvc_lookups_total{kind="blob",result="hit"}')
    # Each reused step fetched its layer (and the image config) from the cache repository; the counter moved by
    # exactly the blob reads the server answered (those and the base image's).
    assert len(cache_layer_gets) >= reused
    assert hits == len(blob_reads)
    usage = json.loads(urllib.request.urlopen(f"{registry.url}/_cachesvc/api/usage", timeout=10).read())
    assert after["cachesvc_stored_bytes"] == usage["stored_bytes"]
