"""Blob contents for the compression-at-rest tests: plain tar layers that compress like real ones (text and
structured binary files), image configs as JSON, and the same layers already gzip- or zstd-compressed."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile

import zstandard

_WORDS = ("the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by", "this", "from", "layer",
          "cache", "build", "image", "file", "data", "value", "return", "import", "class", "def", "self", "none",
          "true", "false", "int", "str", "bytes", "list", "dict", "config", "error", "warning", "info", "usr",
          "lib", "bin", "share", "doc", "include", "local", "python3", "site", "packages", "module", "test",
          "version", "license")


def _pool(seed: int, size: int) -> bytes:
    """Pseudo-text with line structure: compresses about 3-4x with zstd -1, like source trees and docs."""
    rnd = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        line = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(3, 14)))
        if rnd.random() < 0.2:
            line = f"{rnd.choice(_WORDS)}_{rnd.randint(0, 99999)} = {rnd.random():.6f}  # {line}"
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def text_tar(seed: int, size: int) -> bytes:
    """An uncompressed tar of about ``size`` bytes: text files plus a few binary-looking ones (ELF-ish headers,
    tables of little-endian integers), entries in a fixed order with fixed times so the bytes are repeatable."""
    rnd = random.Random(seed)
    pool = _pool(seed, max(size // 2, 64 * 1024))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        n = 0
        while buf.tell() < size - 2048:
            want = min(rnd.choice((300, 2_000, 9_000, 40_000, 150_000)), max(1, size - buf.tell() - 1536))
            if rnd.random() < 0.25:
                data = b"\x7fELF\x02\x01\x01" + b"".join(rnd.randint(0, 4096).to_bytes(4, "little")
                                                        for _ in range(want // 4))
                name = f"usr/lib/lib{n}.so"
            else:
                start = rnd.randrange(0, max(1, len(pool) - want))
                data = pool[start:start + want]
                name = f"usr/share/doc/pkg{n % 17}/file{n}.txt"
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 946684800, 0o644
            tar.addfile(info, io.BytesIO(data))
            n += 1
    return buf.getvalue()


def config_json(seed: int, layers: int = 6) -> bytes:
    """An OCI image config (a few KiB of JSON) like the ones builders push."""
    rnd = random.Random(seed)
    doc = {
        "architecture": "amd64", "os": "linux", "created": "2000-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", f"SEED={seed}"], "Cmd": ["/bin/sh"],
                   "Labels": {f"org.example.label{i}": " ".join(rnd.choice(_WORDS) for _ in range(6))
                              for i in range(8)}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{rnd.getrandbits(256):064x}" for _ in range(layers)]},
        "history": [{"created": "2000-01-01T00:00:00Z",
                     "created_by": "/bin/sh -c " + " ".join(rnd.choice(_WORDS) for _ in range(20))}
                    for _ in range(layers)],
    }
    return json.dumps(doc, indent=2).encode()


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def zstd_of(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)
