"""Benchmark content: incompressible blobs cut from one random pool, a realistic spread of layer sizes, and
BuildKit-style cache manifests and cache configs (modelled on the bodies BuildKit pushed in
``shared/buildkit/bodies/``: an OCI image manifest whose config is ``application/vnd.buildkit.cacheconfig.v0``
and whose layers carry ``buildkit/createdat`` and ``containerd.io/uncompressed`` annotations).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass

CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NONCE_MARK = "@@NONCE@@"


@dataclass(frozen=True)
class Blob:
    """A blob as two pieces sent back to back: a unique prefix and a view into the shared random pool."""

    digest: str
    size: int
    prefix: bytes
    rest: memoryview

    def pieces(self) -> list[bytes | memoryview]:
        return [self.prefix, self.rest]

    def contiguous(self) -> memoryview:
        """The whole blob in one buffer (a copy), for chunked uploads."""
        return memoryview(bytearray(self.prefix) + self.rest)


GZIP_HEADER = b"\x1f\x8b\x08\x00"  # layers are tar+gzip: a registry that sniffs content sees what BuildKit sends


class DataPool:
    """Random bytes that blobs are cut from; a distinct prefix per blob makes every digest distinct. Every blob
    starts with a gzip header and is incompressible, like the ``tar+gzip`` layers its manifests declare."""

    def __init__(self, size: int) -> None:
        self.data = memoryview(os.urandom(size))

    def blob(self, name: str, size: int, offset: int = 0) -> Blob:
        prefix = (GZIP_HEADER + hashlib.sha256(name.encode()).digest())[:min(36, size)]
        rest_len = size - len(prefix)
        if offset + rest_len > len(self.data):
            raise ValueError(f"pool of {len(self.data)} bytes too small for a {size}-byte blob at {offset}")
        rest = self.data[offset:offset + rest_len]
        h = hashlib.sha256(prefix)
        h.update(rest)
        return Blob(f"sha256:{h.hexdigest()}", size, prefix, rest)


def spread_sizes(n: int, total: int, seed: int = 7, smallest: int = 100) -> list[int]:
    """``n`` layer sizes adding up to about ``total``: log-uniform from ``smallest`` bytes to whatever upper
    bound makes the sum right (for 200 blobs and 1 GiB: ~100 B to ~75 MiB, median ~90 KB), like a BuildKit
    mode=max cache with many tiny metadata layers, some package layers and a few big toolchain layers."""
    quantiles = [(i + 0.5) / n for i in range(n)]

    def sizes_for(hi: float) -> list[int]:
        lo_l, hi_l = math.log(smallest), math.log(hi)
        return [max(smallest, int(math.exp(lo_l + q * (hi_l - lo_l)))) for q in quantiles]

    lo, hi = float(smallest) * 2, float(total)
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if sum(sizes_for(mid)) < total:
            lo = mid
        else:
            hi = mid
    sizes = sizes_for(lo)
    sizes[-1] += max(0, total - sum(sizes))
    random.Random(seed).shuffle(sizes)
    return sizes


def cache_blobs(pool: DataPool, label: str, sizes: list[int], seed: int = 11) -> list[Blob]:
    """Blobs of the given sizes at random pool offsets, named so that each ``label`` gives new digests."""
    rng = random.Random(seed)
    pool_size = len(pool.data)
    return [pool.blob(f"{label}/{i}", size, rng.randrange(0, max(1, pool_size - size))) for i, size in
            enumerate(sizes)]


def cache_config(blobs: list[Blob]) -> bytes:
    """A BuildKit cache config (``cacheconfig.v0``): a chain of layers and one cache record per layer."""
    layers = [{"blob": b.digest, "parent": i - 1} if i else {"blob": b.digest} for i, b in enumerate(blobs)]
    records = []
    for i, _ in enumerate(blobs):
        key = hashlib.sha256(f"record {i} {blobs[i].digest}".encode()).hexdigest()
        record: dict[str, object] = {"digest": f"sha256:{key}",
                                     "layers": [{"layerIndex": i, "createdAt": "2026-11-27T00:48:05Z"}]}
        if i:
            record["inputs"] = [[{"selector": "", "link": i - 1}]]
        records.append(record)
    return json.dumps({"layers": layers, "records": records}, separators=(",", ":")).encode()


def cache_manifest(config: Blob, blobs: list[Blob], nonce: str = "000000000") -> bytes:
    """The OCI image manifest BuildKit pushes for ``--export-cache type=registry`` (image-manifest=true).
    ``nonce`` (nine characters) goes into the first layer's ``buildkit/createdat`` so each nonce gives a
    distinct manifest digest."""
    layers = []
    for i, b in enumerate(blobs):
        nanos = nonce if i == 0 else f"{(i * 7919) % 1_000_000_000:09d}"
        uncompressed = hashlib.sha256(b.digest.encode()).hexdigest()
        layers.append({"mediaType": LAYER, "digest": b.digest, "size": b.size, "annotations": {
            "buildkit/createdat": f"2026-11-27T00:48:{i % 60:02d}.{nanos}Z",
            "containerd.io/uncompressed": f"sha256:{uncompressed}"}})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": CACHE_CONFIG, "digest": config.digest, "size": config.size},
                "layers": layers}
    return json.dumps(manifest, separators=(",", ":")).encode()


def bytes_blob(data: bytes) -> Blob:
    """A small blob held whole in memory (cache configs)."""
    return Blob(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), data, memoryview(b""))
