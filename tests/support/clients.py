"""Real registry clients driven by the end-to-end tests: dockerd + BuildKit, buildah, skopeo, oras; and
`RequestLog`, the server-side view (what the registry under test logged it served).

Each client gets private state (storage roots, config files, sockets) under a directory the test owns, so a
test can wipe a client's local cache completely and prove that a rebuild came from the registry under test,
and so nothing depends on files in /etc or $HOME that a clean CI machine lacks. Everything talks to
127.0.0.1 only, over plain HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import ServerProcess

# --------------------------------------------------------------------------------------------------------
# tool discovery


class ToolMissing(RuntimeError):
    """A client binary is not installed; `package` names the Debian package that provides it."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool} not found: apt-get install {package}")
        self.tool = tool
        self.package = package


#: tool -> (absolute path to prefer, Debian package). Debian's docker client is pinned on purpose: the
#: /usr/local/bin/docker on PATH in this image is a newer static CLI without the BuildKit builder.
TOOLS: dict[str, tuple[str, str]] = {
    "docker": ("/usr/bin/docker", "docker.io"),
    "dockerd": ("/usr/sbin/dockerd", "docker.io"),
    "buildah": ("/usr/bin/buildah", "buildah"),
    "skopeo": ("/usr/bin/skopeo", "skopeo"),
    "busybox": ("/usr/bin/busybox", "busybox-static"),
}


def tool_path(name: str) -> str:
    """Absolute path of a client binary, or ToolMissing (tests turn it into a skip naming the package)."""
    preferred, package = TOOLS[name]
    if os.access(preferred, os.X_OK):
        return preferred
    if name != "docker":  # any other docker on PATH may lack the builder, so never fall back for it
        found = shutil.which(name)
        if found:
            return found
    raise ToolMissing(name, package)


def host_of(registry: str) -> str:
    """`http://127.0.0.1:5000/` or `127.0.0.1:5000` -> `127.0.0.1:5000`; refuses anything not on loopback."""
    host = re.sub(r"^[a-z]+://", "", registry).rstrip("/")
    if not (host.startswith("127.") or host.startswith("localhost:") or host.startswith("[::1]")):
        raise ValueError(f"e2e clients only talk to loopback registries, got {registry!r}")
    return host


@dataclass
class Run:
    """Outcome of one client command: the text a human would read, and how long it took."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def check(self) -> Run:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.output)
        return self


def run(args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300, check: bool = True) -> Run:
    """Run a client with stdout+stderr merged (build tools print progress on stderr, results on stdout)."""
    t0 = time.monotonic()
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(env or os.environ), cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    result = Run(list(args), proc.returncode, proc.stdout.decode(errors="replace"), time.monotonic() - t0)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(args), result.output)
    return result


# --------------------------------------------------------------------------------------------------------
# containers/image configuration shared by skopeo and buildah


def write_policy(path: Path) -> Path:
    """containers-policy.json(5) accepting any image: these tests never verify signatures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


@dataclass
class ContainersConfig:
    """Private containers-registries.conf / policy.json / storage.conf / auth.json for skopeo and buildah.

    Pointing the CONTAINERS_* variables at files we write means neither /etc/containers nor $HOME matters,
    and short names never resolve to a remote registry (unqualified-search-registries is empty).
    """

    directory: Path
    insecure_hosts: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy = write_policy(self.directory / "policy.json")
        lines = ["unqualified-search-registries = []", ""]
        for host in self.insecure_hosts:
            lines += ["[[registry]]", f'location = "{host_of(host)}"', "insecure = true", ""]
        self.registries_conf = self.directory / "registries.conf"
        self.registries_conf.write_text("\n".join(lines))
        self.auth_file = self.directory / "auth.json"
        self.auth_file.write_text('{"auths": {}}')
        self.containers_conf = self.directory / "containers.conf"
        self.containers_conf.write_text("")

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update({
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "CONTAINERS_CONF": str(self.containers_conf),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
        })
        return env


# --------------------------------------------------------------------------------------------------------
# skopeo


def _scratch_config(stack: contextlib.ExitStack) -> ContainersConfig:
    """A throwaway ContainersConfig, removed when `stack` closes."""
    return ContainersConfig(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="skopeo-"))))


