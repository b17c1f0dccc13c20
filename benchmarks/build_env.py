"""The build benchmark's machinery: tmpfs storage, registry processes inside the private network namespaces,
and the build engines (Docker Engine started by ``builder-image/launch.sh``, and buildah).

Every piece of state lives on a tmpfs (the machine's ext4 disk is mounted with ``discard``: wiping and
recreating builder state there measures the disk's trim, not caching), so all registries and the engine are
compared on the same medium: RAM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.netns import REMOTE_ADDR, NetnsPair
from tests.support.clients import ContainersConfig, mounts_under, tool_path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "builder-image" / "launch.sh"
DISTRIBUTION_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
#: dockerd must not touch the host's firewall or bridges (the flags the launch.sh tests use).
DOCKERD_ARGS = ("--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                "--bridge=none", "--log-level=warn")

# Fixed ports: the builder's network namespace is private, so nothing else can hold them.
CACHESVC_PORT = 5000
DIST_PORT = 5001
MEM_PORT = 5002
BASE_PORT = 5003
REMOTE_PORT = 5000
#: the remote registry's port on its own loopback when a delay line (``--link-rtt``) stands in front of it
REMOTE_INNER_PORT = 5001


@dataclass
class Cmd:
    """Outcome of one command: merged output and wall time."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def check(self) -> Cmd:
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-40:])
            raise RuntimeError(f"command failed ({self.returncode}): {' '.join(self.args)}\n{tail}")
        return self


def run(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 1800, check: bool = True,
        shell: bool = False) -> Cmd:
    """Run a command with stdout+stderr merged; ``shell``: ``args[0]`` is a bash script (pipefail on)."""
    cmd = ["bash", "-o", "pipefail", "-c", args[0]] if shell else list(args)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    result = Cmd(cmd, proc.returncode, proc.stdout.decode(errors="replace"), time.monotonic() - t0)
    return result.check() if check else result


def run_timed(args: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float = 1800) -> tuple[Cmd, list[tuple[float, str]]]:
    """Like ``run`` (checked), and also when each output line arrived (seconds since the start)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    deadline = t0 + timeout
    for raw in proc.stdout:
        lines.append((time.monotonic() - t0, raw.decode(errors="replace").rstrip("\n")))
        if time.monotonic() > deadline:
            proc.kill()
            break
    rc = proc.wait()
    result = Cmd(list(args), rc, "\n".join(text for _, text in lines), time.monotonic() - t0)
    return result.check(), lines


def unmount_under(path: Path, *, include_self: bool = False) -> None:
    """Unmount everything below ``path`` (deepest first; lazily if busy)."""
    root = str(Path(path).resolve())
    for mountpoint in sorted(mounts_under(path), key=len, reverse=True):
        if mountpoint == root and not include_self:
            continue
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)


def mount_tmpfs(path: Path, size: str = "16g") -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True)


# ------------------------------------------------------------------------------------------------------------
# server processes inside a namespace


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


class NsServer:
    """A registry process in one of the namespaces; ready once ``GET /v2/`` answers there."""

    def __init__(self, name: str, ns: str, prefix: list[str], command: list[str], url: str, log: Path) -> None:
        self.name, self.ns, self.prefix, self.command, self.url, self.log = name, ns, prefix, command, url, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def start(self, timeout: float = 60) -> NsServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, *self.command], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if NetnsPair.call_in(self.ns, lambda: http_status(self.url + "/v2/")) in (200, 401):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready on {self.url}: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def distribution_config(path: Path, root: Path, addr: str) -> Path:
    """CNCF distribution, filesystem driver, access log on (as cachesvc's is), deletes on."""
    path.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: false\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: {addr}\n"
    )
    return path


def memregistry(name: str, pair: NetnsPair, port: int, logs: Path) -> NsServer:
    return NsServer(name, pair.builder, pair.enter(pair.builder),
                    [sys.executable, "-m", "benchmarks.memregistry", "--listen", f"127.0.0.1:{port}"],
                    f"http://127.0.0.1:{port}", logs / f"{name}.log")


def colocated_distribution(pair: NetnsPair, data: Path, logs: Path) -> NsServer:
    cfg = distribution_config(logs / "distribution-colocated.yml", data / "distribution-colocated",
                              f"127.0.0.1:{DIST_PORT}")
    return NsServer("distribution (co-located)", pair.builder, pair.enter(pair.builder),
                    [DISTRIBUTION_BIN, "serve", str(cfg)], f"http://127.0.0.1:{DIST_PORT}",
                    logs / "distribution-colocated.log")


