"""Cache effectiveness counters: hits and misses per repository and per minute of the last hour.

Registries count requests; a cache's operator wants hit ratios. Per-repository figures are kept for a bounded
number of repositories (the busiest are kept when the table is full) so memory and metric cardinality stay
bounded however many repositories clients invent.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

MAX_REPOS = 1000
MINUTES = 60


@dataclass(slots=True)
class Counts:
    hits: int = 0
    misses: int = 0
    bytes_served: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    def ratio(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None


class Traffic:
    """Lookups by repository and by minute; ``record`` is called on every blob and manifest lookup."""

    def __init__(self, clock: Callable[[], float], max_repos: int = MAX_REPOS) -> None:
        self.clock = clock
        self.max_repos = max_repos
        self.repos: dict[str, Counts] = {}
        self.other = Counts()
        self.total = Counts()
        self.minutes: collections.deque[tuple[int, Counts]] = collections.deque(maxlen=MINUTES)

    def _minute(self) -> Counts:
        minute = int(self.clock() // 60)
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, Counts()))
        return self.minutes[-1][1]

    def _repo(self, repo: str) -> Counts:
        counts = self.repos.get(repo)
        if counts is None:
            if len(self.repos) >= self.max_repos:
                # Fold the quietest repository into "other" to make room.
                quietest = min(self.repos, key=lambda r: self.repos[r].lookups)
                gone = self.repos.pop(quietest)
                self.other.hits += gone.hits
                self.other.misses += gone.misses
                self.other.bytes_served += gone.bytes_served
            counts = self.repos[repo] = Counts()
        return counts

    def record(self, repo: str, hit: bool) -> None:
        for c in (self._repo(repo), self.total, self._minute()):
            if hit:
                c.hits += 1
            else:
                c.misses += 1

    def served(self, repo: str, nbytes: int) -> None:
        for c in (self._repo(repo), self.total, self._minute()):
            c.bytes_served += nbytes

    def top(self, n: int = 10) -> list[tuple[str, Counts]]:
        return sorted(self.repos.items(), key=lambda kv: kv[1].lookups, reverse=True)[:n]

    def last_hour(self) -> tuple[Counts, list[tuple[int, Counts]]]:
        """Totals over the last 60 minutes and the per-minute series (minutes without traffic included)."""
        now = int(self.clock() // 60)
        by_minute = dict(self.minutes)
        series = [(m, by_minute.get(m, Counts())) for m in range(now - MINUTES + 1, now + 1)]
        total = Counts()
        for _, c in series:
            total.hits += c.hits
            total.misses += c.misses
            total.bytes_served += c.bytes_served
        return total, series
