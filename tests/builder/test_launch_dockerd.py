"""launch.sh end to end with Docker Engine (Debian's docker.io) on a loop device standing in for the NVMe disk.

The build cache survives replacing the builder: build and push the cache with the flags launch.sh prints, stop
everything, wipe the engine's state, detach and re-attach the disk, run launch.sh again (it must not reformat),
and the rebuild takes every step from cachesvc. Running launch.sh twice in a row changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builder.harness import (
    Launcher,
    LoopDevice,
    fs_uuid,
    mount_options,
    mounts_under,
    need_tool,
    pid_alive,
)
from tests.support.clients import (
    BuildStep,
    ContainersConfig,
    ToolMissing,
    parse_plain_progress,
    parse_request_log,
    run,
    tool_path,
)
from tests.support.images import BUSYBOX, build_busybox_layout, push_layout, write_build_context

pytestmark = [pytest.mark.builder, pytest.mark.e2e]


def docker_env(launch: Launcher, config_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DOCKER_HOST": f"unix://{launch.engine_socket}", "DOCKER_BUILDKIT": "1",
                "DOCKER_CONFIG": str(config_dir), "BUILDKIT_PROGRESS": "plain"})
    env.pop("DOCKER_CONTEXT", None)
    return env


def cacheable(output: str) -> list[BuildStep]:
    return [s for s in parse_plain_progress(output) if s.instruction in ("RUN", "COPY", "ADD")]


def test_replace_builder_keeps_cache(tmp_path: Path, launcher: Launcher,
                                     loop_factory: Callable[..., LoopDevice]) -> None:
    need_tool("dockerd", "docker.io")
    need_tool("mkfs.ext4", "e2fsprogs")
    need_tool("skopeo", "skopeo")  # pushes the base image
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} not found: apt-get install busybox-static")
    try:
        docker = tool_path("docker")  # Debian's client: it has the embedded-BuildKit builder
    except ToolMissing as e:
        pytest.skip(str(e))
    loop = loop_factory(3 << 30)
    launcher.extra = ["--ci-repo", "Team/App", "--ci-branch", "main", "--ci-default-branch", "main"]

    # -- a fresh disk: formatted once, mounted noatime, both services up -----------------------------------
    first = launcher.run(device=loop.device)
    assert f"creating an ext4 filesystem on {loop.device}" in first.stderr, first.text
    uuid_before = fs_uuid(loop.device)
    assert uuid_before
    assert "noatime" in mount_options(launcher.root)
    for sub in ("cachesvc", "docker", "etc", "log"):
        assert (launcher.root / sub).is_dir(), sub
    assert (launcher.root / "etc" / "cachesvc.toml").is_file()
    daemon_json = json.loads((launcher.root / "etc" / "daemon.json").read_text())
    assert daemon_json["data-root"] == str(launcher.root / "docker")
    assert int(daemon_json["builder"]["gc"]["defaultKeepStorage"]) > 0
    assert "builder ready" in first.stdout

    # -- idempotent: a second run changes nothing and exits 0 -----------------------------------------------
    pids = launcher.pids()
    stamps = {p.name: p.stat().st_mtime_ns for p in (launcher.root / "etc").iterdir()}
    second = launcher.run(device=loop.device)
    assert launcher.pids() == pids
    assert all(pid_alive(pid) for pid in pids.values())
    assert {p.name: p.stat().st_mtime_ns for p in (launcher.root / "etc").iterdir()} == stamps
    assert "cachesvc already running" in second.stderr and "dockerd already running" in second.stderr, second.text
    changes = re.findall(r"^launch\.sh: (creating|wrote|started|mounted|remounting|restarting)\b", second.stderr,
                         re.MULTILINE)
    assert changes == [], second.text
    assert second.stdout == first.stdout
    assert fs_uuid(loop.device) == uuid_before

    # -- the CI job: flags exactly as printed (this Docker keeps the classic store: inline cache) ------------
    flags = first.flags()
    registry = launcher.registry
    cache_ref = f"{registry}/cache/team/app:main"
    assert flags == ["--cache-from", cache_ref, "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--tag", cache_ref], \
        first.stdout
    assert first.push_command() == [cache_ref]

    base = push_layout(build_busybox_layout(tmp_path / "busybox"), registry, "base/busybox:latest",
                       config=ContainersConfig(tmp_path / "containers", insecure_hosts=[registry]))
    ctx = write_build_context(tmp_path / "ctx", base, uuid.uuid4().hex)
    env = docker_env(launcher, tmp_path / "docker-client")
    build = [docker, "build", "--progress=plain", "--network=host", *flags]
    cold = run([*build, str(ctx.path)], env=env)
    steps = cacheable(cold.output)
    assert len(steps) == ctx.cacheable_steps and not any(s.cached for s in steps), cold.output
    image_id = run([docker, "image", "inspect", "-f", "{{.Id}}", cache_ref], env=env).output.strip()
    run([docker, "push", *first.push_command()], env=env)
    (launcher.root / "cachesvc" / "kept-by-test").write_text("this file must survive the replacement\n")

    # -- replace the builder: stop everything, wipe the engine's state, detach the disk ---------------------
    stopped = launcher.stop()
    assert stopped.returncode == 0, stopped.text
    assert not any(pid_alive(pid) for pid in pids.values())
    assert mounts_under(launcher.run_dir) == [], "dockerd's runtime mounts must be released"
    run(["rm", "-rf", str(launcher.root / "docker")])
    run(["umount", str(launcher.root)])
    new_device = loop.reattach()

    # A new branch: its own cache tag does not exist yet, so the default branch's (just pushed) must serve.
    launcher.extra = ["--ci-repo", "Team/App", "--ci-branch", "feature/login", "--ci-default-branch", "main"]
    log_path = launcher.root / "log" / "cachesvc.log"
    again = launcher.run(device=new_device)
    assert "creating" not in again.stderr, again.text
    assert f"{new_device} already holds an ext4 filesystem: keeping its data" in again.stderr, again.text
    assert fs_uuid(new_device) == uuid_before
    assert (launcher.root / "cachesvc" / "kept-by-test").is_file()
    log_mark = len(log_path.read_text(errors="replace")) if log_path.exists() else 0
    assert run([docker, "image", "ls", "-aq"], env=env).output.strip() == ""

    branch_ref = f"{registry}/cache/team/app:feature-login"
    flags = again.flags()
    assert flags == ["--cache-from", branch_ref, "--cache-from", cache_ref, "--build-arg",
                     "BUILDKIT_INLINE_CACHE=1", "--tag", branch_ref], again.stdout
    warm = run([docker, "build", "--progress=plain", "--network=host", *flags, str(ctx.path)], env=env)
    assert f"importing cache manifest from {cache_ref}" in warm.output, warm.output
    steps = cacheable(warm.output)
    assert len(steps) == ctx.cacheable_steps, warm.output
    rebuilt = [s.text for s in steps if not s.cached]
    assert rebuilt == [], f"steps rebuilt instead of CACHED: {rebuilt}\n{warm.output}"
    # the /dev/urandom step makes any re-executed step change the id: equal ids prove every layer was reused
    assert run([docker, "image", "inspect", "-f", "{{.Id}}", branch_ref], env=env).output.strip() == image_id

    served = parse_request_log(log_path.read_text(errors="replace")[log_mark:])
    assert any(r.method in ("GET", "HEAD") and r.path == "/v2/cache/team/app/manifests/main" for r in served), \
        [f"{r.method} {r.path}" for r in served]
    assert any(r.method == "GET" and re.match(r"/v2/cache/team/app/blobs/sha256:", r.path) for r in served)