def remote_distribution(pair: NetnsPair, data: Path, logs: Path, rtt_ms: float = 0.0) -> NsServer:
    """distribution on the remote host: on the veth's address, or behind a delay line there (``rtt_ms`` > 0)."""
    addr = f"127.0.0.1:{REMOTE_INNER_PORT}" if rtt_ms > 0 else f"{REMOTE_ADDR}:{REMOTE_PORT}"
    cfg = distribution_config(logs / "distribution-remote.yml", data / "distribution-remote", addr)
    return NsServer("distribution (remote)", pair.remote, pair.exec_in(pair.remote),
                    [DISTRIBUTION_BIN, "serve", str(cfg)], f"http://{addr}", logs / "distribution-remote.log")


def remote_delay(pair: NetnsPair, logs: Path, rtt_ms: float, rate_bits: int) -> NsServer:
    """The delay line (``benchmarks/delayline.py``) on the remote host's veth address, in front of its registry:
    the modelled round-trip time of the link."""
    return NsServer("delay line (remote)", pair.remote, pair.exec_in(pair.remote),
                    [sys.executable, "-m", "benchmarks.delayline", "--listen", f"{REMOTE_ADDR}:{REMOTE_PORT}",
                     "--to", f"127.0.0.1:{REMOTE_INNER_PORT}", "--rtt-ms", f"{rtt_ms:g}",
                     "--rate-mbit", f"{max(rate_bits, 1) / 1e6:g}"],
                    f"http://{REMOTE_ADDR}:{REMOTE_PORT}", logs / "delayline.log")


def cachesvc_server(pair: NetnsPair, root: Path, logs: Path) -> NsServer:
    """cachesvc as launch.sh would start it, for engines launch.sh does not support (buildah)."""
    exe = Path(sys.executable).with_name("cachesvc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cachesvc"]
    return NsServer("cachesvc", pair.builder, pair.enter(pair.builder),
                    [*cmd, "serve", "--listen", f"127.0.0.1:{CACHESVC_PORT}", "--root", str(root)],
                    f"http://127.0.0.1:{CACHESVC_PORT}", logs / "cachesvc.log")


def skopeo_push(pair: NetnsPair, src: str, dest: str, conf: ContainersConfig) -> Cmd:
    """``skopeo copy`` run inside the builder namespace (where the registries are)."""
    return run([*pair.enter(pair.builder), tool_path("skopeo"), "--policy", str(conf.policy), "copy",
                "--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests", src, dest],
               env=conf.env(), timeout=300)


# ------------------------------------------------------------------------------------------------------------
# engines


@dataclass
class Build:
    """One build: its output, wall time, and which cacheable steps were CACHED."""

    output: str
    seconds: float
    steps: list[tuple[str, str, bool]]  # (stage, instruction, cached) for RUN/COPY/ADD, Dockerfile order
    image_id: str
    layers: list[str]  # diff ids of the image's layers, base first
    phases: dict[str, float] = field(default_factory=dict)  # where the time went (engine-specific)
    timeline: list[tuple[float, str]] = field(default_factory=list, repr=False)  # (seconds, output line)

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if s[2])


_VERTEX = re.compile(r"^#(\d+) (.*)$")
_STEP = re.compile(r"^\[(?:(\S+) )?(\d+)/(\d+)\] (\w+)\b")


@dataclass
class BuildkitProgress:
    """What BuildKit's plain progress says: steps (stage, instruction, cached) in Dockerfile order, and
    when the cache import started and its last layer pull finished (seconds since the build started)."""

    steps: list[tuple[str, str, bool]]
    cache_manifest_at: float | None
    last_pull_at: float | None
    first_pull_at: float | None
    step_seconds: dict[str, float]

    def phases(self, total: float) -> dict[str, float]:
        """resolve (start .. cache manifest imported), pull (.. last layer pulled), unpack (.. the end: the
        layers applied to the engine's store, the image written)."""
        if self.cache_manifest_at is None:
            return {}
        pulled = self.last_pull_at if self.last_pull_at is not None else self.cache_manifest_at
        return {"resolve": self.cache_manifest_at, "pull": max(0.0, pulled - self.cache_manifest_at),
                "unpack": max(0.0, total - pulled)}


