"""buildah exports its layer cache to the registry, forgets everything locally, and rebuilds from it."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.support.clients import Buildah, RequestLog, oras_tags
from tests.support.images import write_build_context
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

# What buildah 1.28 prints per step (see tests/e2e/README.md).
PUSHED = re.compile(r"^--> Pushing cache (\S+):([0-9a-f]{64})$", re.M)
PULLED = re.compile(r"^--> Cache pulled from remote (\S+):([0-9a-f]{64})$", re.M)
USING = re.compile(r"^--> Using cache ([0-9a-f]{64})$", re.M)
IMAGE_ID = re.compile(r"^([0-9a-f]{64})$", re.M)


def test_buildah_rebuild_from_registry_cache(tmp_path: Path, registry: ServerProcess, base_image: str,
                                             buildah: Buildah, request_log: RequestLog) -> None:
    ctx = write_build_context(tmp_path / "ctx", base_image, uuid.uuid4().hex)
    cache_repo = f"{registry.host}/cache/buildah"

    first = buildah.build(ctx.path, "localhost/e2e/buildah:1", cache_to=cache_repo, cache_from=cache_repo)
    assert USING.findall(first.output) == [], "a fresh registry and fresh storage cannot have cache hits"
    pushed = PUSHED.findall(first.output)
    assert [repo for repo, _ in pushed] == [cache_repo] * ctx.cacheable_steps, first.output
    keys = [key for _, key in pushed]
    first_id = IMAGE_ID.findall(first.output)[-1]
    assert sorted(oras_tags(registry.url, "cache/buildah")) == sorted(keys)

    buildah.wipe()
    assert buildah.images() == []
    registry.restart()  # the cache must outlive a server restart
    mark = request_log.mark()

    second = buildah.build(ctx.path, "localhost/e2e/buildah:1", cache_to=cache_repo, cache_from=cache_repo)
    pulled = PULLED.findall(second.output)
    assert [key for _, key in pulled] == keys, second.output
    assert len(USING.findall(second.output)) == ctx.cacheable_steps, second.output
    assert "Pushing cache" not in second.output
    # The /dev/urandom layer makes any re-executed step change the id: equality proves every layer was reused.
    assert IMAGE_ID.findall(second.output)[-1] == first_id

    # Server side: the rebuild fetched every cache manifest by key (after the restart).
    for key in keys:
        request_log.expect(mark, "GET", f"/v2/cache/buildah/manifests/{key}")
    request_log.expect(mark, "GET", "/v2/cache/buildah/blobs/sha256:")
