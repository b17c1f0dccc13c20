"""How the remote-registry comparison depends on the distance to the remote: the full warm build with cachesvc
and with the remote registry, at several round-trip times added by the delay line (``benchmarks/delayline.py``).

``python -m benchmarks.rtt_sweep --rtts 0,2,5,10,20 [--reps 5]`` runs ``build_bench --full --scenarios
remote-registry,cachesvc --link-rtt MS`` for each RTT (each run writes ``results/build-rttMSms.*``; RTT 0, the
stock link, writes ``results/build-rtt0ms.*`` so the stock all-scenario ``build.*`` stays as it is), then
``results/build-rtt.{json,md}``: per RTT, both medians, their ratio, and the ratio of the two jobs of each
repetition (they run back to back, so slow drift of the machine cancels out of it).
``--from FILE.json ...`` only writes the summary, from runs already made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import build_bench

RESULTS = build_bench.RESULTS
TARGET = 1.3  # cachesvc at least 1.3x faster than the remote registry (the project's issue)


def row(result: dict[str, Any]) -> dict[str, Any]:
    """One RTT's line: medians, ratio of medians, per-repetition ratios, where the remote's extra time went."""
    warm = [j for j in result["jobs"] if j["case"] == "warm"]
    by_rep: dict[int, dict[str, dict[str, Any]]] = {}
    for job in warm:
        by_rep.setdefault(job["rep"], {})[job["scenario"]] = job
    pairs = [rep["remote-registry"]["total_s"] / rep["cachesvc"]["total_s"]
             for rep in by_rep.values() if "remote-registry" in rep and "cachesvc" in rep]
    table = result["table"]["warm"]
    remote, ours = table["remote-registry"], table["cachesvc"]
    return {
        "rtt_ms": result["settings"].get("link_rtt_ms", 0.0),
        "reps": len(pairs),
        "remote_s": remote["total_s"], "cachesvc_s": ours["total_s"],
        "ratio": remote["total_s"] / ours["total_s"],
        "paired": [round(p, 3) for p in pairs],
        "paired_median": statistics.median(pairs) if pairs else None,
        "remote_totals": remote["totals"], "cachesvc_totals": ours["totals"],
        "remote_phases": remote.get("phases", {}), "cachesvc_phases": ours.get("phases", {}),
        "requests": remote.get("requests"),
        "verified": remote["verified"] and ours["verified"],
        "other_cores": max(remote.get("other_cores", 0.0), ours.get("other_cores", 0.0)),
        "started": result["started"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Full warm build: cachesvc co-located against a remote registry at several distances",
        "",
        "`python -m benchmarks.rtt_sweep` (Docker Engine, full fixture, 1 Gbit/s tbf link; the RTT is added by the "
        "delay line in front of the remote registry, see `benchmarks/delayline.py`). Medians of each run's "
        "repetitions; *paired* = remote / cachesvc within one repetition (the two jobs run back to back).",
        "",
        "| added RTT | reps | remote s | cachesvc s | remote / cachesvc | paired, median | paired, each "
        f"| remote pull s | cachesvc pull s | requests | verified | other cores | >= {TARGET}x |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        requests = "-" if r["requests"] is None else f"{r['requests']:g}"
        lines.append(
            f"| {r['rtt_ms']:g} ms | {r['reps']} | {r['remote_s']:.2f} | {r['cachesvc_s']:.2f} | "
            f"**{r['ratio']:.2f}x** | "
            f"{r['paired_median']:.2f}x | {', '.join(f'{p:.2f}' for p in r['paired'])} | "
            f"{r['remote_phases'].get('pull', 0):.2f} | {r['cachesvc_phases'].get('pull', 0):.2f} | "
            f"{requests} | {'yes' if r['verified'] else '**NO**'} | "
            f"{r['other_cores']:.2f} | {'met' if r['ratio'] >= TARGET else 'missed'} |")
    lines += [
        "",
        "Each RTT is its own run (its own priming builds), started at: "
        + "; ".join(f"{r['rtt_ms']:g} ms {r['started']}" for r in rows) + ".",
        "The delay line terminates TCP: connection set-up and slow start do not pay the added RTT, so a real "
        "remote at the same RTT would be slower than shown.",
    ]
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "build-rtt.json", out / "build-rtt.md"]
    paths[0].write_text(json.dumps({"benchmark": "build-rtt", "rows": rows}, indent=1) + "\n")
    paths[1].write_text(markdown(rows))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rtt_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--rtts", default="0,2,5,10,20", help="added round-trip times, ms (0,2,5,10,20)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per RTT (5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="FILE.json",
                        help="summarise these build-benchmark results instead of running")
    args = parser.parse_args(argv)
    if args.sources:
        results = [json.loads(p.read_text()) for p in args.sources]
    else:
        try:
            rtts = [float(x) for x in args.rtts.split(",")]
        except ValueError:
            raise SystemExit(f"--rtts: not a list of numbers: {args.rtts!r}") from None
        results = []
        for rtt in rtts:
            profile = replace(build_bench.FULL, reps=args.reps, link_rtt_ms=rtt)
            result = build_bench.run(False, profile=profile, out=None,
                                     scenarios=("remote-registry", "cachesvc"))
            name = f"build-rtt{rtt:g}ms"
            for path in build_bench.build_report.write(result, args.out, name):
                print(f"wrote {path}", file=sys.stderr)
            results.append(result)
    rows = sorted((row(r) for r in results), key=lambda r: r["rtt_ms"])
    for path in write(rows, args.out):
        print(f"wrote {path}", file=sys.stderr)
    print(markdown(rows))
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