def parse_buildkit_plain(lines: Sequence[tuple[float, str]]) -> BuildkitProgress:
    """Parse ``--progress=plain`` output whose lines carry their arrival time."""
    vertices: dict[int, tuple[str, int, str]] = {}
    cached: set[int] = set()
    done: dict[int, float] = {}
    manifest_vertices: set[int] = set()
    cache_manifest_at = first_pull = last_pull = None
    for at, text in lines:
        m = _VERTEX.match(text.strip())
        if not m:
            continue
        vertex, rest = int(m.group(1)), m.group(2)
        step = _STEP.match(rest)
        if step and vertex not in vertices:
            vertices[vertex] = (step.group(1) or "", int(step.group(2)), step.group(4).upper())
        elif rest.startswith("importing cache manifest"):
            manifest_vertices.add(vertex)
        elif rest == "CACHED":
            cached.add(vertex)
        elif rest.startswith("DONE "):
            with contextlib.suppress(ValueError):
                done[vertex] = float(rest[5:].rstrip("s"))
            if vertex in manifest_vertices:
                cache_manifest_at = at
        elif rest.startswith("pulling "):
            first_pull = at if first_pull is None else first_pull
            if rest.endswith("done"):
                last_pull = at
    steps = []
    step_seconds = {}
    for vertex, (stage, index, instruction) in sorted(vertices.items(), key=lambda kv: kv[0]):
        if instruction in ("RUN", "COPY", "ADD"):
            steps.append((stage, index, instruction, vertex in cached))
            if vertex in done:
                step_seconds[f"{stage} {index} {instruction}"] = done[vertex]
    # Dockerfile order: stages in order of their first vertex, steps by index within a stage
    first: dict[str, int] = {}
    for i, (stage, _, _, _) in enumerate(steps):
        first.setdefault(stage, i)
    ordered = sorted(steps, key=lambda s: (first[s[0]], s[1]))
    return BuildkitProgress([(s, ins, c) for s, _, ins, c in ordered], cache_manifest_at, last_pull, first_pull,
                            step_seconds)


class DockerEngine:
    """Docker Engine 20.10 (embedded BuildKit, classic image store) on the builder launch.sh makes.

    launch.sh mounts nothing here (``--device none``): its root is a tmpfs the benchmark mounted, holding
    ``docker/`` (the engine's state) and ``cachesvc/``. A fresh builder is ``launch.sh --stop``, removing
    ``docker/``, and ``launch.sh`` again; cachesvc's data stays, as it does on a real builder's disk.
    """

    name = "docker"

    def __init__(self, pair: NetnsPair, root: Path, run_dir: Path, client_dir: Path) -> None:
        self.pair = pair
        self.root = root
        self.run_dir = run_dir
        self.client_dir = client_dir
        self.docker_bin = tool_path("docker")
        self.dockerd_bin = tool_path("dockerd")
        self.flags: list[str] = []
        self.push_refs: list[str] = []
        self.launch_output = ""
        self.start_seconds: list[float] = []

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    def launch_cmd(self, *extra: str) -> list[str]:
        exe = Path(sys.executable).with_name("cachesvc")
        cmd = [*self.pair.enter(self.pair.builder), "bash", str(LAUNCH), "--no-systemd", "--device", "none",
               "--root", str(self.root), "--run-dir", str(self.run_dir), "--cachesvc-bin", str(exe),
               "--cachesvc-listen", f"127.0.0.1:{CACHESVC_PORT}", "--engine", "dockerd",
               "--engine-bin", self.dockerd_bin, "--engine-addr", f"unix://{self.socket}", "--timeout", "120",
               "--ci-repo", "bench/app", "--ci-branch", "main"]
        cmd += [f"--engine-arg={a}" for a in DOCKERD_ARGS]
        # "http://": the registry service strips it (with a warning), and BuildKit then uses plain HTTP for cache
        # imports too (without it, BuildKit would try HTTPS for --cache-from)
        cmd.append(f"--engine-arg=--insecure-registry=http://{REMOTE_ADDR}:{REMOTE_PORT}")
        return [*cmd, *extra]

    def start(self) -> None:
        t0 = time.monotonic()
        proc = subprocess.run(self.launch_cmd(), capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"launch.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               f"{self.log_tail()}")
        self.start_seconds.append(time.monotonic() - t0)
        self.launch_output = proc.stdout
        self.flags = [w for line in proc.stdout.splitlines() if line.startswith("  --") for w in line.split()]
        self.push_refs = next((line.split("docker push ", 1)[1].split() for line in proc.stdout.splitlines()
                               if "docker push " in line), [])

    def stop(self) -> None:
        if (self.run_dir / "state").exists() or (self.run_dir / "engine.pid").exists():
            subprocess.run(self.launch_cmd("--stop"), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        unmount_under(self.run_dir)
        unmount_under(self.root / "docker")

    def fresh(self) -> None:
        """A new builder: the engine's state is wiped (cachesvc's data stays on the "disk")."""
        self.stop()
        shutil.rmtree(self.root / "docker", ignore_errors=True)
        self.start()

    def log_tail(self, n: int = 20) -> str:
        texts = []
        for log in sorted((self.root / "log").glob("*.log")):
            texts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(texts)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(self.client_dir), "BUILDKIT_PROGRESS": "plain"})
        env.pop("DOCKER_CONTEXT", None)
        return env

    def docker(self, *args: str, timeout: float = 1800, check: bool = True) -> Cmd:
        return run([self.docker_bin, *args], env=self.env(), timeout=timeout, check=check)

    def info(self) -> dict[str, str]:
        out = self.docker("info", "--format", "{{json .}}").output
        data = json.loads(out.strip().splitlines()[-1])
        return {"engine": f"Docker Engine {data.get('ServerVersion')}", "storage_driver": data.get("Driver", "?"),
                "data_root": data.get("DockerRootDir", "?")}

    def build(self, ctx: Path, tag: str, cache_from: Sequence[str] = ()) -> Build:
        args = [self.docker_bin, "build", "--progress=plain", "--network=host", "--build-arg",
                "BUILDKIT_INLINE_CACHE=1"]
        for ref in cache_from:
            args += ["--cache-from", ref]
        result, lines = run_timed([*args, "-t", tag, str(ctx)], env=self.env())
        progress = parse_buildkit_plain(lines)
        return Build(result.output, result.seconds, progress.steps, self.image_id(tag), self.layers(tag),
                     progress.phases(result.seconds), lines)

    def image_id(self, ref: str) -> str:
        return self.docker("image", "inspect", "-f", "{{.Id}}", ref).output.strip()

    def layers(self, ref: str) -> list[str]:
        out = self.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref).output
        return list(json.loads(out.strip()))

    def tag(self, src: str, dest: str) -> None:
        self.docker("tag", src, dest)

    def push(self, ref: str) -> Cmd:
        return self.docker("push", ref)

    def save_archive(self, ref: str, archive: Path) -> Cmd:
        """``docker save`` of the image (it carries its inline cache) piped through zstd into ``archive``."""
        return run([f"set -o pipefail; '{self.docker_bin}' save '{ref}' | zstd -q -T0 -3 --long=27 -o '{archive}' -f"],
                   env=self.env(), shell=True)

    def load_archive(self, archive: Path) -> Cmd:
        return run([f"set -o pipefail; zstd -q -dc --long=27 '{archive}' | '{self.docker_bin}' load"],
                   env=self.env(), shell=True)


