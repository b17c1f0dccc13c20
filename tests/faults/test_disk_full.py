"""A filesystem that fills up under --root (a real, small, loop-mounted ext4): uploads fail with 507, reads keep
being served, nothing stored is damaged, and the server recovers by itself once space is free."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    for tool in ("losetup", "mkfs.ext4", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: apt-get install util-linux e2fsprogs mount")
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(160 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    except subprocess.CalledProcessError:
        pytest.skip("loop mounts are not available here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_507_then_recovery(small_fs: Path) -> None:
    root = small_fs / "cachesvc"
    # Another tenant of the disk eats space the cache does not own (the cache cannot evict it).
    hog = small_fs / "hog"
    server = Cachesvc(root, extra_args=["--upload-grace", "1h", "--pin", "full/app:keep"]).start()
    h = Http(server.url)
    keep = os.urandom(2_000_000)
    kept = h.push_image("full/app", "keep", [keep])
    with open(hog, "wb") as f:
        f.write(b"\0" * (free(small_fs) - 20 * 1024 * 1024))
    statuses = []
    pushed: list[bytes] = []
    for _ in range(12):
        data = os.urandom(3_000_000)
        status, headers, body = h.request("POST", "/v2/full/app/blobs/uploads/")
        location = headers.get("Location")
        status, _, body = h.request("PUT", f"{location}?digest={sha256(data)}", data)
        statuses.append(status)
        if status == 201:
            pushed.append(data)
        else:
            assert status == 507, body
            assert b"STORAGE_FULL" in body
    assert 507 in statuses, statuses
    # Reads keep working and what was stored is intact.
    status, _, body = h.request("GET", f"/v2/full/app/blobs/{sha256(keep)}")
    assert status == 200 and body == keep
    status, headers, _ = h.request("HEAD", "/v2/full/app/manifests/keep")
    assert status == 200 and headers["Docker-Content-Digest"] == kept
    for data in pushed:
        status, _, body = h.request("GET", f"/v2/full/app/blobs/{sha256(data)}")
        assert status == 200 and body == data
    # No partial upload files left behind by the failures.
    assert sum(p.stat().st_size for p in (root / "uploads").iterdir()) == 0
    # Space comes back: the next upload works without a restart.
    hog.unlink()
    data = os.urandom(3_000_000)
    h.push_blob("full/app", data)
    status, _, body = h.request("GET", f"/v2/full/app/blobs/{sha256(data)}")
    assert status == 200 and body == data
    log = server.log_text()
    assert "Traceback" not in log
    server.stop()


def test_eviction_makes_room_on_a_full_disk(small_fs: Path) -> None:
    """With old caches to evict, a nearly full disk is relieved by eviction and the upload goes through."""
    root = small_fs / "cachesvc"
    server = Cachesvc(root, extra_args=["--upload-grace", "1s", "--min-free", "30MiB"]).start()
    h = Http(server.url)
    for i in range(6):
        h.push_image("full/app", f"old{i}", [os.urandom(4_000_000)])
    hog = small_fs / "hog"
    with open(hog, "wb") as f:
        f.write(b"\0" * max(0, free(small_fs) - 34 * 1024 * 1024))
    data = os.urandom(8_000_000)
    h.push_blob("full/app", data)  # needs eviction of old roots to keep 30 MiB free
    status, _, _ = h.request("HEAD", "/v2/full/app/manifests/old0")
    assert status == 404
    assert free(small_fs) >= 30 * 1024 * 1024 - 8_000_000
    server.stop()
