"""Summarise py-spy collapsed stacks (``--profile`` output): ``python -m benchmarks.stacks FILE [N]`` prints the
frames with the most samples on top of the stack (self) and anywhere in it (total), as shares of all samples."""

from __future__ import annotations

import collections
import sys
from pathlib import Path


def summarise(path: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return f"{path}: no samples\n"
    out = [f"{path}: {samples} samples", "", "self:"]
    out += [f"  {n / samples * 100:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    out += ["", "total (frame anywhere on the stack):"]
    out += [f"  {n / samples * 100:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25), end="")