def skopeo_copy(src: str, dest: str, *, config: ContainersConfig | None = None, preserve_digests: bool = True,
                extra_args: Iterable[str] = (), timeout: float = 180) -> Run:
    """`skopeo copy SRC DEST` with TLS off both ways (loopback registries speak plain HTTP).

    `src`/`dest` are transport references: `oci:DIR:TAG`, `dir:DIR`, `docker://127.0.0.1:PORT/repo:tag`.
    `preserve_digests` makes skopeo fail rather than recompress, so a digest mismatch is an error, not a
    silent rewrite that would hide a registry that mangles bytes.
    """
    skopeo = tool_path("skopeo")
    with contextlib.ExitStack() as stack:
        if config is None:
            config = _scratch_config(stack)
        cmd = [skopeo, "--policy", str(config.policy), "copy", "--src-tls-verify=false",
               "--dest-tls-verify=false"]
        if preserve_digests:
            cmd.append("--preserve-digests")
        cmd += [*extra_args, src, dest]
        return run(cmd, env=config.env(), timeout=timeout)


def skopeo_inspect_raw(ref: str, *, config: ContainersConfig | None = None, timeout: float = 60) -> bytes:
    """The manifest bytes exactly as the registry serves them (`skopeo inspect --raw`)."""
    skopeo = tool_path("skopeo")
    with contextlib.ExitStack() as stack:
        if config is None:
            config = _scratch_config(stack)
        cmd = [skopeo, "--policy", str(config.policy), "inspect", "--raw", "--tls-verify=false", ref]
        proc = subprocess.run(cmd, capture_output=True, env=config.env(), timeout=timeout, check=True)
        return proc.stdout


# --------------------------------------------------------------------------------------------------------
# oras (the Python package: it has no CLI)

ORAS_EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


def _oras_registry(registry: str):  # -> oras.provider.Registry (oras is optional: imported lazily)
    try:
        import oras.provider
    except ImportError as e:  # pragma: no cover - exercised only on machines without the test extra
        raise ToolMissing("oras (Python)", "python package oras: pip install -e .[test]") from e
    return oras.provider.Registry(hostname=host_of(registry), insecure=True)


@dataclass
class OrasPushed:
    """What `oras_push` stored: the manifest as sent, its digest, and the digests of the file blobs."""

    manifest: dict[str, object]
    digest: str
    layer_digests: list[str] = field(default_factory=list)


def oras_push(registry: str, target: str, files: Sequence[Path], *, artifact_type: str,
              annotations: Mapping[str, str] | None = None, chunked: bool = False,
              chunk_size: int = 64 * 1024) -> OrasPushed:
    """Push `files` as an OCI 1.1 artifact (`artifactType` + empty config) to `registry`/`target`.

    oras-py's own `push()` can only express an artifact type through the config media type (the pre-1.1
    convention) and never sets `artifactType`, so this composes the manifest itself from oras-py's blob and
    manifest upload calls. `chunked` uses POST/PATCH.../PUT uploads instead of POST+PUT.
    """
    import hashlib

    import oras.defaults
    import oras.oci

    reg = _oras_registry(registry)
    container = reg.get_container(target)
    layers: list[dict[str, object]] = []
    for path in files:
        layer = oras.oci.NewLayer(str(path), media_type="application/octet-stream")
        layer["annotations"] = {oras.defaults.annotation_title: Path(path).name}
        response = reg.upload_blob(str(path), container, layer, do_chunked=chunked, chunk_size=chunk_size)
        reg._check_200_response(response)
        layers.append(layer)

    empty = b"{}"
    with tempfile.NamedTemporaryFile(prefix="oras-empty-", suffix=".json") as tmp:
        tmp.write(empty)
        tmp.flush()
        config = {"mediaType": ORAS_EMPTY_CONFIG_MEDIA_TYPE, "size": len(empty),
                  "digest": "sha256:" + hashlib.sha256(empty).hexdigest()}
        reg._check_200_response(reg.upload_blob(tmp.name, container, config))

    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": oras.defaults.default_manifest_media_type,
        "artifactType": artifact_type,
        "config": config,
        "layers": layers,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    response = reg.upload_manifest(manifest, container)
    reg._check_200_response(response)
    digest = response.headers.get("Docker-Content-Digest", "")
    return OrasPushed(manifest, digest, [str(layer["digest"]) for layer in layers])


def oras_pull(registry: str, target: str, outdir: Path) -> list[Path]:
    """Download every layer of `target` into `outdir` under its title annotation; returns the paths."""
    reg = _oras_registry(registry)
    outdir.mkdir(parents=True, exist_ok=True)
    return [Path(p) for p in reg.pull(target=target, outdir=str(outdir))]


