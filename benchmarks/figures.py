"""One benchmark figure: both registries' values, their ratio, the target, and the physical limit it is read
against."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

SUBJECT, PEER = "cachesvc", "distribution"


@dataclass
class Figure:
    key: str
    section: str
    label: str
    unit: str  # req/s, MB/s, s, MiB
    higher_is_better: bool = True
    samples: dict[str, list[float]] = field(default_factory=dict)
    target: float | None = None  # cachesvc's advantage over distribution it should reach (x times)
    max_value: float | None = None  # an absolute ceiling for cachesvc's value instead (memory)
    limit_keys: tuple[str, ...] = ()  # the limits this figure needs; the tightest one applies
    limit_bytes: int | None = None  # for timed figures: bytes moved, so limit time = bytes / limit rate
    limit_label: str | None = None
    limit_value: float | None = None  # same unit as the figure; for times, the least possible time
    limit_applies_to: tuple[str, ...] = (SUBJECT, PEER)
    order: list[list[str]] = field(default_factory=list)  # servers in measurement order, per repetition
    cores: dict[str, dict[str, float]] = field(default_factory=dict)  # measured server -> cores used by each
    extra: dict[str, object] = field(default_factory=dict)

    def add(self, server: str, value: float) -> None:
        self.samples.setdefault(server, []).append(value)

    def value(self, server: str) -> float | None:
        got = self.samples.get(server)
        return statistics.median(got) if got else None

    @property
    def ratio(self) -> float | None:
        """How many times better cachesvc is (higher rate, or shorter time / less memory)."""
        a, b = self.value(SUBJECT), self.value(PEER)
        if not a or not b:
            return None
        return a / b if self.higher_is_better else b / a

    @property
    def met(self) -> bool | None:
        if self.max_value is not None:
            v = self.value(SUBJECT)
            return None if v is None else v < self.max_value
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def fraction(self, server: str) -> float | None:
        """The server's value as a fraction of the physical limit (1.0 = at the limit)."""
        v = self.value(server)
        if v is None or not self.limit_value or server not in self.limit_applies_to:
            return None
        return v / self.limit_value if self.higher_is_better else self.limit_value / v

    def target_text(self) -> str:
        if self.max_value is not None:
            return f"< {self.max_value:g} {self.unit}"
        return f">= {self.target:g}x" if self.target is not None else "-"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["value"] = {s: self.value(s) for s in self.samples}
        d["ratio"] = self.ratio
        d["met"] = self.met
        d["fraction_of_limit"] = {s: self.fraction(s) for s in self.samples}
        return d