class BuildahEngine:
    """buildah 1.28 with ``--layers``; storage (overlay, else vfs) on the tmpfs, run inside the builder netns.

    launch.sh starts only buildkitd or dockerd, so for buildah the benchmark starts cachesvc itself, the
    way launch.sh does (``cachesvc serve`` with its data on the builder's tmpfs).
    """

    name = "buildah"

    def __init__(self, pair: NetnsPair, root: Path, conf_dir: Path, insecure: Sequence[str]) -> None:
        self.pair = pair
        self.root = root
        self.binary = tool_path("buildah")
        self.config = ContainersConfig(conf_dir)
        lines = ["unqualified-search-registries = []", ""]
        for host in insecure:
            lines += ["[[registry]]", f'location = "{host}"', "insecure = true", ""]
        self.config.registries_conf.write_text("\n".join(lines))
        self.driver = "overlay"
        self.storage_conf = conf_dir / "storage.conf"

    @property
    def graphroot(self) -> Path:
        return self.root / "buildah" / "storage"

    @property
    def runroot(self) -> Path:
        return self.root / "buildah" / "run"

    def _write_storage_conf(self) -> None:
        self.storage_conf.write_text(f'[storage]\ndriver = "{self.driver}"\nrunroot = "{self.runroot}"\n'
                                     f'graphroot = "{self.graphroot}"\n')

    def env(self) -> dict[str, str]:
        env = self.config.env()
        tmp = self.root / "buildah" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env.update({"CONTAINERS_STORAGE_CONF": str(self.storage_conf), "BUILDAH_ISOLATION": "chroot",
                    "TMPDIR": str(tmp)})
        return env

    def buildah(self, *args: str, check: bool = True, timeout: float = 1800) -> Cmd:
        cmd = [*self.pair.enter(self.pair.builder), self.binary, "--root", str(self.graphroot), "--runroot",
               str(self.runroot), "--storage-driver", self.driver, "--registries-conf",
               str(self.config.registries_conf), *args]
        return run(cmd, env=self.env(), check=check, timeout=timeout)

    def start(self) -> None:
        self._write_storage_conf()
        probe = self.buildah("info", check=False)
        if probe.returncode != 0 and self.driver == "overlay":
            self.stop()
            self.driver = "vfs"
            self._write_storage_conf()
            self.buildah("info")

    def stop(self) -> None:
        unmount_under(self.root / "buildah")

    def fresh(self) -> None:
        self.stop()
        shutil.rmtree(self.root / "buildah", ignore_errors=True)
        self.start()

    def info(self) -> dict[str, str]:
        version = run([self.binary, "--version"]).output.strip()
        return {"engine": version, "storage_driver": self.driver, "data_root": str(self.graphroot)}

    def build(self, ctx: Path, tag: str, cache_from: str | None = None, cache_to: str | None = None) -> Build:
        args = ["build", "--isolation", "chroot", "--tls-verify=false", "--signature-policy",
                str(self.config.policy), "--network", "host", "--format", "oci", "--layers", "-t", tag]
        if cache_to:
            args += ["--cache-to", cache_to]
        if cache_from:
            args += ["--cache-from", cache_from]
        result = self.buildah(*args, str(ctx))
        steps = buildah_steps(result.output)
        return Build(result.output, result.seconds, steps, self.image_id(tag), self.layers(tag))

    def image_id(self, ref: str) -> str:
        return self.buildah("images", "--no-trunc", "-q", ref).output.strip().splitlines()[-1]

    def layers(self, ref: str) -> list[str]:
        out = self.buildah("inspect", "--type", "image", ref).output
        return [str(d) for d in json.loads(out)["OCIv1"]["rootfs"]["diff_ids"]]

    def save_archive(self, archive: Path) -> Cmd:
        """tar of buildah's whole storage (its layers are its cache) through zstd into ``archive``."""
        self.stop()
        return run([f"set -o pipefail; tar -C '{self.graphroot}' -cf - . | zstd -q -T0 -3 --long=27 "
                    f"-o '{archive}' -f"], shell=True)

    def load_archive(self, archive: Path) -> Cmd:
        self.graphroot.mkdir(parents=True, exist_ok=True)
        return run([f"set -o pipefail; zstd -q -dc --long=27 '{archive}' | tar -C '{self.graphroot}' -xf -"],
                   shell=True)


