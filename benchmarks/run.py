"""Run the benchmarks: ``python -m benchmarks.run --smoke|--full [--only NAME[:SECTION,...]]``.

Benchmarks: ``registry`` (cachesvc vs distribution, with the machine's limits; sections head, manifest, push,
pull, cache) and ``limits`` (the machine's limits alone). Results go to ``benchmarks/results/<name>.json``,
``<name>.md`` and ``<name>-*.png``, where ``<name>`` is the benchmark name, plus ``-only-<sections>`` for a
partial run and ``-smoke`` for the smoke profile.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import limits, report
from benchmarks.procstat import machine_busy_seconds
from benchmarks.profiles import PROFILES, Profile
from benchmarks.registry_bench import SECTIONS, RegistryBench

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("registry", "limits")


class Progress:
    """One line per step on stderr, prefixed with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine(workdir: Path) -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, kernel, and the filesystem holding the data."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    best = ("?", "?", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if str(workdir).startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype, opts)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "data_dir": str(workdir),
            "data_fs": f"{best[0]} on {best[1]} ({best[2]}, {best[3]})"}


def busy_cores(seconds: float = 2.0) -> float:
    """Cores the machine keeps busy over ``seconds`` (before the run: is anything else running?)."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


def wait_quiet(limit: float, progress: Progress, threshold: float = 0.2) -> float:
    """Wait up to ``limit`` seconds for the machine to go quiet; returns the last busy-cores reading."""
    deadline = time.monotonic() + limit
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        progress(f"machine busy ({busy:.2f} cores used by other processes): waiting for it to go quiet")
        busy = busy_cores(5.0)
    return busy


def versions() -> dict[str, str]:
    import aiohttp

    import cachesvc

    try:
        dist = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        dist = "not installed"
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "cachesvc"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    return {"cachesvc": cachesvc.__version__, "commit": (commit or "?") + (" + uncommitted changes" if dirty else ""),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__, "distribution": dist}


def run_benchmark(name: str, sections: tuple[str, ...], profile: Profile, workdir: Path, progress: Progress,
                  profile_dir: Path | None) -> dict[str, Any]:
    started = time.time()
    result: dict[str, Any] = {"benchmark": name, "profile": profile.name, "sections": list(sections),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
                              "machine": machine(workdir), "versions": versions(), "figures": [], "notes": []}
    if name == "limits":
        payload = memoryview(os.urandom(64 * 1024 * 1024))
        found = limits.measure(profile, workdir, payload, 3544, progress)
        result["limits"] = {k: v.as_dict() for k, v in found.items()}
    else:
        bench = RegistryBench(profile, workdir, progress, profile_dir=profile_dir)
        try:
            bench.run(sections)
        finally:
            result["limits"] = {k: v.as_dict() for k, v in bench.limits.items()}
            result["figures"] = [f.as_dict() for f in bench.figures]
            result["notes"] = bench.notes
    result["seconds"] = time.time() - started
    noisy = [f["label"] for f in result["figures"]
             if max((c.get("other", 0.0) for c in f["cores"].values()), default=0.0) > 0.2]
    if noisy:
        result["notes"].append(f"{len(noisy)} figure(s) were measured while other processes used more than "
                               "0.2 cores (see 'other load'): " + "; ".join(noisy) + ".")
    return result


def parse_only(only: str | None) -> list[tuple[str, tuple[str, ...]]]:
    if not only:
        return [("registry", SECTIONS)]
    name, _, secs = only.partition(":")
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    sections = tuple(s for s in secs.split(",") if s) or SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [(name, sections if name == "registry" else ())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--smoke", action="store_true", help="tiny sizes, few repetitions (1-2 minutes, for CI)")
    size.add_argument("--full", action="store_true", help="the real sizes (~10-15 minutes)")
    parser.add_argument("--only", metavar="NAME[:SECTION,...]",
                        help=f"one benchmark ({', '.join(BENCHMARKS)}), optionally only some sections of "
                             f"registry ({', '.join(SECTIONS)})")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("BENCH_WORKDIR", "/var/tmp")),
                        help="parent of the run's data directory; both servers' data go on this disk")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for other processes to stop using the CPU")
    parser.add_argument("--profile", action="store_true",
                        help="record py-spy stacks of cachesvc during each of its measurements (perturbs them)")
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "full"]
    progress = Progress()
    for name, sections in parse_only(args.only):
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="cachesvc-bench-", dir=args.workdir))
        out_name = name + ("" if sections in (SECTIONS, ()) else "-only-" + "-".join(sections))
        out_name += "-smoke" if profile.name == "smoke" else ""
        progress(f"{name} ({profile.name}) in {workdir}")
        busy = wait_quiet(args.wait_quiet, progress)
        if busy > 0.2:
            progress(f"warning: other processes keep {busy:.2f} cores busy: figures will be perturbed")
        try:
            result = run_benchmark(name, sections, profile, workdir, progress,
                                   args.out / "profiles" if args.profile else None)
            result["machine"]["busy_cores_before"] = round(busy, 2)
        finally:
            if args.keep:
                progress(f"kept the data in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
                progress("deleted the run's data (file creation on this disk may be slow for a few minutes)")
        for path in report.write(result, args.out, out_name):
            progress(f"wrote {path}")
        if result["figures"]:
            print(report.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
