"""The shared tier: every builder's cachesvc backed by one S3-compatible object store (``--remote s3://…``).

The local tier (the builder's own disk) stays the fast path: a local hit never touches the shared tier. What a
client stores is uploaded behind its back (write-behind); a local miss looks in the shared tier before answering
404 (read-through), so a miss on one builder is a hit from what the others stored, and a fresh builder starts warm
(``cachesvc prefetch``, ``--prefetch``). ``cachesvc remote-gc`` keeps the shared tier's size in check.

Object layout under ``s3://BUCKET/PREFIX/`` (``<digest>`` is written ``<alg>/<hex>``)::

    blobs/<alg>/<hex>                  the blob's bytes, once, whatever the repository (multipart above 16 MiB)
    manifests/<repo>/<alg>/<hex>       the manifest's exact bytes; Content-Type = its media type
    tags/<repo>/<tag>                  JSON {"digest", "pushed_at" (ms), "media_type"}: last push wins
    used/<repo>/<alg>/<hex>            JSON {"used": ms}: last-use marker of a manifest; its LastModified is
                                       what remote-gc reads (refreshed at most every --remote-touch-interval)

Guarantees:

* the shared tier never holds a manifest whose blobs (or child manifests) it lacks: they are uploaded and
  confirmed first (:mod:`cachesvc.remote.writeback`), and a manifest is only ever served from it after checking
  that each blob is available locally or remotely (:mod:`cachesvc.remote.tier`);
* nothing unverified is stored or passed on: uploads are re-hashed from the local file, fetched blobs are hashed
  as they stream in and installed through the same path as client uploads, fetched manifests must match their
  digest (:mod:`cachesvc.remote.fetch`);
* the shared tier never fails or slows a local hit, and a dead object store turns misses into quick 404s
  (lookups bounded by ``--remote-timeout``, then a short-lived breaker) rather than 500s or hangs;
* the write-behind queue is persisted (the ``remote_queue`` column family) and resumes after a restart; uploads
  that fail are retried with backoff; ``--remote-mode read-only`` writes nothing at all.

Concurrent misses for the same blob share one transfer (:class:`~cachesvc.remote.fetch.BlobFetch`), and so do
concurrent checks of the same remote manifest. Shared-tier blobs are content-addressed and global: a blob is
readable through any repository name once its digest is known (repositories keep their own tags and manifests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachesvc.metrics import Metrics
    from cachesvc.remote.tier import RemoteTier
    from cachesvc.settings import Settings
    from cachesvc.store.store import Store


def remote_tier(settings: Settings, store: Store, metrics: Metrics) -> RemoteTier | None:
    """The shared tier for ``--remote``, or None without it (then nothing of this package is even imported)."""
    if not settings.remote:
        return None
    from cachesvc.remote.tier import RemoteTier

    return RemoteTier(settings, store, metrics)
