"""launch.sh's systemd mode (systemd as PID 1 installs and starts units instead of running processes itself),
driven through a stand-in systemctl (fake_systemctl.py) that runs each installed unit's ExecStart: systemd is
not PID 1 here. The units' own syntax is checked by `systemd-analyze verify` in test_builder_static.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builder.harness import (
    FAKE_SYSTEMCTL,
    Launcher,
    LoopDevice,
    cachesvc_bin,
    fake_buildkitd,
    pid_alive,
    stand_in,
)

pytestmark = pytest.mark.builder

MUTATING = ("daemon-reload", "enable", "start", "restart", "stop")


def calls(state: Path, since: int = 0) -> list[str]:
    lines = (state / "calls.log").read_text().splitlines() if (state / "calls.log").exists() else []
    return [c for c in lines[since:] if c.split()[0] in MUTATING]


def unit_pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in state.glob("*.pid")}


def test_systemd_mode_installs_and_starts_units(tmp_path: Path, launcher: Launcher,
                                                loop_factory: Callable[..., LoopDevice]) -> None:
    loop = loop_factory(1 << 30)
    units, state = tmp_path / "units", tmp_path / "systemd-state"
    stand_in(FAKE_SYSTEMCTL, tmp_path / "bin" / "systemctl")
    launcher.engine = "buildkitd"
    launcher.engine_bin = fake_buildkitd(tmp_path)
    launcher.mode = "--systemd"
    launcher.extra = ["--systemd-dir", str(units)]
    launcher.env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                    "FAKE_SYSTEMD_UNITS": str(units), "FAKE_SYSTEMD_STATE": str(state)}
    try:
        first = launcher.run(device=loop.device)
        assert calls(state) == ["daemon-reload", "enable --quiet cachesvc.service buildkitd.service",
                                "start cachesvc.service", "start buildkitd.service"], first.text
        cachesvc_unit = (units / "cachesvc.service").read_text().splitlines()
        assert f"ExecStart={cachesvc_bin()} serve --config {launcher.root}/etc/cachesvc.toml" in cachesvc_unit
        assert f"ReadWritePaths={launcher.root}/cachesvc" in cachesvc_unit
        assert f"ExecStart={launcher.engine_bin} --config {launcher.root}/etc/buildkitd.toml" in \
            (units / "buildkitd.service").read_text().splitlines()
        assert "mode=systemd" in (launcher.run_dir / "state").read_text()
        assert not list(launcher.run_dir.glob("*.pid")), "systemd runs the services, not launch.sh"
        pids = unit_pids(state)
        assert set(pids) == {"cachesvc.service", "buildkitd.service"} and all(map(pid_alive, pids.values()))
        assert "--cache-to type=registry" in first.stdout

        # idempotent: nothing installed, reloaded, started or restarted
        n = len((state / "calls.log").read_text().splitlines())
        again = launcher.run(device=loop.device)
        assert calls(state, n) == ["enable --quiet cachesvc.service buildkitd.service"], again.text
        assert "cachesvc.service already running" in again.stderr and unit_pids(state) == pids

        # a changed engine flag changes only the engine's unit: only the engine restarts
        n = len((state / "calls.log").read_text().splitlines())
        launcher.extra += ["--engine-arg=--debug"]
        changed = launcher.run(device=loop.device)
        assert calls(state, n) == ["daemon-reload", "enable --quiet cachesvc.service buildkitd.service",
                                   "restart buildkitd.service"], changed.text
        after = unit_pids(state)
        assert after["cachesvc.service"] == pids["cachesvc.service"]
        assert after["buildkitd.service"] != pids["buildkitd.service"]

        n = len((state / "calls.log").read_text().splitlines())
        launcher.stop()
        assert calls(state, n) == ["stop buildkitd.service cachesvc.service"]
        assert not any(map(pid_alive, after.values()))
    finally:
        for pid in unit_pids(state).values() if state.exists() else ():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
