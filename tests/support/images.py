"""Base images for end-to-end tests, made offline from Debian's busybox-static.

No base image can be pulled here (no internet), so every build starts `FROM` an image this module writes:
one gzip layer holding /bin/busybox plus applet symlinks, in an OCI image layout. The bytes are
deterministic (fixed mtimes, uid/gid 0, sorted entries, gzip header without name/mtime, canonical JSON),
so the same machine always produces the same digests and tests can compare blobs byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.clients import ContainersConfig, host_of, skopeo_copy

BUSYBOX = Path("/usr/bin/busybox")

#: Applets linked into /bin. Enough for shell-script RUN steps; kept short so the layer stays small.
APPLETS: tuple[str, ...] = (
    "[", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "dirname", "echo", "env", "false", "find",
    "grep", "head", "id", "ln", "ls", "md5sum", "mkdir", "mv", "printf", "pwd", "rm", "rmdir", "sed", "seq",
    "sh", "sha256sum", "sleep", "sort", "stat", "tail", "tar", "tee", "test", "touch", "tr", "true", "uname",
    "wc", "xargs", "yes",
)

#: Fixed timestamp for every tar entry and the config's `created` (2000-01-01T00:00:00Z).
EPOCH = 946684800
EPOCH_ISO = "2000-01-01T00:00:00Z"

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def oci_arch() -> str:
    """GOARCH of this machine: docker and buildah refuse (or warn about) images of another platform."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace: the same object always gives the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_dict(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class OciImage:
    """An image written as an OCI image layout; `ref` is `oci:<dir>:<tag>` for skopeo/buildah."""

    layout: Path
    tag: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        algo, hexdigest = digest.split(":", 1)
        return self.layout / "blobs" / algo / hexdigest

    def all_digests(self) -> list[str]:
        """Manifest, config and layer digests: everything a registry round trip must preserve."""
        return [self.manifest.digest, self.config.digest, *(d.digest for d in self.layers)]


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def busybox_rootfs_tar(extra_files: Mapping[str, bytes] | None = None) -> bytes:
    """Uncompressed, deterministic tar of a minimal busybox root filesystem."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} missing: apt-get install busybox-static")
    busybox = BUSYBOX.read_bytes()
    entries: dict[str, tuple[bytes, int, bytes, str]] = {}  # name -> (type, mode, data, linkname)
    for d in ("bin", "etc", "root", "tmp", "var", "var/tmp"):
        entries[d + "/"] = (tarfile.DIRTYPE, 0o1777 if d.endswith("tmp") else 0o755, b"", "")
    entries["bin/busybox"] = (tarfile.REGTYPE, 0o755, busybox, "")
    for applet in APPLETS:
        entries[f"bin/{applet}"] = (tarfile.SYMTYPE, 0o777, b"", "busybox")
    entries["etc/passwd"] = (tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n", "")
    entries["etc/group"] = (tarfile.REGTYPE, 0o644, b"root:x:0:\n", "")
    for name, data in sorted((extra_files or {}).items()):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]) + "/", (tarfile.DIRTYPE, 0o755, b"", ""))
        entries["/".join(parts)] = (tarfile.REGTYPE, 0o644, data, "")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            kind, mode, data, link = entries[name]
            info = _tar_info(name.rstrip("/"), kind, mode, len(data), link)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    """gzip with no file name and mtime 0 in the header, so output depends only on input (and zlib)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def build_busybox_layout(layout: Path, tag: str = "latest",
                         extra_files: Mapping[str, bytes] | None = None) -> OciImage:
    """Write a one-layer busybox image as an OCI image layout at `layout` (created; must not hold another).

    `extra_files` ({"etc/marker": b"..."}) gives a distinct image (different digests) when a test needs two.
    """
    layout = Path(layout)
    layout.mkdir(parents=True, exist_ok=True)
    raw = busybox_rootfs_tar(extra_files)
    layer_gz = _gzip(raw)
    layer = Descriptor(MEDIA_OCI_LAYER_GZIP, _write_blob(layout, layer_gz), len(layer_gz))

    config_obj = {
        "architecture": oci_arch(),
        "os": "linux",
        "created": EPOCH_ISO,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
        "history": [{"created": EPOCH_ISO, "created_by": "cachesvc tests: busybox-static rootfs"}],
    }
    config_bytes = canonical_json(config_obj)
    config = Descriptor(MEDIA_OCI_CONFIG, _write_blob(layout, config_bytes), len(config_bytes))

    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config.as_dict(),
        "layers": [layer.as_dict()],
    }
    manifest_bytes = canonical_json(manifest_obj)
    manifest = Descriptor(MEDIA_OCI_MANIFEST, _write_blob(layout, manifest_bytes), len(manifest_bytes))

    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [{**manifest.as_dict(),
                       "platform": {"architecture": oci_arch(), "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    (layout / "index.json").write_bytes(canonical_json(index))
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return OciImage(layout, tag, manifest, config, (layer,))


def layout_blobs(layout: Path) -> dict[str, bytes]:
    """Every blob in an OCI layout (or a skopeo `dir:` copy) keyed by `sha256:<hex>`."""
    layout = Path(layout)
    out: dict[str, bytes] = {}
    blob_dir = layout / "blobs" / "sha256"
    if blob_dir.is_dir():
        for p in blob_dir.iterdir():
            out["sha256:" + p.name] = p.read_bytes()
    else:  # skopeo dir: transport stores blobs as <hex> at top level, plus manifest.json
        for p in layout.iterdir():
            if len(p.name) == 64 and all(c in "0123456789abcdef" for c in p.name):
                out["sha256:" + p.name] = p.read_bytes()
    return out


def push_layout(image: OciImage, registry: str, repo_tag: str, *, config: ContainersConfig | None = None,
                timeout: float = 120) -> str:
    """Copy `image` into `registry` (`http://127.0.0.1:PORT` or `127.0.0.1:PORT`) as `repo_tag` with skopeo.

    Digests are preserved (skopeo fails rather than recompress); returns the pushed `host/repo:tag`.
    """
    ref = f"{host_of(registry)}/{repo_tag}"
    skopeo_copy(image.ref, f"docker://{ref}", config=config, timeout=timeout)
    return ref


@dataclass(frozen=True)
class BuildContext:
    """A Dockerfile build context; `cacheable_steps` counts its RUN/COPY instructions."""

    path: Path
    dockerfile: str
    cacheable_steps: int


def write_build_context(directory: Path, base: str, nonce: str) -> BuildContext:
    """A multi-step Dockerfile on `base` (RUN, RUN, COPY, RUN) whose layers hold files with real content.

    `nonce` goes into the first RUN so that no earlier build anywhere can satisfy a step: a cache hit can
    only come from this test's own export. The /dev/urandom step makes a rebuild that did *not* reuse the
    cached layer produce a different image id, so an id equality check proves reuse.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hello.txt").write_text(f"hello from the build context {nonce}\n")
    dockerfile = (
        f"FROM {base}\n"
        f"RUN mkdir -p /out && echo {nonce} > /out/nonce\n"
        "RUN dd if=/dev/urandom of=/out/random bs=1k count=64 2>/dev/null"
        " && sha256sum /out/random > /out/random.sum\n"
        "COPY hello.txt /out/hello.txt\n"
        "RUN cat /out/nonce /out/hello.txt > /out/joined && sha256sum /out/* > /out/sums\n"
    )
    (directory / "Dockerfile").write_text(dockerfile)
    steps = sum(1 for line in dockerfile.splitlines() if line.split(" ", 1)[0] in ("RUN", "COPY", "ADD"))
    return BuildContext(directory, dockerfile, steps)
