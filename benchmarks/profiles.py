"""How big and how long each benchmark is: ``smoke`` (CI, 1-2 minutes) and ``full`` (~10-15 minutes)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """Sizes, durations and repetitions for one benchmark run."""

    name: str
    rate_seconds: int  # one request-rate measurement (ab / wrk)
    warmup_seconds: int  # per server and endpoint, before its rate measurements (0: none)
    concurrencies: tuple[int, ...]  # HEAD blob and GET manifest
    put_concurrencies: tuple[int, ...]  # manifest PUT
    push_size: int
    push_reps: int
    chunk_size: int  # PATCH chunk for the chunked push
    pull_sizes: tuple[int, ...]
    pull_streams: tuple[int, ...]
    pull_seconds: float  # one pull measurement (per size and stream count)
    range_size: int  # bytes per Range GET
    cache_blobs: int
    cache_total: int
    cache_reps: int
    cache_concurrency: int
    disk_test_size: int
    loopback_seconds: float
    sha_size: int


SMOKE = Profile(
    name="smoke", rate_seconds=1, warmup_seconds=0, concurrencies=(1, 16, 64), put_concurrencies=(1, 16),
    push_size=16 * MiB, push_reps=2, chunk_size=8 * MiB,
    pull_sizes=(1 * MiB, 16 * MiB), pull_streams=(1, 8), pull_seconds=0.6, range_size=1 * MiB,
    cache_blobs=200, cache_total=64 * MiB, cache_reps=1, cache_concurrency=4,
    disk_test_size=128 * MiB, loopback_seconds=1.0, sha_size=128 * MiB,
)

FULL = Profile(
    name="full", rate_seconds=8, warmup_seconds=1, concurrencies=(1, 16, 64), put_concurrencies=(1, 16),
    push_size=256 * MiB, push_reps=5, chunk_size=8 * MiB,
    pull_sizes=(1 * MiB, 32 * MiB, 256 * MiB), pull_streams=(1, 8), pull_seconds=5.0, range_size=1 * MiB,
    cache_blobs=200, cache_total=1024 * MiB, cache_reps=3, cache_concurrency=4,
    disk_test_size=1024 * MiB, loopback_seconds=3.0, sha_size=512 * MiB,
)

PROFILES = {p.name: p for p in (SMOKE, FULL)}
