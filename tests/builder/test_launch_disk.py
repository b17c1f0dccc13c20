"""launch.sh and the cache disk: it formats only a blank disk, keeps the data of one that holds a filesystem, and
refuses, with a one-line error and before touching anything, a disk mounted elsewhere, a missing device, a disk
holding data it does not recognise, and a missing engine binary.

The engine here is the buildkitd stand-in (fake_buildkitd.py): disk handling does not depend on the engine, and
it starts in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builder.harness import Launch, Launcher, LoopDevice, fake_buildkitd, fs_uuid, mount_options, need_tool

pytestmark = pytest.mark.builder


@pytest.fixture
def bk_launcher(tmp_path: Path, launcher: Launcher) -> Launcher:
    launcher.engine = "buildkitd"
    launcher.engine_bin = fake_buildkitd(tmp_path)
    return launcher


def one_line_error(result: Launch, *fragments: str) -> str:
    """The run failed with exactly one stderr line, `launch.sh: error: ...`, containing every fragment."""
    assert result.returncode == 1, result.text
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.text
    assert lines[0].startswith("launch.sh: error: "), result.text
    for fragment in fragments:
        assert fragment in lines[0], result.text
    return lines[0]


def nothing_started(launch: Launcher) -> None:
    assert not launch.root.is_mount(), "the disk must not be mounted after a refusal"
    pidfiles = list(launch.run_dir.glob("*.pid")) if launch.run_dir.is_dir() else []
    assert pidfiles == [], "nothing may be started after a refusal"


def first_bytes(device: str, n: int = 1 << 20) -> bytes:
    with open(device, "rb") as f:
        return f.read(n)


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_keeps_data_of_existing_filesystem(fs: str, tmp_path: Path, bk_launcher: Launcher,
                                           loop_factory: Callable[..., LoopDevice]) -> None:
    need_tool(f"mkfs.{fs}", "xfsprogs" if fs == "xfs" else "e2fsprogs")
    loop = loop_factory(1 << 30)
    subprocess.run([f"mkfs.{fs}", "-q", "-L", "olddata", loop.device], check=True, stdin=subprocess.DEVNULL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", loop.device, str(elsewhere)], check=True)
    payload = os.urandom(256 * 1024)
    (elsewhere / "precious").write_bytes(payload)
    subprocess.run(["umount", str(elsewhere)], check=True)
    uuid_before = fs_uuid(loop.device)

    result = bk_launcher.run(device=loop.device)
    assert f"{loop.device} already holds an {fs} filesystem: keeping its data" in result.stderr, result.text
    assert "creating" not in result.stderr, result.text
    assert fs_uuid(loop.device) == uuid_before
    assert hashlib.sha256((bk_launcher.root / "precious").read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert "noatime" in mount_options(bk_launcher.root)
    assert (bk_launcher.root / "cachesvc").is_dir() and (bk_launcher.root / "buildkit").is_dir()
    assert "builder ready" in result.stdout


def test_formats_blank_disk_as_xfs(bk_launcher: Launcher, loop_factory: Callable[..., LoopDevice]) -> None:
    need_tool("mkfs.xfs", "xfsprogs")
    loop = loop_factory(1 << 30)
    bk_launcher.extra = ["--fs", "xfs"]
    result = bk_launcher.run(device=loop.device)
    assert f"creating an xfs filesystem on {loop.device}" in result.stderr, result.text
    probe = subprocess.run(["blkid", "-p", "-o", "export", loop.device], capture_output=True, text=True).stdout
    assert "TYPE=xfs" in probe and "LABEL=cachesvc" in probe, probe
    assert "noatime" in mount_options(bk_launcher.root)


def test_refuses_device_mounted_elsewhere(tmp_path: Path, bk_launcher: Launcher,
                                          loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    subprocess.run(["mkfs.ext4", "-q", loop.device], check=True, stdin=subprocess.DEVNULL)
    elsewhere = tmp_path / "in-use"
    elsewhere.mkdir()
    subprocess.run(["mount", loop.device, str(elsewhere)], check=True)
    try:
        result = bk_launcher.run(device=loop.device, check=False)
        one_line_error(result, loop.device, f"is mounted at {elsewhere}", "refusing")
        nothing_started(bk_launcher)
    finally:
        subprocess.run(["umount", str(elsewhere)], check=False)


def test_refuses_missing_device(bk_launcher: Launcher) -> None:
    result = bk_launcher.run(device="/dev/cachesvc-test-no-such-disk", check=False)
    one_line_error(result, "/dev/cachesvc-test-no-such-disk: no such device")
    nothing_started(bk_launcher)


def test_refuses_missing_engine_binary(bk_launcher: Launcher, loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    bk_launcher.engine_bin = None
    bk_launcher.extra = ["--engine-bin", "/nonexistent/buildkitd"]
    one_line_error(bk_launcher.run(device=loop.device, check=False), "/nonexistent/buildkitd", "not found")
    nothing_started(bk_launcher)
    assert first_bytes(loop.device) == bytes(1 << 20), "the disk must be left untouched"


def test_refuses_buildkitd_missing_from_path(bk_launcher: Launcher, loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if any(Path(d, "buildkitd").exists() for d in (*path.split(":"), "/usr/local/sbin")):
        pytest.skip("buildkitd is installed here")
    bk_launcher.engine_bin = None
    cmd = bk_launcher.command(device=loop.device)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=60)
    one_line_error(Launch(out.returncode, out.stdout, out.stderr, 0), "buildkitd not found", "--engine-bin")
    nothing_started(bk_launcher)


def test_refuses_disk_with_unrecognised_data(bk_launcher: Launcher,
                                             loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    junk = os.urandom(64 * 1024)
    with open(loop.device, "r+b") as f:
        f.seek(4096)
        f.write(junk)
    before = first_bytes(loop.device)
    one_line_error(bk_launcher.run(device=loop.device, check=False), "holds data that is not a filesystem",
                   "refusing to format")
    nothing_started(bk_launcher)
    assert first_bytes(loop.device) == before


def test_refuses_disk_with_partition_table(bk_launcher: Launcher,
                                           loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    # An MBR with one Linux partition (type 0x83) from sector 2048 to the end.
    mbr = bytearray(512)
    sectors = (1 << 30) // 512
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0])
    mbr[446:462] = entry + (2048).to_bytes(4, "little") + (sectors - 2048).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    with open(loop.device, "r+b") as f:
        f.write(mbr)
    subprocess.run(["blockdev", "--rereadpt", loop.device], capture_output=True)
    before = first_bytes(loop.device)
    result = bk_launcher.run(device=loop.device, check=False)
    line = one_line_error(result, loop.device, "refusing")
    assert "partition" in line, line
    nothing_started(bk_launcher)
    assert first_bytes(loop.device) == before
