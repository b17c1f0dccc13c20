"""Fixtures for the end-to-end suite: the registry under test, a base image in it, and real clients.

`E2E_REGISTRY` picks the server: `distribution` (CNCF distribution, the reference the harness was proven
against; default until cachesvc serves) or `cachesvc`. Every test gets a fresh server with an empty root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `tests.support` is not installed; pytest's rootdir is not on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.clients import (  # noqa: E402
    Buildah,
    ContainersConfig,
    DockerDaemon,
    RequestLog,
)
from tests.support.images import OciImage, build_busybox_layout, push_layout  # noqa: E402
from tests.support.servers import DISTRIBUTION_BIN, Cachesvc, Distribution, ServerProcess  # noqa: E402
from tests.support.skips import need  # noqa: E402

REGISTRY_KINDS = ("distribution", "cachesvc")
DEFAULT_REGISTRY = "cachesvc"


def registry_kind() -> str:
    kind = os.environ.get("E2E_REGISTRY", DEFAULT_REGISTRY).strip().lower()
    if kind not in REGISTRY_KINDS:
        raise pytest.UsageError(f"E2E_REGISTRY must be one of {', '.join(REGISTRY_KINDS)}, got {kind!r}")
    return kind


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mounts, chroot, namespaces)")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ServerProcess]:
    """A started registry (kind from E2E_REGISTRY) on a free loopback port, data under tmp_path."""
    kind = registry_kind()
    if kind == "distribution":
        if not os.access(DISTRIBUTION_BIN, os.X_OK):
            pytest.skip(f"{DISTRIBUTION_BIN} not found: apt-get install docker-registry")
        # distribution config is overridable by env; its access log is what RequestLog reads
        server: ServerProcess = Distribution(tmp_path / "registry",
                                             env={"REGISTRY_LOG_ACCESSLOG_DISABLED": "false"})
    else:
        server = Cachesvc(tmp_path / "registry")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """The busybox-static base image as an OCI layout, written once per session."""
    need("busybox")
    return build_busybox_layout(tmp_path_factory.mktemp("busybox") / "layout")


@pytest.fixture
def containers_config(tmp_path: Path, registry: ServerProcess) -> ContainersConfig:
    """Private policy/registries/auth files for skopeo (and anything else using containers/image)."""
    return ContainersConfig(tmp_path / "containers", insecure_hosts=[registry.host])


@pytest.fixture
def base_image(registry: ServerProcess, busybox_image: OciImage, containers_config: ContainersConfig) -> str:
    """`127.0.0.1:PORT/base/busybox:latest`, pushed into this test's registry: what Dockerfiles build FROM."""
    need("skopeo")
    return push_layout(busybox_image, registry.url, "base/busybox:latest", config=containers_config)


@pytest.fixture
def buildah(tmp_path: Path, registry: ServerProcess) -> Iterator[Buildah]:
    need("buildah")
    need_root("buildah (vfs + chroot isolation)")
    b = Buildah(tmp_path / "buildah", insecure_hosts=[registry.host])
    try:
        yield b
    finally:
        b.wipe()


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """One private dockerd for the whole session (start ~1-2 s); tests prune it before use."""
    need("dockerd", "docker")
    need_root("dockerd")
    # overlay2 first; vfs works anywhere (e.g. when the temp dir itself is on overlayfs) but copies layers
    drivers = os.environ.get("E2E_DOCKER_STORAGE_DRIVER", "overlay2,vfs").split(",")
    with DockerDaemon(storage_drivers=[d.strip() for d in drivers if d.strip()]) as daemon:
        yield daemon


@pytest.fixture
def docker(docker_daemon: DockerDaemon) -> Iterator[DockerDaemon]:
    """The session dockerd with no images and no build cache, before and after the test."""
    docker_daemon.prune_all()
    yield docker_daemon
    docker_daemon.prune_all()


# ------------------------------------------------------------------------------------------------------------
# Hook: what the server says it served (parser: tests/support/clients.py parse_request_log).


@pytest.fixture
def request_log(registry: ServerProcess) -> RequestLog:
    """Hook for asserting on the server side of a test (see parse_request_log for the formats read)."""
    return RequestLog(registry)
