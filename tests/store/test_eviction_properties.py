"""Property test of the store under any sequence of pushes, pulls, tag moves, deletes, restarts and evictions.

Invariants checked after every step, against a real RocksDB and real files:
* every manifest reachable by a tag has every blob it names: indexed, visible in its repository, file on disk;
* the counters agree with a recount of what is stored, and so do each blob's reference and link counts;
* no link or manifest reference outlives the blob it names;
* after an eviction pass the store is within budget, unless no root is left to evict;
* the most recently used root survives an eviction pass while any root survives.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest
from cachesvc.settings import Settings
from cachesvc.store import eviction
from cachesvc.store.records import BlobRecord, ManifestRecord
from cachesvc.store.store import Store
from tests.support.inproc import Clock, sha256

LAYERS = [bytes([i]) * (3000 + 1700 * i) for i in range(8)]
REPOS = ["cache/a", "cache/b"]
TAGS = ["main", "pr", "dev"]
BUDGET = 30_000  # well under the pool of layers, so pushes force evictions

op = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(REPOS), st.sampled_from(TAGS),
              st.lists(st.integers(0, len(LAYERS) - 1), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("pull"), st.sampled_from(REPOS), st.sampled_from(TAGS)),
    st.tuples(st.just("untag"), st.sampled_from(REPOS), st.sampled_from(TAGS)),
    st.tuples(st.just("delete"), st.sampled_from(REPOS), st.sampled_from(TAGS)),
    st.tuples(st.just("head"), st.sampled_from(REPOS), st.integers(0, len(LAYERS) - 1)),
    st.tuples(st.just("evict")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("wait"), st.integers(1, 120)),
)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Harness:
    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.settings = replace(Settings(), root=root, max_size=BUDGET, upload_grace=30)
        self.store = Store(self.settings, clock=self.clock)
        self.store.open()
        self.mru: tuple[str, str] | None = None

    async def restart(self) -> None:
        self.store.recency.flush()
        await self.store.close()
        self.store = Store(self.settings, clock=self.clock)
        self.store.open()

    async def push(self, repo: str, tag: str, layer_ids: list[int]) -> None:
        descs = []
        try:
            for i in layer_ids:
                data = LAYERS[i]
                await self.store.write_blob(repo, parse_digest(sha256(data)), chunks(data), len(data))
                descs.append({"mediaType": "application/octet-stream", "digest": sha256(data), "size": len(data)})
            config = json.dumps({"layers": layer_ids}).encode()
            await self.store.write_blob(repo, parse_digest(sha256(config)), chunks(config), len(config))
            doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "config": {"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": sha256(config),
                              "size": len(config)}, "layers": descs}
            digest, _ = await self.store.put_manifest(repo, tag, None, json.dumps(doc).encode(), None)
        except RegistryError as e:
            assert e.code in ("STORAGE_FULL", "MANIFEST_BLOB_UNKNOWN"), e
            return
        self.mru = (repo, digest)

    def check(self) -> None:
        index, files = self.store.index, self.store.files
        stored = blob_bytes = nblobs = nmanifests = 0
        for key, _ in index.scan("tags"):
            repo, tag = key.decode().split("\0")
            digest = index.tag(repo, tag)
            assert digest is not None
            rec = index.manifest(repo, digest)
            assert rec is not None, f"{repo}:{tag} points at a missing manifest"
            for blob in rec.blobs:
                assert index.blob(blob) is not None, f"{repo}:{tag} needs unindexed {blob}"
                assert index.linked_size(blob, repo) is not None, f"{repo}:{tag} needs unlinked {blob}"
                assert files.exists(blob), f"{repo}:{tag} needs {blob} whose file is gone"
        for key, value in index.scan("blobs"):
            brec = BlobRecord.decode(value)
            digest = key.decode()
            refs = sum(1 for _ in index.scan_keys("blob_refs", key + b"\0"))
            links = sum(1 for _ in index.scan_keys("links", key + b"\0"))
            assert (brec.refs, brec.links) == (refs, links), f"{digest}: counted {brec.refs}/{brec.links}"
            stored += brec.stored_size
            blob_bytes += brec.size
            nblobs += 1
        for _, value in index.scan("manifests"):
            stored += ManifestRecord.decode(value).size
            nmanifests += 1
        for cf in ("links", "blob_refs"):  # no link or reference outlives its blob
            for key, _ in index.scan(cf):
                blob = key.split(b"\0", 1)[0].decode()
                assert index.blob(blob) is not None, f"{cf} entry {key!r} for a blob that is gone"
        c = index.counters
        assert (c["disk_bytes"], c["blob_bytes"], c["blobs"], c["manifests"]) == (stored, blob_bytes, nblobs,
                                                                                   nmanifests)
        assert c["roots"] == sum(1 for _ in index.scan("lru"))

    async def run(self, ops: list[tuple]) -> None:
        for o in ops:
            self.clock.advance(1)
            kind = o[0]
            if kind == "push":
                await self.push(o[1], o[2], o[3])
            elif kind == "pull":
                digest = self.store.resolve(o[1], o[2], None)
                if digest and self.store.get_manifest(o[1], digest) is not None:
                    self.mru = (o[1], digest)
            elif kind == "untag":
                self.store.delete_manifest(o[1], o[2], None)
            elif kind == "delete":
                digest = self.store.resolve(o[1], o[2], None)
                if digest:
                    self.store.delete_manifest(o[1], None, parse_digest(digest))
                    if self.mru == (o[1], digest):
                        self.mru = None
            elif kind == "head":
                self.store.blob_size(o[1], sha256(LAYERS[o[2]]))
            elif kind == "evict":
                await self.store.evictor.run_pass()
                roots = self.store.index.counters["roots"]
                assert self.store.evictor.used() <= BUDGET or roots == 0, (self.store.evictor.used(), roots)
                if self.mru is not None and roots > 0:
                    assert self.store.index.manifest(*self.mru) is not None, "most recently used root evicted"
            elif kind == "restart":
                await self.restart()
            elif kind == "wait":
                self.clock.advance(o[1])
            self.check()
        await self.store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=40))
def test_store_invariants_hold_for_any_sequence(ops: list[tuple]) -> None:
    root = Path(tempfile.mkdtemp(prefix="cachesvc-prop-"))
    try:
        asyncio.run(Harness(root / "data").run(ops))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=30))
def test_store_invariants_hold_with_batches_planned_by_the_helper_process(ops: list[tuple]) -> None:
    """The same, with every pass's batches planned by the helper process from an index follower (fewer
    examples: each pass that evicts starts a helper)."""
    root = Path(tempfile.mkdtemp(prefix="cachesvc-prop-"))
    try:
        with mock.patch.object(eviction, "HELPER_AFTER", 0):
            asyncio.run(Harness(root / "data").run(ops))
    finally:
        shutil.rmtree(root, ignore_errors=True)
