"""Two builders, one shared tier, a real build client: builder A exports a build's cache; builder B, a fresh
cachesvc with an empty root on the same shared tier, serves a warm rebuild with every step cached while A is
stopped, so B can only have drawn on the shared tier."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.helpers import ObjectStoreUnderTest, builder, metrics, remote_status, wait_drained
from tests.support.clients import (
    Buildah,
    ContainersConfig,
    DockerDaemon,
    RequestLog,
    oras_tags,
    parse_plain_progress,
)
from tests.support.images import OciImage, build_busybox_layout, push_layout, write_build_context
from tests.support.servers import free_port
from tests.support.skips import need

pytestmark = pytest.mark.e2e

PUSHED = re.compile(r"^--> Pushing cache (\S+):([0-9a-f]{64})$", re.M)
PULLED = re.compile(r"^--> Cache pulled from remote (\S+):([0-9a-f]{64})$", re.M)
USING = re.compile(r"^--> Using cache ([0-9a-f]{64})$", re.M)
IMAGE_ID = re.compile(r"^([0-9a-f]{64})$", re.M)


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    need("busybox", "skopeo", "buildah")
    return build_busybox_layout(tmp_path_factory.mktemp("busybox") / "layout")


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    b = Buildah(tmp_path / "buildah")
    yield b
    b.wipe()


def test_fresh_builder_rebuilds_warm_from_the_shared_tier(tmp_path: Path, object_store: ObjectStoreUnderTest,
                                                         remote_url: str, busybox: OciImage,
                                                         buildah: Buildah) -> None:
    a = builder(tmp_path / "a-root", object_store, remote_url).start()
    b = builder(tmp_path / "b-root", object_store, remote_url, port=free_port())
    buildah.config = ContainersConfig(tmp_path / "buildah" / "conf", insecure_hosts=[a.host, b.host])
    try:
        base = push_layout(busybox, a.url, "base/busybox:latest",
                           config=ContainersConfig(tmp_path / "skopeo", insecure_hosts=[a.host]))
        nonce = uuid.uuid4().hex
        ctx = write_build_context(tmp_path / "ctx-a", base, nonce)
        cache = f"{a.host}/cache/buildah"

        first = buildah.build(ctx.path, "localhost/e2e/shared:1", cache_to=cache, cache_from=cache)
        assert USING.findall(first.output) == []
        keys = [key for _, key in PUSHED.findall(first.output)]
        assert len(keys) == ctx.cacheable_steps, first.output
        first_id = IMAGE_ID.findall(first.output)[-1]
        status = wait_drained(a)
        assert status["queue"]["uploaded"] > 0
        a.stop()  # builder A is gone from here on: B has nothing but the shared tier to draw on
        assert a.proc is None

        buildah.wipe()
        assert buildah.images() == []
        b.start()
        assert not list((tmp_path / "b-root" / "blobs").rglob("*[0-9a-f]")), "B must start with an empty root"
        assert remote_status(b)["queue"]["depth"] == 0
        log = RequestLog(b)
        mark = log.mark()

        # The same build on builder B: its own address in FROM and in the cache references.
        ctx = write_build_context(tmp_path / "ctx-b", base.replace(a.host, b.host), nonce)
        cache = f"{b.host}/cache/buildah"
        second = buildah.build(ctx.path, "localhost/e2e/shared:1", cache_to=cache, cache_from=cache)
        pulled = [key for _, key in PULLED.findall(second.output)]
        assert pulled == keys, second.output
        assert len(USING.findall(second.output)) == ctx.cacheable_steps, second.output
        assert "Pushing cache" not in second.output
        assert IMAGE_ID.findall(second.output)[-1] == first_id  # every layer reused, none rebuilt

        # Server side: B answered from the shared tier (manifests and blobs), never a local store it did not have.
        m = metrics(b)
        assert m.get('cachesvc_tier_lookups_total{kind="manifest",tier="shared"}', 0) >= len(keys)
        assert m.get('cachesvc_tier_lookups_total{kind="blob",tier="shared"}', 0) >= 1
        assert m.get('cachesvc_remote_bytes_total{direction="down"}', 0) > 0
        for key in keys:
            log.expect(mark, "GET", f"/v2/cache/buildah/manifests/{key}")
        deadline = time.monotonic() + 30
        while sorted(oras_tags(b.url, "cache/buildah")) != sorted(keys):  # B makes them local in the background
            assert time.monotonic() < deadline, oras_tags(b.url, "cache/buildah")
            time.sleep(0.2)
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def docker_daemon() -> Iterator[DockerDaemon]:
    need("dockerd", "docker", "busybox", "skopeo")
    drivers = os.environ.get("E2E_DOCKER_STORAGE_DRIVER", "overlay2,vfs").split(",")
    with DockerDaemon(storage_drivers=[d.strip() for d in drivers if d.strip()]) as daemon:
        yield daemon


def test_docker_buildkit_rebuilds_warm_from_the_shared_tier(tmp_path: Path, object_store: ObjectStoreUnderTest,
                                                           remote_url: str, busybox: OciImage,
                                                           docker_daemon: DockerDaemon) -> None:
    """The same with dockerd's BuildKit and inline cache: A pushes the image, B serves the cache import."""
    docker = docker_daemon
    docker.prune_all()
    a = builder(tmp_path / "a-root", object_store, remote_url).start()
    b = builder(tmp_path / "b-root", object_store, remote_url, port=free_port())
    try:
        base = push_layout(busybox, a.url, "base/busybox:latest",
                           config=ContainersConfig(tmp_path / "skopeo", insecure_hosts=[a.host]))
        nonce = uuid.uuid4().hex
        ctx = write_build_context(tmp_path / "ctx-a", base, nonce)
        ref = f"{a.host}/app/e2e:inline"
        first = docker.build(ctx.path, ref, build_args={"BUILDKIT_INLINE_CACHE": "1"})
        steps = [s for s in parse_plain_progress(first.output) if s.instruction in ("RUN", "COPY")]
        assert len(steps) == ctx.cacheable_steps and not any(s.cached for s in steps)
        docker.push(ref)
        wait_drained(a)
        a.stop()
        docker.prune_all()
        assert docker.images() == [] and docker.build_cache_entries() == 0

        b.start()
        ctx = write_build_context(tmp_path / "ctx-b", base.replace(a.host, b.host), nonce)
        ref = f"{b.host}/app/e2e:inline"
        second = docker.build(ctx.path, ref, cache_from=[ref], build_args={"BUILDKIT_INLINE_CACHE": "1"})
        assert f"importing cache manifest from {ref}" in second.output, second.output
        steps = [s for s in parse_plain_progress(second.output) if s.instruction in ("RUN", "COPY")]
        assert len(steps) == ctx.cacheable_steps
        assert [s.text for s in steps if not s.cached] == [], second.output
        m = metrics(b)
        assert m.get('cachesvc_tier_lookups_total{kind="manifest",tier="shared"}', 0) >= 1
    finally:
        a.stop()
        b.stop()
        docker.prune_all()
