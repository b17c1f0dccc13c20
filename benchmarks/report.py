"""Benchmark results out: ``<name>.json`` (everything), ``<name>.md`` (Markdown tables) and PNG charts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.figures import PEER, SUBJECT

NOTES = [
    "ratio = how many times better cachesvc is than distribution (higher rate, or shorter time / less memory).",
    "of limit = the figure as a fraction of the physical limit in the last column, measured in the same run "
    "(for timed runs: least possible time / time taken). For request rates the reference is not physical: it "
    "is a no-op aiohttp+uvloop server (cachesvc's own HTTP stack), so it applies to cachesvc only.",
    "order = which server was measured first in each repetition (c = cachesvc, d = distribution); it alternates "
    "between figures and repetitions because the disk (ext4, mounted with discard) makes file creation slow "
    "for minutes after large deletes.",
    "CPU = cores used during cachesvc's measurement (cachesvc / client) and during distribution's "
    "(distribution / client), from /proc; the machine has 2 cores, shared by server and client. other load = "
    "cores busy with anything else meanwhile (the larger of the two measurements): above ~0.2 the figure "
    "was perturbed by other work on the machine.",
    "HEAD is driven by `ab -i -k` (one URL): wrk 4.1 waits for a body after a HEAD response that carries "
    "Content-Length and completes no request. GET/PUT manifest use wrk (1 thread); blob transfers use a "
    "raw-socket Python client (threads, recv_into a reused buffer), cross-checked with curl.",
    "Blob pulls read from the page cache (the blobs were just written); cache import follows its export.",
    "MB = 10^6 bytes; MiB = 2^20 bytes. Each value is the median of its repetitions (see the JSON for all).",
]


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    if unit in ("MiB", "cores"):
        return f"{value:.1f}" if unit == "MiB" else f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _cores(fig: dict[str, Any]) -> str:
    parts = []
    for server in (SUBJECT, PEER):
        c = fig["cores"].get(server)
        if c:
            parts.append(f"{c.get(server, 0):.2f}/{c.get('client', 0):.2f}")
    return " · ".join(parts) or "-"


def _other(fig: dict[str, Any]) -> float | None:
    found = [c.get("other", 0.0) for c in fig["cores"].values()]
    return max(found) if found else None


def _order(fig: dict[str, Any]) -> str:
    return " ".join("".join(s[0] for s in rep) for rep in fig["order"]) or "-"


def _met(fig: dict[str, Any]) -> str:
    return {True: "yes", False: "**NO**", None: ""}[fig["met"]]


def markdown(result: dict[str, Any]) -> str:
    """The whole report as Markdown: run facts, physical limits, one table per section, notes."""
    m, v = result["machine"], result["versions"]
    lines = [
        f"# Registry benchmark: cachesvc vs CNCF distribution ({result['profile']} profile)"
        if result["benchmark"] == "registry" else f"# The machine's limits ({result['profile']} profile)",
        "",
        f"Run {result['started']} ({result['seconds']:.0f} s) on {m['cpus']} x {m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}; data on `{m['data_fs']}`; other processes kept "
        f"{m.get('busy_cores_before', 0):.2f} cores busy just before the run.  ",
        f"cachesvc {v['cachesvc']} at {v.get('commit', '?')} (Python {v['python']}, aiohttp {v['aiohttp']}, "
        f"uvloop); distribution: {v['distribution']}.",
        "",
        "## Physical limits (same run)",
        "",
        "With the registries, each limit is measured at the start and at the end of the run and keeps the better "
        "value (other work on the machine can only lower a measurement).",
        "",
        "| limit | value | measurements |",
        "|---|---:|---:|",
    ]
    for lim in result["limits"].values():
        samples = " / ".join(_num(x, lim["unit"]) for x in lim.get("samples", []))
        lines.append(f"| {lim['label']} | {_num(lim['value'], lim['unit'])} {lim['unit']} | {samples} |")
    sections: dict[str, list[dict[str, Any]]] = {}
    for fig in result["figures"]:
        sections.setdefault(fig["section"], []).append(fig)
    header = ("| figure | unit | cachesvc | distribution | ratio | target | met | cachesvc of limit | "
              "distribution of limit | limit | order | CPU cs/client · dist/client | other load |")
    for section, figs in sections.items():
        lines += ["", f"## {section}", "", header, "|---|---|---:|---:|---:|---|---|---:|---:|---|---|---|---:|"]
        for fig in figs:
            v, unit = fig["value"], fig["unit"]
            ratio = f"{fig['ratio']:.2f}x" if fig["ratio"] else "-"
            frac = fig["fraction_of_limit"]
            limit = "-"
            if fig["limit_label"]:
                limit = f"{fig['limit_label']} ({_num(fig['limit_value'], unit)} {unit})"
            lines.append(
                f"| {fig['label']} | {unit} | {_num(v.get(SUBJECT), unit)} | {_num(v.get(PEER), unit)} | {ratio} | "
                f"{fig_target(fig)} | {_met(fig)} | {_pct(frac.get(SUBJECT))} | {_pct(frac.get(PEER))} | {limit} | "
                f"{_order(fig)} | {_cores(fig)} | {_num(_other(fig), 'cores')} |")
    missed = [f["label"] for f in result["figures"] if f["met"] is False]
    lines += ["", "## Targets", "",
              f"{sum(1 for f in result['figures'] if f['met'])} met, {len(missed)} missed"
              + (": " + "; ".join(missed) if missed else "") + ".", "", "## Notes", ""]
    lines += [f"- {n}" for n in [*NOTES, *result.get("notes", [])]]
    charts = result.get("charts", [])
    if charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n".join(lines) + "\n"


def fig_target(fig: dict[str, Any]) -> str:
    if fig["max_value"] is not None:
        return f"< {fig['max_value']:g} {fig['unit']}"
    return f">= {fig['target']:g}x" if fig["target"] is not None else "-"


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files, or None (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no charts", file=sys.stderr)
        return None
    return plt


def charts(result: dict[str, Any], prefix: Path) -> list[Path]:
    """PNG charts next to the report; none (with a warning) when matplotlib is not installed."""
    if (plt := pyplot()) is None:
        return []
    figs = result["figures"]
    out: list[Path] = []
    colours = {SUBJECT: "#1f77b4", PEER: "#ff7f0e"}

    def save(fig: Any, name: str) -> None:
        path = prefix.with_name(f"{prefix.name}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    ranked = [f for f in figs if f["ratio"] is not None and (f["target"] is not None or f["max_value"] is not None)]
    if ranked:
        fig, ax = plt.subplots(figsize=(9, 0.32 * len(ranked) + 1.2))
        labels = [f["label"] for f in ranked][::-1]
        ratios = [f["ratio"] for f in ranked][::-1]
        ax.barh(labels, ratios, color=["#2ca02c" if f["met"] else "#d62728" for f in ranked][::-1])
        for i, f in enumerate(ranked[::-1]):
            if f["target"] is not None:
                ax.plot([f["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("cachesvc / distribution (x, log scale; black tick = target)")
        ax.tick_params(axis="y", labelsize=7)
        save(fig, "ratios")

    def grouped(select: list[dict[str, Any]], name: str, ylabel: str, log: bool) -> None:
        if not select:
            return
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(select) + 2), 4.5))
        xs = range(len(select))
        width = 0.38
        for k, server in enumerate((SUBJECT, PEER)):
            ax.bar([x + (k - 0.5) * width for x in xs], [f["value"].get(server) or 0 for f in select], width,
                   label=server, color=colours[server])
        for x, f in zip(xs, select, strict=True):
            if f["limit_value"]:
                ax.plot([x - 0.45, x + 0.45], [f["limit_value"]] * 2, color="black", linewidth=1.5)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f["label"] for f in select], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(ylabel + ("  (log scale)" if log else "") + "; black line = limit")
        if log:
            ax.set_yscale("log")
        ax.legend()
        save(fig, name)

    grouped([f for f in figs if f["unit"] == "req/s"], "rates", "requests/s", True)
    grouped([f for f in figs if f["unit"] == "MB/s"], "throughput", "MB/s", False)
    grouped([f for f in figs if f["unit"] == "s"], "cache", "seconds (lower is better)", False)
    return out


def write(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.json, ``name``.md and the charts into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = charts(result, out_dir / name) if result.get("figures") else []
    result["charts"] = [p.name for p in pngs]
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown(result))
    return [json_path, md_path, *pngs]
