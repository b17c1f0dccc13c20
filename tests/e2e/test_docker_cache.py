"""dockerd's BuildKit pushes an image with inline cache, prunes everything, rebuilds every step from it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.clients import DockerDaemon, RequestLog, parse_plain_progress
from tests.support.images import write_build_context
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e


def _cacheable(output: str) -> list:
    return [s for s in parse_plain_progress(output) if s.instruction in ("RUN", "COPY", "ADD")]


def test_docker_inline_cache_rebuild(tmp_path: Path, registry: ServerProcess, base_image: str,
                                     docker: DockerDaemon, request_log: RequestLog) -> None:
    ctx = write_build_context(tmp_path / "ctx", base_image, uuid.uuid4().hex)
    ref = f"{registry.host}/app/e2e:inline"

    first = docker.build(ctx.path, ref, build_args={"BUILDKIT_INLINE_CACHE": "1"})
    steps = _cacheable(first.output)
    assert len(steps) == ctx.cacheable_steps, first.output
    assert not any(s.cached for s in steps), "nothing can be cached on a pruned daemon with a fresh nonce"
    first_id = docker.docker("image", "inspect", "-f", "{{.Id}}", ref).output.strip()
    docker.push(ref)

    docker.prune_all()
    assert docker.images() == []
    assert docker.build_cache_entries() == 0
    registry.restart()  # the cache must outlive a server restart
    mark = request_log.mark()

    second = docker.build(ctx.path, ref, cache_from=[ref], build_args={"BUILDKIT_INLINE_CACHE": "1"})
    assert f"importing cache manifest from {ref}" in second.output, second.output
    steps = _cacheable(second.output)
    assert len(steps) == ctx.cacheable_steps, second.output
    not_cached = [s.text for s in steps if not s.cached]
    assert not_cached == [], f"steps rebuilt instead of CACHED: {not_cached}\n{second.output}"
    # The /dev/urandom layer makes any re-executed step change the id: equality proves every layer was reused.
    assert docker.docker("image", "inspect", "-f", "{{.Id}}", ref).output.strip() == first_id

    # Server side (after the restart): BuildKit resolves the tag (HEAD), then fetches by digest.
    request_log.expect(mark, "HEAD|GET", "/v2/app/e2e/manifests/inline")
    request_log.expect(mark, "GET", "/v2/app/e2e/manifests/sha256:")
    request_log.expect(mark, "GET", "/v2/app/e2e/blobs/sha256:")