def oras_manifest(registry: str, target: str) -> dict[str, object]:
    """The manifest of `target` as the registry returns it (parsed JSON)."""
    reg = _oras_registry(registry)
    return dict(reg.get_manifest(reg.get_container(target)))


def oras_tags(registry: str, repository: str) -> list[str]:
    """All tags of `repository` (follows `Link` pagination)."""
    reg = _oras_registry(registry)
    return list(reg.get_tags(reg.get_container(f"{repository}:latest")))


# --------------------------------------------------------------------------------------------------------
# buildah


class Buildah:
    """buildah with a private storage root, vfs driver and chroot isolation (no nested namespaces needed).

    vfs keeps the storage a plain directory tree (no mounts), so `wipe()` is an rm -rf and leaves nothing
    behind; chroot isolation runs RUN steps without a second OCI runtime setup.
    """

    def __init__(self, workdir: Path, insecure_hosts: Sequence[str] = ()) -> None:
        self.binary = tool_path("buildah")
        self.workdir = Path(workdir)
        self.root = self.workdir / "storage"
        self.runroot = self.workdir / "run"
        self.config = ContainersConfig(self.workdir / "conf", insecure_hosts)
        self.storage_conf = self.workdir / "conf" / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.runroot}"\ngraphroot = "{self.root}"\n')

    def env(self) -> dict[str, str]:
        env = self.config.env()
        env.update({"CONTAINERS_STORAGE_CONF": str(self.storage_conf), "BUILDAH_ISOLATION": "chroot",
                    "TMPDIR": str(self._tmp())})
        return env

    def _tmp(self) -> Path:
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "vfs", "--registries-conf", str(self.config.registries_conf), *args]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> Run:
        return run(self.cmd(*args), env=self.env(), timeout=timeout, check=check)

    def build(self, context: Path, tag: str, *, cache_to: str | None = None, cache_from: str | None = None,
              layers: bool = True, dockerfile: Path | None = None, extra_args: Iterable[str] = (),
              timeout: float = 300, check: bool = True) -> Run:
        """`buildah build` of `context`.

        cache_to/cache_from are `host:port/repo` without a tag: buildah tags each cached step by its key.
        """
        args = ["build", "--isolation", "chroot", "--tls-verify=false", "--signature-policy",
                str(self.config.policy), "--network", "host", "--format", "oci", "-t", tag]
        if layers:
            args.append("--layers")
        if cache_to:
            args += ["--cache-to", cache_to]
        if cache_from:
            args += ["--cache-from", cache_from]
        if dockerfile:
            args += ["-f", str(dockerfile)]
        args += [*extra_args, str(context)]
        return self.run(*args, timeout=timeout, check=check)

    def images(self) -> list[str]:
        """Image ids in the private store (empty after `wipe()`)."""
        out = self.run("images", "-q", "--no-trunc", check=False)
        if out.returncode != 0:
            return []
        return [line.strip() for line in out.output.splitlines() if line.strip()]

    def wipe(self) -> None:
        """Forget every image, layer and container: the next build can only get layers from a registry."""
        if self.root.exists():
            self.run("rm", "--all", check=False, timeout=60)
            self.run("rmi", "--all", "--force", check=False, timeout=60)
        _unmount_under(self.workdir)
        for d in (self.root, self.runroot, self.workdir / "tmp"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# dockerd + BuildKit


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, from /proc/self/mountinfo."""
    prefix = str(Path(path).resolve())
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
                found.append(mountpoint)
    return found


def _unmount_under(path: Path) -> None:
    """Lazily unmount whatever a daemon left mounted below `path` (deepest first) so rmtree can succeed."""
    if not Path(path).exists():
        return
    for mountpoint in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


_STEP_RE = re.compile(r"^#(\d+) \[(?:(\S+) )?(\d+)/(\d+)\] (\w+)\b(.*)$")


@dataclass
class BuildStep:
    """One Dockerfile instruction as BuildKit's plain progress reports it."""

    vertex: int
    index: int
    total: int
    instruction: str
    text: str
    cached: bool = False


def parse_plain_progress(output: str) -> list[BuildStep]:
    """Dockerfile steps (`#N [i/n] RUN ...`) from `--progress=plain` output, with `#N CACHED` applied.

    BuildKit numbers vertices (#N) and prints `#N CACHED` on its own line for a step answered from cache;
    the FROM step (`[1/n] FROM ...`) is included, so filter by `instruction` for RUN/COPY.
    """
    steps: dict[int, BuildStep] = {}
    cached: set[int] = set()
    for line in output.splitlines():
        line = line.rstrip()
        m = _STEP_RE.match(line)
        if m:
            vertex = int(m.group(1))
            steps.setdefault(vertex, BuildStep(vertex, int(m.group(3)), int(m.group(4)), m.group(5),
                                               m.group(5) + m.group(6)))
            continue
        m2 = re.match(r"^#(\d+) CACHED$", line)
        if m2:
            cached.add(int(m2.group(1)))
    for vertex, step in steps.items():
        step.cached = vertex in cached
    return sorted(steps.values(), key=lambda s: (s.index, s.vertex))


class DockerDaemon:
    """A private dockerd (with its own containerd and BuildKit) on a unique unix socket.

    Started with no iptables, no bridge, no ip forwarding/masquerading so it changes nothing on the host;
    data-root and exec-root live in a temp dir that `stop()` unmounts and removes. Builds use
    `--network=host` because with `--bridge=none` the default build network does not exist.
    Loopback registries (127.0.0.0/8) are plain-HTTP "insecure" registries by dockerd's own default.
    """

    def __init__(self, base: Path | None = None, storage_drivers: Sequence[str] = ("overlay2", "vfs"),
                 start_timeout: float = 60) -> None:
        self.dockerd = tool_path("dockerd")
        self.docker_bin = tool_path("docker")
        # unix socket paths are capped at 108 bytes; containerd's lives under exec-root, so keep it short
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="cse2e-dockerd-"))
        self._own_base = base is None
        self.data_root = self.base / "data"
        self.exec_root = self.base / "exec"
        self.pidfile = self.base / "dockerd.pid"
        self.socket = Path(f"/run/cachesvc-e2e-dockerd-{os.getpid()}-{id(self) & 0xFFFF:x}.sock")
        self.client_config = self.base / "client"
        self.log_path = self.base / "dockerd.log"
        self.storage_drivers = list(storage_drivers)
        self.storage_driver: str | None = None
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> DockerDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DockerDaemon:
        """Start dockerd with the first storage driver that works (overlay2 needs a non-overlay fs below)."""
        errors: list[str] = []
        for driver in self.storage_drivers:
            try:
                self._start_with(driver)
                self.storage_driver = driver
                return self
            except (RuntimeError, TimeoutError) as e:
                errors.append(f"--storage-driver {driver}: {e}")
                self._terminate()
                self._cleanup_dirs()
        raise RuntimeError("dockerd did not start:\n" + "\n".join(errors))

    def _start_with(self, driver: str) -> None:
        for d in (self.data_root, self.exec_root, self.client_config):
            d.mkdir(parents=True, exist_ok=True)
        config_file = self.base / "daemon.json"
        config_file.write_text("{}")  # never read the host's /etc/docker/daemon.json
        self.socket.unlink(missing_ok=True)
        cmd = [self.dockerd, "--config-file", str(config_file), "--data-root", str(self.data_root),
               "--exec-root", str(self.exec_root), "--pidfile", str(self.pidfile),
               "--host", f"unix://{self.socket}", "--storage-driver", driver,
               "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
               "--bridge=none", "--log-level=warn"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists():
                info = self.docker("info", "--format", "{{.Driver}}", check=False, timeout=20)
                if info.returncode == 0 and info.output.strip() == driver:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"not ready after {self.start_timeout}s: {self.log_tail()}")

    def _terminate(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # dockerd stops its containerd itself on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def _cleanup_dirs(self) -> None:
        _unmount_under(self.base)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def stop(self) -> None:
        """SIGTERM and wait, then unmount leftovers and delete every directory the daemon used."""
        self._terminate()
        self._cleanup_dirs()
        self.socket.unlink(missing_ok=True)
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- client ------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(self.client_config), "BUILDKIT_PROGRESS": "plain"})
        env.pop("DOCKER_CONTEXT", None)
        env.pop("DOCKER_TLS_VERIFY", None)
        return env

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> Run:
        return run([self.docker_bin, *args], env=self.env(), timeout=timeout, check=check)

    def build(self, context: Path, tag: str, *, cache_from: Sequence[str] = (),
              build_args: Mapping[str, str] | None = None, inline_cache: bool = True,
              extra_args: Iterable[str] = (), timeout: float = 300, check: bool = True) -> Run:
        """BuildKit build with plain progress (its output is what `parse_plain_progress` reads)."""
        args = ["build", "--progress=plain", "--network=host", "-t", tag]
        all_args = dict(build_args or {})
        if inline_cache:
            all_args.setdefault("BUILDKIT_INLINE_CACHE", "1")
        for k, v in sorted(all_args.items()):
            args += ["--build-arg", f"{k}={v}"]
        for ref in cache_from:
            args += ["--cache-from", ref]
        args += [*extra_args, str(context)]
        return self.docker(*args, timeout=timeout, check=check)

    def push(self, ref: str, timeout: float = 180) -> Run:
        return self.docker("push", ref, timeout=timeout)

    def pull(self, ref: str, timeout: float = 180) -> Run:
        return self.docker("pull", ref, timeout=timeout)

    def images(self) -> list[str]:
        out = self.docker("image", "ls", "-aq", "--no-trunc")
        return [line for line in out.output.split() if line]

    def prune_all(self) -> str:
        """Remove every image and all BuildKit cache, so the next build only has the registry to draw on."""
        texts = [self.docker("builder", "prune", "-af").output]
        ids = self.images()
        if ids:
            texts.append(self.docker("rmi", "-f", *ids).output)
        texts.append(self.docker("image", "prune", "-af").output)
        texts.append(self.docker("builder", "prune", "-af").output)
        return "\n".join(texts)

    def build_cache_entries(self) -> int:
        """How many records BuildKit's local cache holds (0 after prune_all)."""
        out = self.docker("system", "df", "--format", "{{json .}}")
        for line in out.output.splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if row.get("Type") == "Build Cache":
                    return int(row.get("TotalCount", 0))
        return 0