_BUILDAH_STEP = re.compile(r"^\[(\d+)/\d+\] STEP \d+/\d+: (\w+)\b(.*)$|^STEP \d+/\d+: (\w+)\b(.*)$")
_BUILDAH_AS = re.compile(r"\bAS (\S+)\s*$", re.IGNORECASE)
_BUILDAH_DONE = re.compile(r"^--> [0-9a-f]{11,64}$")
BUILDAH_PUSHED = re.compile(r"^--> Pushing cache (\S+):([0-9a-f]{64})$", re.M)


def buildah_steps(output: str) -> list[tuple[str, str, bool]]:
    """(stage, instruction, cached) for each RUN/COPY/ADD step buildah reported.

    buildah prints ``[k/n] STEP i/m: INSTRUCTION ...`` when a step starts, ``--> Using cache <id>`` when it
    came from its cache (local, or pulled with ``--cache-from``) and ``--> <short id>`` when it finished.
    Stages run concurrently (a ``COPY --from`` waits for its stage), so a finish belongs to the most recent
    step still open: a stack.
    """
    stages: dict[str, str] = {}
    steps: list[list[object]] = []
    open_steps: list[list[object]] = []
    for raw in output.splitlines():
        line = raw.strip()
        m = _BUILDAH_STEP.match(line)
        if m:
            prefix = m.group(1) or ""
            instruction = (m.group(2) or m.group(4)).upper()
            rest = m.group(3) if m.group(2) else m.group(5)
            if instruction == "FROM":
                found = _BUILDAH_AS.search(rest or "")
                stages[prefix] = found.group(1).lower() if found else prefix
                continue
            step: list[object] = [stages.get(prefix, prefix), instruction, False]
            open_steps.append(step)
            if instruction in ("RUN", "COPY", "ADD"):
                steps.append(step)
            continue
        if not open_steps:
            continue
        if line.startswith("--> Using cache"):
            open_steps[-1][2] = True
        elif _BUILDAH_DONE.match(line):
            open_steps.pop()
    return [(str(s), str(i), bool(c)) for s, i, c in steps]
