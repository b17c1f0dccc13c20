"""Eviction with a real client: buildah caches of several Dockerfiles into a budget that holds only some.

The most recently used cache still rebuilds fully from cachesvc; the evicted ones rebuild cold, without error.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.clients import Buildah
from tests.support.servers import Cachesvc

pytestmark = pytest.mark.e2e

PULLED = re.compile(r"^--> Cache pulled from remote \S+:([0-9a-f]{64})$", re.M)
PUSHED = re.compile(r"^--> Pushing cache \S+:([0-9a-f]{64})$", re.M)
LAYER_KIB = 600


def context(directory: Path, base: str, name: str) -> Path:
    """Three cacheable steps with ~600 KiB of incompressible content each Dockerfile."""
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(
        f"FROM {base}\n"
        f"RUN echo {name}-{uuid.uuid4().hex} > /id\n"
        f"RUN dd if=/dev/urandom of=/blob bs=1k count={LAYER_KIB} 2>/dev/null\n"
        "RUN sha256sum /blob > /blob.sum\n")
    return directory


def used_bytes(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_cachesvc/api/usage", timeout=10) as r:
        return int(json.load(r)["disk_bytes"])


def test_budget_keeps_the_most_recent_cache(tmp_path: Path, base_image: str, registry: Cachesvc,
                                            buildah: Buildah) -> None:
    if not isinstance(registry, Cachesvc):
        pytest.skip("eviction is cachesvc's own feature")
    base_bytes = used_bytes(registry.url)
    # Room for the pinned base image and about two of the three Dockerfiles' caches.
    budget = base_bytes + int(2.6 * LAYER_KIB * 1024)
    registry.extra_args = ["--max-size", str(budget), "--pin", "base/busybox:*", "--upload-grace", "1s"]
    registry.restart()

    refs = {}
    for name in ("a", "b", "c"):
        ctx = context(tmp_path / name, base_image, name)
        cache = f"{registry.host}/cache/{name}"
        out = buildah.build(ctx, f"localhost/evict/{name}", cache_to=cache, cache_from=cache).output
        assert len(PUSHED.findall(out)) == 3, out
        refs[name] = (ctx, cache)
        buildah.wipe()
    assert used_bytes(registry.url) <= budget

    ctx, cache = refs["c"]
    warm = buildah.build(ctx, "localhost/evict/c", cache_to=cache, cache_from=cache).output
    assert len(PULLED.findall(warm)) == 3, warm  # the most recently used cache is whole
    buildah.wipe()

    ctx, cache = refs["a"]
    cold = buildah.build(ctx, "localhost/evict/a", cache_to=cache, cache_from=cache)
    assert cold.returncode == 0
    assert len(PULLED.findall(cold.output)) < 3, cold.output  # evicted: rebuilt (at least partly) cold
    assert "error" not in cold.output.lower()
    log = registry.log_text()
    assert " 500 " not in log and "Traceback" not in log
    assert "evicted cache/a@" in log