# --------------------------------------------------------------------------------------------------------
# server side: what the registry under test says it served. The cache tests use it to prove a rebuild
# really fetched from the registry. THE HOOK for cachesvc is parse_request_log.


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int | None


_TEXT_REQUEST = re.compile(
    r'"?\b(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/[^\s"?]*)(?:\?\S*)?(?: HTTP/[\d.]+)?"?\s*(\d{3})?')
_JSON_KEYS = {"method": ("method", "http.request.method", "request_method"),
              "path": ("path", "uri", "http.request.uri", "request_path", "url"),
              "status": ("status", "http.response.status", "status_code")}


def _json_field(row: dict[str, object], names: tuple[str, ...]) -> object:
    for name in names:
        if name in row:
            return row[name]
    return None


def parse_request_log(text: str) -> list[LoggedRequest]:
    """Requests found in a server log.

    distribution: its Apache-style access log (enabled by the `registry` fixture).
    cachesvc: its access log, text (`... "GET /v2/... HTTP/1.1" 200 ...` or `GET /v2/... 200`) or JSON lines
    with method/path/status keys. If cachesvc logs requests differently, adapt this one function.
    """
    found: list[LoggedRequest] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                method, path = _json_field(row, _JSON_KEYS["method"]), _json_field(row, _JSON_KEYS["path"])
                if isinstance(method, str) and isinstance(path, str) and path.startswith("/v2/"):
                    status = str(_json_field(row, _JSON_KEYS["status"]))
                    found.append(LoggedRequest(method.upper(), path.split("?", 1)[0],
                                               int(status) if status.isdigit() else None))
                continue
        if "level=" in line and "http.request.method" in line:  # distribution's error lines repeat requests
            continue
        m = _TEXT_REQUEST.search(line)
        if m:
            found.append(LoggedRequest(m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None))
    return found


