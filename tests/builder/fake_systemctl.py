"""A stand-in for systemctl, for machines where systemd is not PID 1 (this one): enough of `cat`, `daemon-reload`,
`enable`, `is-active`, `start`, `restart` and `stop` for launch.sh's systemd mode.

It reads the units launch.sh installed in $FAKE_SYSTEMD_UNITS (drop-ins included; an empty `ExecStart=` resets
the list as in systemd), honours `ConditionPathIsMountPoint=`, runs `ExecStart` detached with its output in
$FAKE_SYSTEMD_STATE/<unit>.log, keeps pids in $FAKE_SYSTEMD_STATE/<unit>.pid, and appends every command line to
$FAKE_SYSTEMD_STATE/calls.log. Like `systemctl start` of a unit whose condition fails, a skipped start exits 0.
The tests copy this file behind a shebang naming their interpreter.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNITS = Path(os.environ["FAKE_SYSTEMD_UNITS"])
STATE = Path(os.environ["FAKE_SYSTEMD_STATE"])


def unit_lines(unit: str) -> list[str]:
    files = [UNITS / unit, *sorted((UNITS / f"{unit}.d").glob("*.conf"))]
    if not files[0].exists():
        system = Path("/lib/systemd/system") / unit
        files[0] = system if system.exists() else files[0]
    lines: list[str] = []
    for path in files:
        if path.exists():
            lines += path.read_text().splitlines()
    return lines


def exec_start(unit: str) -> str:
    value = ""
    for line in unit_lines(unit):
        if line.startswith("ExecStart="):
            value = line.removeprefix("ExecStart=")
    return value


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def main_pid(unit: str) -> int | None:
    try:
        pid = int((STATE / f"{unit}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def start(unit: str) -> int:
    if main_pid(unit):
        return 0
    for line in unit_lines(unit):
        if line.startswith("ConditionPathIsMountPoint=") and not os.path.ismount(line.split("=", 1)[1]):
            return 0  # skipped, as systemd does
    command = exec_start(unit)
    if not command:
        print(f"Failed to start {unit}: Unit {unit} not found.", file=sys.stderr)
        return 5
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_SYSTEMD_")}
    with open(STATE / f"{unit}.log", "ab") as log:
        proc = subprocess.Popen(shlex.split(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env)
    (STATE / f"{unit}.pid").write_text(str(proc.pid))
    return 0


def stop(unit: str) -> int:
    pid = main_pid(unit)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    (STATE / f"{unit}.pid").unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls.log", "a") as f:
        f.write(" ".join(argv) + "\n")
    args = [a for a in argv if not a.startswith("--")]
    verb, units = args[0], args[1:]
    if verb == "cat":
        lines = unit_lines(units[0])
        print("\n".join(lines))
        return 0 if lines else 1
    if verb in ("daemon-reload", "enable"):
        return 0
    if verb == "is-active":
        return 0 if main_pid(units[0]) else 3
    if verb == "start":
        return max(start(u) for u in units)
    if verb == "restart":
        for u in units:
            stop(u)
        return max(start(u) for u in units)
    if verb == "stop":
        return max(stop(u) for u in units)
    print(f"fake systemctl: unsupported: {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
