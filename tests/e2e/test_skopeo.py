"""skopeo moves the busybox image in and out of the registry; every blob must come back byte-identical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.clients import ContainersConfig, RequestLog, skopeo_copy, skopeo_inspect_raw
from tests.support.images import OciImage, layout_blobs
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e


def test_skopeo_round_trip_is_byte_identical(tmp_path: Path, registry: ServerProcess, busybox_image: OciImage,
                                             base_image: str, containers_config: ContainersConfig,
                                             request_log: RequestLog) -> None:
    source = layout_blobs(busybox_image.layout)
    manifest_bytes = source[busybox_image.manifest.digest]

    # The registry must survive a restart with the pushed image intact (cachesvc persists to disk).
    registry.restart()
    mark = request_log.mark()

    # The manifest as served is the exact bytes pushed (a re-serialized manifest would change the digest).
    served = skopeo_inspect_raw(f"docker://{base_image}", config=containers_config)
    assert served == manifest_bytes
    assert "sha256:" + hashlib.sha256(served).hexdigest() == busybox_image.manifest.digest

    # registry -> OCI layout: every blob (manifest, config, layer) identical, and nothing extra.
    out_layout = tmp_path / "out-oci"
    skopeo_copy(f"docker://{base_image}", f"oci:{out_layout}:copied", config=containers_config)
    copied = layout_blobs(out_layout)
    assert set(copied) == set(source)
    for digest, data in source.items():
        assert copied[digest] == data, f"blob {digest} differs after the round trip"
    index = json.loads((out_layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [busybox_image.manifest.digest]

    # registry (by digest) -> dir: the other on-disk format skopeo writes; manifest.json holds the manifest.
    by_digest = base_image.rsplit(":", 1)[0] + "@" + busybox_image.manifest.digest
    out_dir = tmp_path / "out-dir"
    skopeo_copy(f"docker://{by_digest}", f"dir:{out_dir}", config=containers_config)
    assert (out_dir / "manifest.json").read_bytes() == manifest_bytes
    dir_blobs = layout_blobs(out_dir)
    for desc in (busybox_image.config, *busybox_image.layers):
        assert dir_blobs[desc.digest] == source[desc.digest]

    # registry -> registry into another repository (skopeo may mount the blobs across repositories).
    mirror = base_image.replace("/base/busybox:latest", "/mirror/busybox:copy")
    skopeo_copy(f"docker://{base_image}", f"docker://{mirror}", config=containers_config)
    assert skopeo_inspect_raw(f"docker://{mirror}", config=containers_config) == manifest_bytes

    # Server side: it served the manifest and the layer blob after the restart.
    request_log.expect(mark, "GET", "/v2/base/busybox/manifests/")
    layer = busybox_image.layers[0].digest
    request_log.expect(mark, "GET", f"/v2/base/busybox/blobs/{layer}")
    request_log.expect(mark, "PUT", "/v2/mirror/busybox/manifests/copy")
