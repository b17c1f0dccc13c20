"""Helpers for the builder-image tests: loop devices standing in for the instance-store NVMe disk, and a
`Launcher` that runs `builder-image/launch.sh` with everything private to the test (see conftest.py for the
fixtures that clean up after them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.clients import mounts_under

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILDER_DIR = REPO_ROOT / "builder-image"
LAUNCH = BUILDER_DIR / "launch.sh"
FAKE_BUILDKITD = Path(__file__).with_name("fake_buildkitd.py")
FAKE_SYSTEMCTL = Path(__file__).with_name("fake_systemctl.py")
#: dockerd here must not touch the host's firewall or bridges (same flags as the e2e harness's DockerDaemon).
DOCKERD_TEST_ARGS = ("--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                     "--bridge=none", "--log-level=warn")


def cachesvc_bin() -> str:
    """The project's console script: the venv's next to the running interpreter, else PATH."""
    here = Path(sys.executable).with_name("cachesvc")
    if here.exists():
        return str(here)
    found = shutil.which("cachesvc")
    if not found:
        pytest.skip("cachesvc console script not found: pip install -e .")
    return found


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: launch.sh formats and mounts (loop) devices and starts daemons")


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        pytest.skip(f"{name} not found: apt-get install {package}")
    return path


def fs_uuid(device: str) -> str:
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device], capture_output=True, text=True)
    return out.stdout.strip()


def mount_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f if line.split()[4] == str(path)]
    return set(rows[-1][5].split(",")) if rows else set()


def unmount_all(path: Path) -> None:
    for mountpoint in sorted(mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# ------------------------------------------------------------------------------------------------------------
# loop devices


@dataclass
class LoopDevice:
    """A sparse backing file attached with `losetup`; `reattach()` gives the same bytes a (maybe) new name."""

    backing: Path
    size: int
    device: str = ""

    def attach(self) -> str:
        if not self.backing.exists():
            with open(self.backing, "wb") as f:
                f.truncate(self.size)
        out = subprocess.run(["losetup", "--find", "--show", str(self.backing)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"no loop device available (losetup: {out.stderr.strip()})")
        self.device = out.stdout.strip()
        return self.device

    def detach(self) -> None:
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = ""

    def reattach(self) -> str:
        self.detach()
        return self.attach()


# ------------------------------------------------------------------------------------------------------------
# launch.sh


@dataclass
class Launcher:
    """Runs launch.sh with this test's private paths; `command()` shows the exact arguments."""

    root: Path
    run_dir: Path
    port: int
    engine: str = "dockerd"
    engine_bin: str | None = None
    extra: list[str] = field(default_factory=list)
    mode: str = "--no-systemd"  # or "--systemd" (with a stand-in systemctl on PATH: fake_systemctl.py)
    env: dict[str, str] | None = None

    @property
    def engine_socket(self) -> Path:
        return self.run_dir / ("docker.sock" if self.engine == "dockerd" else "buildkitd.sock")

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, *args: str, device: str | None = None) -> list[str]:
        cmd = ["bash", str(LAUNCH), self.mode, "--root", str(self.root), "--run-dir", str(self.run_dir),
               "--cachesvc-bin", cachesvc_bin(), "--cachesvc-listen", self.registry,
               "--engine", self.engine, "--engine-addr", f"unix://{self.engine_socket}", "--timeout", "60"]
        if self.engine_bin:
            cmd += ["--engine-bin", self.engine_bin]
        if self.engine == "dockerd":
            cmd += [f"--engine-arg={a}" for a in DOCKERD_TEST_ARGS]
        if device:
            cmd += ["--device", device]
        return [*cmd, *self.extra, *args]

    def run(self, *args: str, device: str | None = None, check: bool = True, timeout: float = 180) -> Launch:
        t0 = time.monotonic()
        proc = subprocess.run(self.command(*args, device=device), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env=self.env)
        result = Launch(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
        if check and proc.returncode != 0:
            raise AssertionError(f"launch.sh failed ({proc.returncode}):\n{result.text}\n{self.log_tails()}")
        return result

    def stop(self) -> Launch:
        return self.run("--stop", timeout=150)

    def pids(self) -> dict[str, int]:
        out = {}
        for name in ("cachesvc", "engine", "supervisor"):
            with contextlib.suppress(OSError, ValueError):
                out[name] = int((self.run_dir / f"{name}.pid").read_text().strip())
        return out

    def log_tails(self, n: int = 15) -> str:
        texts = []
        for log in sorted((self.root / "log").glob("*.log")) if (self.root / "log").is_dir() else []:
            lines = log.read_text(errors="replace").splitlines()[-n:]
            texts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(texts)

    def kill_leftovers(self) -> None:
        """SIGKILL whatever the pid files still name (after --stop, normally nothing)."""
        for pidfile in (*self.run_dir.glob("*.pid"),) if self.run_dir.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if pid > 1 and pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def text(self) -> str:
        return f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    def flags(self) -> list[str]:
        """The CI flags printed at the end: each `  --flag value` line, split into argv words."""
        words: list[str] = []
        for line in self.stdout.splitlines():
            if line.startswith("  --"):
                words += line.split()
        return words

    def push_command(self) -> list[str]:
        for line in self.stdout.splitlines():
            if "docker push " in line:
                return line.split("docker push ", 1)[1].split()
        return []


def stand_in(source: Path, path: Path) -> str:
    """An executable copy of a stand-in script, run by this interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + source.read_text())
    path.chmod(0o755)
    return str(path)


def fake_buildkitd(directory: Path) -> str:
    """An executable stand-in for buildkitd (BuildKit is not packaged in Debian): see fake_buildkitd.py."""
    return stand_in(FAKE_BUILDKITD, directory / "buildkitd")
