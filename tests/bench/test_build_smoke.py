"""The build benchmark's smoke profile end to end (~1 minute, dockerd + registries): opt-in with
``BENCH_BUILD_SMOKE=1`` because it needs root, network namespaces and Docker, and keeps both cores busy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks import build_bench

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(os.environ.get("BENCH_BUILD_SMOKE") != "1", reason="set BENCH_BUILD_SMOKE=1 to run")
@pytest.mark.parametrize("engine", ["docker", "buildah"])
def test_smoke_profile_verifies_every_build(tmp_path: Path, engine: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", "tc", "nsenter", "zstd", "skopeo", "docker-registry", "busybox",
                 "dockerd" if engine == "docker" else "buildah"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            pytest.skip(f"{tool} not installed")
    result = build_bench.run(True, engine, workdir=tmp_path, out=tmp_path / "results", progress=print)
    assert result["ok"], result["error"] or [j for j in result["jobs"] if not j["verified"]]
    warm = result["table"]["warm"]
    assert set(warm) == {"tarball", "remote-registry", "cachesvc", "distribution-colocated", "memory-colocated",
                         "local"}
    assert all(row["bytes_moved"] > 0 for name, row in warm.items() if name != "local")
    name = build_bench.result_name(build_bench.SMOKE, engine)
    assert (tmp_path / "results" / f"{name}.md").read_text().count("| yes |") >= 12
