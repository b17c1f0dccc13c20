"""launch.sh --foreground: one supervisor for cachesvc and the engine, as the container image runs it
(`tini -- launch.sh --foreground`). SIGTERM, as `docker stop` sends it, stops the engine, then cachesvc, and the
supervisor exits 0; if either service dies, the supervisor stops the other and exits 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.builder.harness import Launcher, LoopDevice, fake_buildkitd, mounts_under, need_tool, pid_alive

pytestmark = pytest.mark.builder


class Supervisor:
    """`[tini -s --] launch.sh --foreground ...` in its own session, output in files."""

    def __init__(self, launch: Launcher, device: str, workdir: Path, *, tini: bool) -> None:
        self.out = workdir / "foreground.out"
        self.err = workdir / "foreground.err"
        cmd = launch.command("--foreground", device=device)
        tini_bin = shutil.which("tini")
        if tini and tini_bin:
            cmd = [tini_bin, "-s", "--", *cmd]  # -s: a subreaper, since it is not PID 1 here
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self) -> str:
        return f"--- stdout\n{self.out.read_text()}--- stderr\n{self.err.read_text()}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "\n  --cache-from " not in self.out.read_text():  # the summary's flags: launch.sh is supervising
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"not ready after {timeout}s:\n{self.text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.kill()


def test_sigterm_stops_engine_then_cachesvc(tmp_path: Path, launcher: Launcher,
                                            loop_factory: Callable[..., LoopDevice],
                                            supervisors: list[Supervisor]) -> None:
    need_tool("dockerd", "docker.io")
    loop = loop_factory(2 << 30)
    sup = Supervisor(launcher, loop.device, tmp_path, tini=True)
    supervisors.append(sup)
    sup.wait_ready()
    pids = launcher.pids()
    assert set(pids) == {"cachesvc", "engine", "supervisor"}
    assert all(pid_alive(p) for p in pids.values())
    assert "--cache-from" in sup.out.read_text()

    t0 = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)  # what `docker stop` does to PID 1
    assert sup.proc.wait(timeout=90) == 0, sup.text()
    took = time.monotonic() - t0
    assert not any(pid_alive(p) for p in pids.values()), sup.text()
    err = sup.err.read_text()
    order = [err.find("stopping (signal received)"), err.find("stopping dockerd"), err.find("stopping cachesvc"),
             err.find("launch.sh: stopped")]
    assert -1 not in order and order == sorted(order), sup.text()
    assert not list(launcher.run_dir.glob("*.pid"))
    assert mounts_under(launcher.run_dir) == [], "dockerd's runtime mounts must be released"
    assert took < 30, f"stopping took {took:.1f}s"


def test_supervisor_exits_when_a_service_dies(tmp_path: Path, launcher: Launcher,
                                              loop_factory: Callable[..., LoopDevice],
                                              supervisors: list[Supervisor]) -> None:
    loop = loop_factory(1 << 30)
    launcher.engine = "buildkitd"
    launcher.engine_bin = fake_buildkitd(tmp_path)
    sup = Supervisor(launcher, loop.device, tmp_path, tini=False)
    supervisors.append(sup)
    sup.wait_ready()
    pids = launcher.pids()
    os.kill(pids["cachesvc"], signal.SIGKILL)
    assert sup.proc.wait(timeout=60) == 1, sup.text()
    assert "cachesvc exited unexpectedly: stopping" in sup.err.read_text(), sup.text()
    assert not pid_alive(pids["engine"]), "the engine must be stopped with it"
