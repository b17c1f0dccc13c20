"""builder-image/ without starting anything: shellcheck, `systemd-analyze verify` of the units as launch.sh
installs them, disk discovery against a scripted `lsblk`, argument errors, and a review of the Dockerfile and
cloud-init user-data (neither can be built or booted here: no registry, no cloud).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.builder.harness import BUILDER_DIR, LAUNCH, cachesvc_bin, need_tool

UNITS = BUILDER_DIR / "systemd"
DOCKERFILE = BUILDER_DIR / "Dockerfile"
CLOUD_INIT = BUILDER_DIR / "cloud-init.yaml"


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LAUNCH), *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def shellcheck(path: Path) -> None:
    tool = need_tool("shellcheck", "shellcheck")
    out = subprocess.run([tool, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------------------------
# shell


def test_launch_sh_is_shellcheck_clean() -> None:
    assert os.access(LAUNCH, os.X_OK), "launch.sh must be executable"
    assert LAUNCH.read_text().startswith("#!/usr/bin/env bash\n")
    shellcheck(LAUNCH)


def test_help() -> None:
    out = launch("--help")
    assert out.returncode == 0
    for flag in ("--device", "--cache-share", "--min-free", "--engine", "--foreground", "--cachesvc-bin", "--stop"):
        assert flag in out.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["--engine", "podman"], "--engine must be buildkitd or dockerd"),
    (["--fs", "btrfs"], "--fs must be ext4 or xfs"),
    (["--cache-share", "1.5"], "--cache-share must be a fraction"),
    (["--min-free", "150%"], "--min-free must be"),
    (["--min-free", "lots"], "--min-free must be"),
    (["--cache-share", "0.7", "--min-free", "30%"], "leave no room for the engine"),
    (["--cachesvc-listen", "5000"], "--cachesvc-listen must be HOST:PORT"),
    (["--root", "relative/dir"], "--root must be an absolute path"),
    (["--engine-addr", "http://x"], "--engine-addr must be"),
    (["--bogus"], "unknown option: --bogus"),
    (["--device"], "--device needs a value"),
])
def test_argument_errors_are_one_line(args: list[str], fragment: str) -> None:
    out = launch(*args)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("launch.sh: error: "), out.stderr
    assert fragment in out.stderr


def test_needs_root_to_launch(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and not setpriv:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop privileges")
    cmd = ["bash", str(LAUNCH), "--no-systemd", "--device", "/dev/null", "--root", str(tmp_path / "r")]
    if os.geteuid() == 0:
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and out.stderr == "launch.sh: error: must run as root: it mounts the cache disk " \
        "and starts daemons\n", out.stderr


# ------------------------------------------------------------------------------------------------------------
# disk discovery, driven by a scripted lsblk (no NVMe disk here)

AWS_ROOT = ('NAME="/dev/nvme0n1" TYPE="disk" PKNAME="" MOUNTPOINT="" FSTYPE="" LABEL="" '
            'MODEL="Amazon Elastic Block Store"\n'
            'NAME="/dev/nvme0n1p1" TYPE="part" PKNAME="/dev/nvme0n1" MOUNTPOINT="/" FSTYPE="ext4" '
            'LABEL="cloudimg-rootfs" MODEL=""\n')
EBS_DATA = ('NAME="/dev/nvme1n1" TYPE="disk" PKNAME="" MOUNTPOINT="" FSTYPE="" LABEL="" '
            'MODEL="Amazon Elastic Block Store"\n')


def instance_store(n: int, fstype: str = "", label: str = "", mountpoint: str = "") -> str:
    return (f'NAME="/dev/nvme{n}n1" TYPE="disk" PKNAME="" MOUNTPOINT="{mountpoint}" FSTYPE="{fstype}" '
            f'LABEL="{label}" MODEL="Amazon EC2 NVMe Instance Storage"\n')


@pytest.mark.parametrize(("listing", "expected"), [
    (AWS_ROOT + instance_store(1), "/dev/nvme1n1"),
    (AWS_ROOT + EBS_DATA + instance_store(2), "/dev/nvme2n1"),  # instance storage beats a blank EBS volume
    (AWS_ROOT + instance_store(1) + instance_store(2, "ext4", "cachesvc"), "/dev/nvme2n1"),  # ours, rebooted
    (AWS_ROOT + instance_store(1, "xfs"), "/dev/nvme1n1"),  # a filesystem is fine: it is kept, not formatted
    (AWS_ROOT + EBS_DATA, "/dev/nvme1n1"),  # any unmounted NVMe disk without partitions
    (AWS_ROOT + instance_store(1, mountpoint="/mnt") + instance_store(2, "LVM2_member"), "error: no cache disk"),
    (AWS_ROOT + instance_store(1) + instance_store(2), "error: several candidate cache disks"),
    (AWS_ROOT, "error: no cache disk found"),
])
def test_discovers_instance_store_disk(tmp_path: Path, listing: str, expected: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "listing").write_text(listing)
    fake = bindir / "lsblk"
    fake.write_text(f"#!/bin/sh\ncat {bindir / 'listing'}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = launch("--print-device", "--root", str(tmp_path / "not-mounted"), env=env)
    if expected.startswith("error: "):
        assert out.returncode == 1 and expected in out.stderr, out
        assert out.stderr.count("\n") == 1
    else:
        assert out.returncode == 0 and out.stdout == expected + "\n", out


# ------------------------------------------------------------------------------------------------------------
# systemd units


def verify(*units: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    tool = need_tool("systemd-analyze", "systemd")
    out = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stdout + out.stderr


def render(directory: Path, *args: str) -> None:
    out = launch("--render-units", str(directory), *args)
    assert out.returncode == 0, out.stderr


def test_units_as_installed_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart binaries must exist for `verify`: the project's cachesvc, and a stand-in buildkitd
    # (BuildKit is not packaged in Debian).
    stub = tmp_path / "bin" / "buildkitd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "units"
    render(out, "--cachesvc-bin", cachesvc_bin(), "--engine-bin", str(stub), "--root", "/srv/builder-cache",
           "--engine-arg=--debug")
    cachesvc = (out / "cachesvc.service").read_text()
    buildkitd = (out / "buildkitd.service").read_text()
    verify("cachesvc.service", "buildkitd.service", cwd=out)

    for line in ("Type=notify", "Restart=always", "LimitNOFILE=1048576", "ProtectSystem=strict",
                 "ReadWritePaths=/srv/builder-cache/cachesvc", "NoNewPrivileges=yes",
                 "ConditionPathIsMountPoint=/srv/builder-cache", "RequiresMountsFor=/srv/builder-cache",
                 f"ExecStart={cachesvc_bin()} serve --config /srv/builder-cache/etc/cachesvc.toml"):
        assert line in cachesvc.splitlines(), line
    assert "/var/lib/builder" not in cachesvc + buildkitd
    for line in ("After=cachesvc.service network-online.target", "Type=notify", "Restart=always",
                 "Delegate=yes", f"ExecStart={stub} --config /srv/builder-cache/etc/buildkitd.toml --debug"):
        assert line in buildkitd.splitlines(), line


def test_docker_drop_in_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    dockerd = need_tool("dockerd", "docker.io")
    out = tmp_path / "units"
    render(out, "--engine", "dockerd", "--engine-bin", dockerd, "--cachesvc-bin", cachesvc_bin(),
           "--engine-addr", "unix:///var/run/docker.sock", "--engine-addr", "tcp://0.0.0.0:2376")
    drop_in = (out / "docker.service.d" / "cachesvc-builder.conf").read_text()
    assert "ExecStart=\n" in drop_in
    assert f"ExecStart={dockerd} -H fd://" in drop_in
    assert "--config-file /var/lib/builder/etc/daemon.json -H tcp://0.0.0.0:2376" in drop_in
    system_unit = Path("/lib/systemd/system/docker.service")
    if not system_unit.exists():
        # the drop-in extends the Docker package's unit: verify it on a minimal stand-in
        (out / "docker.service").write_text(f"[Unit]\nDescription=stand-in\n[Service]\nExecStart={dockerd}\n")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{out}:"}  # ours first, then the default search path
    verify("docker.service", cwd=out, env=env)


# ------------------------------------------------------------------------------------------------------------
# Dockerfile (cannot be built here: no registry to pull moby/buildkit or debian from)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_review() -> None:
    ins = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in ins if word == "ARG" and "=" in rest}
    assert re.fullmatch(r"v0\.(1[7-9]|[2-9]\d)\.\d+", args["BUILDKIT_VERSION"]), "pin a BuildKit >= 0.17 release"
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms[0] == "moby/buildkit:${BUILDKIT_VERSION} AS buildkit"
    assert all("latest" not in f for f in froms)
    assert args["DEBIAN"].startswith("debian:") and "latest" not in args["DEBIAN"]

    copies = [rest for word, rest in ins if word == "COPY"]
    assert "--from=buildkit /usr/bin/buildkitd /usr/bin/buildctl /usr/bin/buildkit-runc /usr/local/bin/" in copies
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip wheel" in runs and "--no-index --find-links /tmp/wheels cachesvc" in runs

    entrypoint = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entrypoint == ['["/usr/bin/tini", "--", "/usr/local/bin/launch.sh", "--foreground"]']
    assert ("STOPSIGNAL", "SIGTERM") in ins
    assert ("ENV", "BUILDKIT_SETUP_CGROUPV2_ROOT=1") in ins
    assert any(word == "HEALTHCHECK" and "launch.sh\", \"--check" in rest for word, rest in ins)
    assert "tini" in runs and "xfsprogs" in runs and "e2fsprogs" in runs


def test_dockerfile_context_files_exist_and_are_not_ignored() -> None:
    ignore = (BUILDER_DIR / "Dockerfile.dockerignore").read_text().split()
    allowed = {p[1:] for p in ignore if p.startswith("!")}
    repo = BUILDER_DIR.parent
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (repo / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is dockerignored"


# ------------------------------------------------------------------------------------------------------------
# cloud-init user-data (cannot be booted here)


def cloud_init_file(path: str) -> str:
    """The `content: |` block of the write_files entry for `path`, dedented."""
    lines = CLOUD_INIT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- path: {path}")
    i = next(j for j in range(start, len(lines)) if lines[j].strip() == "content: |") + 1
    indent = len(lines[i]) - len(lines[i].lstrip())
    block = []
    while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
        block.append(lines[i])
        i += 1
    return textwrap.dedent("\n".join(block)).rstrip() + "\n"


def test_cloud_init_user_data(tmp_path: Path) -> None:
    text = CLOUD_INIT.read_text()
    assert text.startswith("#cloud-config\n")
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        data = yaml.safe_load(text)
        paths = [f["path"] for f in data["write_files"]]
        assert "/var/lib/cloud/scripts/per-boot/cachesvc-builder.sh" in paths
        assert {"python3", "python3-venv", "e2fsprogs", "xfsprogs"} <= set(data["packages"])

    script = tmp_path / "per-boot.sh"
    script.write_text(cloud_init_file("/var/lib/cloud/scripts/per-boot/cachesvc-builder.sh"))
    env_file = tmp_path / "builder.env"
    env_file.write_text(cloud_init_file("/etc/cachesvc-builder/builder.env"))
    assert script.read_text().startswith("#!/bin/bash\n")
    assert "exec /opt/cachesvc-builder/launch.sh" in script.read_text()
    shellcheck(script)
    # builder.env is bash that the script sources: it must parse and define what the script uses
    out = subprocess.run(["bash", "-c", f'set -u; . {env_file}; echo "$ENGINE ${{#LAUNCH_ARGS[@]}}"'],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[0] == "buildkitd", out
    # the flags it passes are ones launch.sh accepts
    flags = subprocess.run(["bash", "-c", f'. {env_file}; printf "%s\\n" "${{LAUNCH_ARGS[@]}}"'],
                           capture_output=True, text=True).stdout.split()
    for flag in (f for f in flags if f.startswith("--")):
        assert flag in LAUNCH.read_text(), flag
