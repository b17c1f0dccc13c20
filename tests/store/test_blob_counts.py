"""Each blob record counts its references and links; records written before the counts existed get them lazily.

Eviction decides "still referenced?" and "which repository is it visible in?" from these counts (a point read)
instead of an iterator seek, so a wrong count would drop a referenced blob or leave a link behind. These tests
use a real RocksDB index and compare every count with a recount of the keys.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from cachesvc.store.index import Index
from cachesvc.store.records import BlobRecord, ManifestRecord

_BLOB_V2 = struct.Struct("<BQQQQQQQ")  # the record layout before the counts (version 2)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def recount(index: Index, d: str) -> tuple[int, int]:
    key = d.encode() + b"\0"
    return sum(1 for _ in index.scan_keys("blob_refs", key)), sum(1 for _ in index.scan_keys("links", key))


def counts(index: Index, d: str) -> tuple[int, int]:
    rec = index.blob(d)
    assert rec is not None
    return rec.refs, rec.links


def manifest(index: Index, repo: str, name: int, blobs: list[str], tag: str) -> str:
    d = digest(1000 + name)
    rec = ManifestRecord("application/vnd.oci.image.manifest.v1+json", 100, 0, index.now_ms(), blobs, [])
    index.put_manifest(repo, d, rec, b"{}", tag, None)
    return d


def as_version_2(index: Index, d: str) -> None:
    """Rewrite a blob record the way a store from before the counts holds it."""
    rec = index.blob(d)
    assert rec is not None
    raw = _BLOB_V2.pack(2, rec.size, rec.created, rec.last_used, rec.lease_until, rec.orphan_at,
                        rec.stored_size, rec.held_until)
    m = index.mutation()
    m.put("blobs", d.encode(), raw)
    index.write(m)
    assert counts(index, d) == (-1, -1)


def two_repositories(tmp_path: Path) -> tuple[Index, str, str, str]:
    """``shared`` visible in cache/a and cache/b and used by a manifest in each; ``own`` only by ``first``."""
    index = Index(tmp_path / "index", clock=time.time)
    shared, own = digest(1), digest(2)
    for repo in ("cache/a", "cache/b"):
        index.add_blob(shared, 10, repo, grace_ms=0)
    index.add_blob(own, 10, "cache/a", grace_ms=0)
    first = manifest(index, "cache/a", 1, [shared, own], "one")
    manifest(index, "cache/b", 2, [shared], "two")
    return index, shared, own, first


def test_counts_follow_links_references_and_deletes(tmp_path: Path) -> None:
    index, shared, own, first = two_repositories(tmp_path)
    assert counts(index, shared) == recount(index, shared) == (2, 2)
    assert counts(index, own) == recount(index, own) == (1, 1)

    index.delete_manifest("cache/a", first)  # no lease_of: the unreferenced blob waits as an orphan
    assert counts(index, shared) == recount(index, shared) == (1, 2)
    assert counts(index, own) == recount(index, own) == (0, 1)
    index.unlink_blob(shared, "cache/a")
    assert counts(index, shared) == recount(index, shared) == (1, 1)
    index.close()


def test_records_without_counts_are_counted_when_first_changed(tmp_path: Path) -> None:
    index, shared, own, first = two_repositories(tmp_path)
    as_version_2(index, shared)
    as_version_2(index, own)

    # A new reference counts the old ones first, then itself (links are counted when links change).
    manifest(index, "cache/a", 3, [shared], "three")
    assert counts(index, shared) == (3, -1) and recount(index, shared) == (3, 2)
    # Eviction's path (lease_of given) on an uncounted record: the blob only this manifest used goes, with its
    # link found by the iterator; the shared one stays, counted.
    m = index.plan_manifest_deletion("cache/a", first, lambda _d: 0)
    assert m is not None
    index.write(m)
    assert index.blob(own) is None and recount(index, own) == (0, 0)
    assert [d for d, _ in m.removed.blobs] == [own]
    assert counts(index, shared) == (2, -1) and recount(index, shared) == (2, 2)
    index.unlink_blob(shared, "cache/b")  # deletes the manifest in cache/b that needs it, then counts links
    assert counts(index, shared) == recount(index, shared) == (1, 1)
    index.close()


def test_eviction_drops_a_blob_visible_in_two_repositories_with_both_links(tmp_path: Path) -> None:
    """The single-link shortcut must not apply when the blob is visible elsewhere too."""
    index = Index(tmp_path / "index", clock=time.time)
    blob = digest(7)
    for repo in ("cache/a", "cache/b"):
        index.add_blob(blob, 10, repo, grace_ms=0)
    root = manifest(index, "cache/a", 1, [blob], "one")
    before = {r: u for r, u in index.repo_usages()}
    m = index.plan_manifest_deletion("cache/a", root, lambda _d: 0)
    assert m is not None
    index.write(m)
    assert index.blob(blob) is None and recount(index, blob) == (0, 0)
    after = {r: u for r, u in index.repo_usages()}
    assert after["cache/b"] == before["cache/b"] - 10  # its link in cache/b went too
    index.close()


def test_a_leased_blob_stays_as_an_orphan_with_its_counts(tmp_path: Path) -> None:
    index = Index(tmp_path / "index", clock=time.time)
    blob = digest(9)
    index.add_blob(blob, 10, "cache/a", grace_ms=0)
    root = manifest(index, "cache/a", 1, [blob], "one")
    far = index.now_ms() + 3_600_000
    m = index.plan_manifest_deletion("cache/a", root, lambda d: far if d == blob else 0)
    assert m is not None
    index.write(m)
    rec = index.blob(blob)
    assert isinstance(rec, BlobRecord) and rec.orphan_at > 0
    assert (rec.refs, rec.links) == recount(index, blob) == (0, 1)
    index.close()
