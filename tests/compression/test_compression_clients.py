"""Real clients push uncompressed layers into cachesvc, cachesvc compresses them at rest, and the clients get
identical bytes back: skopeo copying an OCI layout whose layers are plain tar (and pulling it back after a
restart), and a buildah build with ``--disable-compression`` exporting its cache and rebuilding from it."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compression.layers import text_tar
from tests.support.clients import Buildah, ContainersConfig, skopeo_copy
from tests.support.images import (
    EPOCH_ISO,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    busybox_rootfs_tar,
    canonical_json,
    layout_blobs,
    oci_arch,
    sha256_digest,
    write_build_context,
)
from tests.support.servers import Cachesvc
from tests.support.skips import need

pytestmark = pytest.mark.e2e

PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Cachesvc]:
    server = Cachesvc(tmp_path / "registry")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def usage(registry: Cachesvc) -> dict:
    with urllib.request.urlopen(f"{registry.url}/_cachesvc/api/usage", timeout=30) as r:
        return json.loads(r.read())


def wait_compressed(registry: Cachesvc, at_least: int, timeout: float = 60) -> dict:
    """Wait for the background worker (it starts once uploads have been quiet for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        u = usage(registry)
        c = u["compression"]
        if c["queued"] == 0 and c["compressed_blobs"] >= at_least:
            return u
        assert time.monotonic() < deadline, u
        time.sleep(0.2)


def write_plain_layout(layout: Path, layers: list[bytes], tag: str = "latest") -> dict[str, str]:
    """An OCI image layout whose layers are plain (uncompressed) tar, as ``compression=uncompressed`` makes."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256_digest(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    descs = [{"mediaType": PLAIN_LAYER, "digest": put(x), "size": len(x)} for x in layers]
    config = canonical_json({
        "architecture": oci_arch(), "os": "linux", "created": EPOCH_ISO,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},  # plain: diff id = digest
        "history": [{"created": EPOCH_ISO, "created_by": f"cachesvc tests: plain layer {i}"}
                    for i in range(len(descs))],
    })
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                               "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": put(config), "size": len(config)},
                               "layers": descs})
    mdigest = put(manifest)
    (layout / "index.json").write_bytes(canonical_json({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
        "manifests": [{"mediaType": MEDIA_OCI_MANIFEST, "digest": mdigest, "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return {"manifest": mdigest, **{f"layer{i}": d["digest"] for i, d in enumerate(descs)}}


def test_skopeo_plain_tar_layers_round_trip_identical(tmp_path: Path, registry: Cachesvc) -> None:
    need("skopeo")
    need("busybox")
    config = ContainersConfig(tmp_path / "containers", insecure_hosts=[registry.host])
    layers = [busybox_rootfs_tar(), text_tar(77, 3 * 1024 * 1024)]
    layout = tmp_path / "src"
    digests = write_plain_layout(layout, layers)
    source = layout_blobs(layout)
    ref = f"docker://{registry.host}/plain/app:v1"
    skopeo_copy(f"oci:{layout}:latest", ref, config=config)

    u = wait_compressed(registry, at_least=3)  # both layers and the config
    assert u["saved_bytes"] > 0.4 * sum(len(x) for x in layers)
    files = {p.name for p in (registry.root / "blobs").rglob("*") if p.is_file()}
    for key in ("layer0", "layer1"):
        assert digests[key][7:] + ".zst" in files and digests[key][7:] not in files

    registry.restart()
    out = tmp_path / "out"
    skopeo_copy(ref, f"oci:{out}:copied", config=config)
    copied = layout_blobs(out)
    assert set(copied) == set(source)
    for digest, data in source.items():
        assert copied[digest] == data, f"{digest} differs after the round trip"
    # and by digest into a dir: transport
    out_dir = tmp_path / "dir"
    skopeo_copy(f"docker://{registry.host}/plain/app@{digests['manifest']}", f"dir:{out_dir}", config=config)
    assert layout_blobs(out_dir)[digests["layer1"]] == layers[1]


def test_buildah_builds_from_plain_layers_and_rebuilds_warm(tmp_path: Path, registry: Cachesvc) -> None:
    """buildah pulls a base image whose layers are plain tar, stored compressed at rest, exports its layer cache,
    and after a wipe and a server restart rebuilds from it: every pulled byte is checked by buildah against its
    digest, and the same image id proves every layer came back identical.

    (buildah 1.28 itself cannot push uncompressed layers to a registry: ``--disable-compression`` only governs
    its local storage and blob cache, and ``--cache-to`` exports gzip; those gzip layers are left alone here.)"""
    need("buildah")
    need("skopeo")
    need("busybox")
    if os.geteuid() != 0:
        pytest.skip("buildah (vfs + chroot isolation) needs root")
    config = ContainersConfig(tmp_path / "containers", insecure_hosts=[registry.host])
    base_layout = tmp_path / "base"
    base_digests = write_plain_layout(base_layout, [busybox_rootfs_tar(), text_tar(78, 2 * 1024 * 1024)])
    base = f"{registry.host}/base/busybox:plain"
    skopeo_copy(f"oci:{base_layout}:latest", f"docker://{base}", config=config)
    wait_compressed(registry, at_least=2)
    files = {p.name for p in (registry.root / "blobs").rglob("*") if p.is_file()}
    assert {base_digests["layer0"][7:] + ".zst", base_digests["layer1"][7:] + ".zst"} <= files

    ctx = write_build_context(tmp_path / "ctx", base, uuid.uuid4().hex)
    cache = f"{registry.host}/cache/buildah"
    buildah = Buildah(tmp_path / "buildah", insecure_hosts=[registry.host])
    try:
        first = buildah.build(ctx.path, "localhost/e2e/plain:1", cache_to=cache, cache_from=cache,
                              extra_args=["--disable-compression"])
        keys = [line.rsplit(":", 1)[-1] for line in first.output.splitlines()
                if line.startswith("--> Pushing cache")]
        assert len(keys) == ctx.cacheable_steps, first.output
        image_id = first.output.strip().splitlines()[-1]
        wait_compressed(registry, at_least=2)
        with urllib.request.urlopen(f"{registry.url}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        assert 'cachesvc_compression_results_total{result="already_compressed"}' in metrics  # buildah's gzip

        buildah.wipe()
        registry.restart()
        second = buildah.build(ctx.path, "localhost/e2e/plain:1", cache_to=cache, cache_from=cache,
                               extra_args=["--disable-compression"])
        pulled = [line.rsplit(":", 1)[-1] for line in second.output.splitlines()
                  if line.startswith("--> Cache pulled from remote")]
        assert pulled == keys, second.output
        assert "Pushing cache" not in second.output
        assert second.output.strip().splitlines()[-1] == image_id  # every layer reused, identical
    finally:
        buildah.wipe()
