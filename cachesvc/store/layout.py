"""Where files live under ``--root``. No other module builds a path inside the data directory.

::

    <root>/
      STORE                       format marker: "cachesvc-store 1"; refuses to open a root of another format
      index/                      RocksDB: every piece of metadata (schema in cachesvc/store/index.py)
      blobs/<alg>/<xx>/<hex>      one immutable file per blob digest, whatever the repositories (dedup);
                                  <xx> is the first two hex characters, so no directory grows past ~1/256th
      blobs/<alg>/<xx>/<hex>.zst  the same blob compressed at rest instead (seekable zstd, format in
                                  cachesvc/store/seekable.py); a blob has one of the two forms, both only
                                  for the instant of a swap (cachesvc/store/compression.py)
      uploads/<session-id>        bytes of an upload session so far (appended in order, hashed as they come)
      uploads/zst-<hex>           a compressed copy being written; renamed to blobs/…/<hex>.zst once fsynced
                                  and verified (any file here without a session is removed at start)
      quarantine/<alg>-<hex>      blobs found corrupt on disk, kept for inspection, never served
      trash/<name>                files taken out of the served tree by a rename (a compression swap's old
                                  form, fsck's strays), waiting to be unlinked off the request path; evicted
                                  and deleted blobs are unlinked in place by cachesvc/store/reclaim.py
      auth.key                    the key that signs tokens from /token (mode 0600; only with --auth-file;
                                  created on first start, see cachesvc/auth/tokens.py)

Writes land in ``uploads/`` (same filesystem as ``blobs/``), are fsynced, and are renamed into ``blobs/``
atomically once their digest is verified; a file under ``blobs/`` is therefore always complete and correct.
"""

from __future__ import annotations

import os
from pathlib import Path

FORMAT_MARKER = "cachesvc-store 1\n"


class Layout:
    """Paths of one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.index = self.root / "index"
        self.blobs = self.root / "blobs"
        self.uploads = self.root / "uploads"
        self.quarantine = self.root / "quarantine"
        self.trash = self.root / "trash"
        self.follower = self.root / "index-follower"  # a read-only follower's own files (eviction's planner)
        self.marker = self.root / "STORE"
        self.auth_key = self.root / "auth.key"

    def create(self) -> None:
        """Create the tree (idempotent) and check the format marker."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.marker.exists():
            found = self.marker.read_text()
            if found != FORMAT_MARKER:
                raise RuntimeError(f"{self.root} holds a store of another format ({found.strip()!r})")
        else:
            entries = [p.name for p in self.root.iterdir()]
            if entries and not set(entries) <= {"index", "blobs", "uploads", "quarantine", "trash"}:
                raise RuntimeError(f"{self.root} is not empty and is not a cachesvc store; refusing to use it")
            tmp = self.root / "STORE.tmp"
            tmp.write_text(FORMAT_MARKER)
            os.replace(tmp, self.marker)
        for d in (self.index, self.blobs, self.uploads, self.quarantine, self.trash):
            d.mkdir(exist_ok=True)

    def blob_dir(self, algorithm: str, hex_digest: str) -> Path:
        return self.blobs / algorithm / hex_digest[:2]

    def blob(self, algorithm: str, hex_digest: str) -> Path:
        return self.blobs / algorithm / hex_digest[:2] / hex_digest

    def blob_path_str(self, digest: str) -> str:
        """Fast path for hot reads: ``sha256:abcd…`` -> its file path as a string."""
        algorithm, _, hex_digest = digest.partition(":")
        return f"{self.blobs}/{algorithm}/{hex_digest[:2]}/{hex_digest}"

    def blob_zst_path_str(self, digest: str) -> str:
        """Where ``digest`` lives when compressed at rest."""
        algorithm, _, hex_digest = digest.partition(":")
        return f"{self.blobs}/{algorithm}/{hex_digest[:2]}/{hex_digest}.zst"

    def compressing(self, digest: str) -> str:
        """Temporary file for the compressed copy of ``digest`` (same filesystem as ``blobs/``)."""
        return str(self.uploads / f"zst-{digest.partition(':')[2]}")

    def upload(self, session_id: str) -> Path:
        return self.uploads / session_id

    def quarantined(self, algorithm: str, hex_digest: str) -> Path:
        return self.quarantine / f"{algorithm}-{hex_digest}"