class RequestLog:
    """What the registry under test logged it served; `mark()` before an action, `since(mark)` after it.

    The log file is appended across `server.restart()`, so marks stay valid over restarts.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    # cachesvc writes its access log in batches (at most every 50 ms): a reader waits that long for a line.
    SETTLE = 0.3

    def mark(self) -> int:
        time.sleep(self.SETTLE)
        return len(self.server.log_text())

    def since(self, mark: int = 0) -> list[LoggedRequest]:
        time.sleep(self.SETTLE)
        return parse_request_log(self.server.log_text()[mark:])

    def expect(self, mark: int, method: str, path_prefix: str) -> list[LoggedRequest]:
        """The requests since `mark` with `method` (`"GET"`, or `"HEAD|GET"` for either) on a path starting
        with `path_prefix`; fails if there are none."""
        methods = set(method.split("|"))
        deadline = time.monotonic() + 3
        while True:
            seen = self.since(mark)
            hits = [r for r in seen if r.method in methods and r.path.startswith(path_prefix)]
            if hits or time.monotonic() > deadline:
                break
        assert hits, (f"{self.server.kind} logged no {method} {path_prefix}* since the mark "
                      f"({len(seen)} requests parsed; if 0, its log format needs parse_request_log in "
                      f"tests/support/clients.py):\n{self.server.log_tail(20)}")
        return hits
