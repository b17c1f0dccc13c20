"""launch.sh with --engine buildkitd, against a stand-in buildkitd (BuildKit is not packaged in Debian): the
config it writes parses as TOML with the settings BuildKit documents, the budgets of both services add up to the
disk, the flags printed are the registry-cache ones, and --check / --stop work in the background mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from cachesvc.settings import load_settings
from tests.builder.harness import LAUNCH, Launcher, LoopDevice, fake_buildkitd, pid_alive

pytestmark = pytest.mark.builder


def test_buildkitd_config_budgets_and_flags(tmp_path: Path, launcher: Launcher,
                                            loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(2 << 30)
    launcher.engine = "buildkitd"
    launcher.engine_bin = fake_buildkitd(tmp_path)
    launcher.extra = ["--cache-share", "0.6", "--min-free", "5%", "--engine-arg=--debug",
                      "--ci-repo", "org/Service", "--ci-branch", "fix/Crash#12", "--ci-default-branch", "trunk"]
    result = launcher.run(device=loop.device)

    registry = launcher.registry
    base = f"{registry}/cache/org/service"
    assert result.flags() == [
        "--cache-to", f"type=registry,ref={base}:fix-Crash-12,mode=max",
        "--cache-from", f"type=registry,ref={base}:fix-Crash-12",
        "--cache-from", f"type=registry,ref={base}:trunk",
    ], result.stdout

    seen = json.loads((launcher.root / "etc" / "fake-buildkitd.json").read_text())
    assert seen["argv"] == ["--config", str(launcher.root / "etc" / "buildkitd.toml"), "--debug"]
    bk = seen["config"]
    assert bk["root"] == str(launcher.root / "buildkit")
    assert bk["grpc"]["address"] == [f"unix://{launcher.engine_socket}"]
    assert bk["registry"][registry] == {"http": True}
    assert bk["worker"]["containerd"]["enabled"] is False
    oci = bk["worker"]["oci"]
    assert oci["enabled"] is True and oci["gc"] is True

    cs = tomllib.loads((launcher.root / "etc" / "cachesvc.toml").read_text())
    assert cs["listen"] == registry and cs["root"] == str(launcher.root / "cachesvc") and cs["min_free"] == "5%"
    st = os.statvfs(launcher.root)
    total = st.f_blocks * st.f_frsize
    assert abs(cs["max_size"] - 0.6 * total) <= 1
    assert abs(oci["minFreeSpace"] - 0.05 * total) <= 1
    # cachesvc's budget + the engine's ceiling + the free-space floor = the disk
    assert cs["max_size"] + oci["maxUsedSpace"] + oci["minFreeSpace"] == total
    assert 0 < oci["reservedSpace"] < oci["maxUsedSpace"]

    # the settings cachesvc itself reads from that file are the ones launch.sh meant
    settings = load_settings(config=launcher.root / "etc" / "cachesvc.toml", env={})
    assert settings.max_size == cs["max_size"] and settings.min_free == (0, 0.05)

    check = subprocess.run(["bash", str(LAUNCH), "--check", "--run-dir", str(launcher.run_dir)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    pids = launcher.pids()
    assert launcher.stop().returncode == 0
    assert not any(pid_alive(p) for p in pids.values())
    assert not launcher.engine_socket.exists()
    check = subprocess.run(["bash", str(LAUNCH), "--check", "--run-dir", str(launcher.run_dir),
                            "--cachesvc-listen", registry], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1


def test_changed_settings_restart_only_what_changed(tmp_path: Path, launcher: Launcher,
                                                    loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    launcher.engine = "buildkitd"
    launcher.engine_bin = fake_buildkitd(tmp_path)
    launcher.run(device=loop.device)
    first = launcher.pids()

    launcher.extra = ["--engine-arg=--debug"]  # only the engine's command line changes
    engine_only = launcher.run(device=loop.device)
    second = launcher.pids()
    assert "buildkitd command line changed: restarting it" in engine_only.stderr, engine_only.text
    assert second["cachesvc"] == first["cachesvc"] and second["engine"] != first["engine"]
    assert not pid_alive(first["engine"])

    launcher.extra = ["--engine-arg=--debug", "--cache-share", "0.4"]  # both budgets move
    both = launcher.run(device=loop.device)
    third = launcher.pids()
    assert "cachesvc settings changed: restarting it" in both.stderr, both.text
    assert "buildkitd settings changed: restarting it" in both.stderr, both.text
    assert third["cachesvc"] != second["cachesvc"] and third["engine"] != second["engine"]
    assert not pid_alive(second["cachesvc"]) and not pid_alive(second["engine"])

    unchanged = launcher.run(device=loop.device)
    assert launcher.pids() == third, unchanged.text
