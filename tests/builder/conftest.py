"""Fixtures for the builder-image tests (helpers: harness.py).

Every test gets its own mount point, run directory (pid files, the engine's sockets and runtime files), a free
loopback port for cachesvc and `--no-systemd`, so nothing touches /var/lib/builder, /run/docker.sock or the
machine's units. Teardown runs even when a test fails: `launch.sh --stop`, SIGKILL of anything still alive from
its pid files, unmount (deepest first), `losetup -d`, and removal of the backing file and run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `tests.support` is not installed; pytest's rootdir is not on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from tests.builder.harness import Launcher, LoopDevice, need_root, need_tool, unmount_all  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

_serial = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "builder: needs root and loop devices (mounts, daemons)")


@pytest.fixture
def loop_factory(tmp_path: Path) -> Iterator[Callable[..., LoopDevice]]:
    """`loop_factory(size)` -> an attached LoopDevice; all are detached (after unmounting) at teardown."""
    need_root()
    need_tool("losetup", "util-linux")
    made: list[LoopDevice] = []

    def make(size: int = 2 << 30) -> LoopDevice:
        loop = LoopDevice(tmp_path / f"disk{len(made)}.img", size)
        made.append(loop)
        loop.attach()
        return loop

    yield make
    for loop in made:
        if loop.device:
            with open("/proc/self/mountinfo") as f:
                majmin = os.stat(loop.device).st_rdev
                want = f"{os.major(majmin)}:{os.minor(majmin)}"
                targets = [line.split()[4] for line in f if line.split()[2] == want]
            for target in sorted(targets, key=len, reverse=True):
                subprocess.run(["umount", "-l", target], capture_output=True)
        loop.detach()
        loop.backing.unlink(missing_ok=True)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """A Launcher for dockerd with private paths; everything it started is stopped at teardown."""
    need_root()
    # unix socket paths are capped at 108 bytes (dockerd's containerd socket lives under the run dir): keep it short
    run_dir = Path(f"/run/cbt-{os.getpid()}-{next(_serial)}")
    shutil.rmtree(run_dir, ignore_errors=True)
    launch = Launcher(root=tmp_path / "builder", run_dir=run_dir, port=free_port())
    yield launch
    with contextlib.suppress(Exception):
        launch.stop()
    launch.kill_leftovers()
    unmount_all(launch.root)
    unmount_all(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
