"""The build benchmark's results: ``<name>.json`` (every job), ``<name>.md`` (tables) and PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.report import pyplot

MB = 1_000_000
ORDER = ("cold", "tarball", "remote-registry", "cachesvc", "distribution-colocated", "memory-colocated", "local")
LABELS = {"cold": "cold (no cache)", "tarball": "tarball (hosted-CI cache)", "remote-registry": "remote registry",
          "cachesvc": "**cachesvc** (co-located)", "distribution-colocated": "distribution, co-located",
          "memory-colocated": "in-memory registry, co-located", "local": "local (engine state kept)"}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.0f} %"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:,.1f}"


def _rows(result: dict[str, Any], case: str) -> list[tuple[str, dict[str, Any]]]:
    rows = result.get("table", {}).get(case, {})
    return [(s, rows[s]) for s in ORDER if s in rows]


def job_table(result: dict[str, Any], case: str) -> list[str]:
    lines = ["| scenario | total s | cache import s | restore s | build s | export s | moved MB | requests | "
             "speed-up vs cold | overhead vs local | verified | totals of each run (s) | cores ours / other |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    cold = result.get("table", {}).get("cold", {}).get("cold")
    rows = _rows(result, case)
    if case in ("warm", "changed") and cold:
        rows = [("cold", cold), *rows]
    for scenario, row in rows:
        overhead = "-"
        if row.get("overhead_vs_local_s") is not None and scenario != "local":
            overhead = f"{row['overhead_vs_local_s']:+.2f} s ({_pct(row.get('overhead_vs_local'))})"
        lines.append(
            f"| {LABELS.get(scenario, scenario)} | **{_s(row['total_s'])}** | {_s(row.get('import_s'))} | "
            f"{_s(row['restore_s'])} | {_s(row['build_s'])} | {_s(row['export_s'])} | {_mb(row['bytes_moved'])} | "
            f"{row['requests'] if row.get('requests') is not None else '-'} | {_x(row.get('speedup_vs_cold'))} | "
            f"{overhead} | {'yes' if row['verified'] else '**NO**'} | {', '.join(f'{t:.2f}' for t in row['totals'])} "
            f"| {row.get('cores', 0):.2f} / {row.get('other_cores', 0):.2f} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, v, st, facts = result["machine"], result["versions"], result["settings"], result.get("facts", {})
    engine = facts.get("engine", {})
    rtt = st.get("link_rtt_ms", 0)
    lines = [
        f"# Build benchmark: one CI image build with each way of keeping the layer cache "
        f"({result['engine']}, {result['profile']} profile)",
        "",
        f"Run {result['started']} ({result['seconds']:.0f} s) on {m['cpus']} x {m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}; load average {m['loadavg_before']:.1f} just before.  ",
        f"Engine: {engine.get('engine', '?')} ({engine.get('storage_driver', '?')}); cachesvc {v.get('cachesvc')}; "
        f"{v.get('distribution', 'distribution ?')}; layers decompressed with "
        f"{'unpigz (pigz)' if v.get('unpigz') else 'Go gzip (no unpigz on PATH)'}.  ",
        f"Fixture: {st['fixture_text']}; {st['reps']} run(s) per scenario, medians shown.  ",
        f"Hosted-CI cache bandwidth {st['tarball_rate'] / MB:.0f} MB/s; link to the remote registry "
        f"{st['link_rate'] / 1e6:.0f} Mbit/s (`{facts.get('link', '?')}`), "
        f"{f'+{rtt:g} ms RTT (delay line)' if rtt else 'no added RTT'}.  ",
        "Builder state and every registry's data are on tmpfs (RAM): see the notes.",
    ]
    if st.get("variant"):
        lines += ["", f"**Not the stock {result['profile']} profile:** {st['variant']}."]
    jobs = [j for j in result.get("jobs", []) if j["case"] == "warm" and j["scenario"] != "local"]
    busy = [j for j in jobs if j.get("other_cores", 0) > 0.2]
    if busy:
        worst = max(j["other_cores"] for j in busy)
        lines += ["", f"**Other work on the machine perturbed {len(busy)} of the {len(jobs)} warm jobs the targets "
                  f"rest on** (it used more than 0.2 of the {m['cpus']} cores during them, up to {worst:.2f}; see "
                  "the last column): re-measure on a quiet machine before quoting these figures."]
    if result.get("error"):
        lines += ["", f"**The run stopped with an error:** `{result['error']}`"]
    failed = [j for j in result.get("jobs", []) if not j["verified"]]
    if failed:
        lines += ["", "**Verification failures:**", ""]
        lines += [f"- rep {j['rep'] + 1} {j['scenario']} {j['case']}: {j['problem']}" for j in failed]
    lines += ["", "## Full warm build (unchanged sources, fresh builder)", "", *job_table(result, "warm")]
    lines += ["", "## One changed source file (only the build step and the final stage re-run)", "",
              *job_table(result, "changed")]
    first = _rows(result, "first-export")
    if first:
        lines += ["", "## Exporting the priming build's cache for the first time", "",
                  "| scenario | export s | moved MB | requests | how |", "|---|---:|---:|---:|---|"]
        hows = {j["scenario"]: j["problem"] for j in result["jobs"] if j["case"] == "first-export"}
        for scenario, row in first:
            how = hows.get(scenario) or ("docker save, zstd, upload" if scenario == "tarball" else "push")
            lines.append(f"| {LABELS.get(scenario, scenario)} | {_s(row['export_s'])} | {_mb(row['bytes_moved'])} | "
                         f"{row['requests'] if row.get('requests') is not None else '-'} | {how} |")
    if result.get("targets"):
        lines += ["", "## Targets (full warm build, job totals)", "",
                  "| target | cachesvc s | reference s | reference / cachesvc | needed | met |",
                  "|---|---:|---:|---:|---:|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['text']} ({t['reference']}) | {_s(t['subject_s'])} | {_s(t['reference_s'])} | "
                         f"{_x(t['ratio'])} | >= {t['factor']:.2f}x | {'yes' if t['met'] else '**NO**'} |")
    warm = dict(_rows(result, "warm"))
    if any(row.get("phases") for row in warm.values()) and result["engine"] == "docker":
        lines += ["", "## Where a warm build's time goes (docker, from BuildKit's progress, medians)", "",
                  "| scenario | build s | resolve: to cache manifest imported | pull: to last layer pulled | "
                  "unpack: to the end (layers applied, image written) | export (push) s | CPU s by process |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for scenario, row in warm.items():
            ph = row.get("phases") or {}
            lines.append(f"| {LABELS.get(scenario, scenario)} | {_s(row['build_s'])} | {_s(ph.get('resolve'))} | "
                         f"{_s(ph.get('pull'))} | {_s(ph.get('unpack'))} | {_s(row['export_s'])} | "
                         f"{cpu_text(row.get('cpu_by_process') or {})} |")
        lines += ["", *gap_text(warm)]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in [*NOTES.get(result["engine"], []), *COMMON_NOTES, *result.get("notes", [])]]
    charts = result.get("charts", [])
    if charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n".join(lines) + "\n"


def cpu_text(cpu: dict[str, float], most: int = 5) -> str:
    """``dockerd 3.10, cachesvc 0.05, ...``: the biggest users first (process names as the kernel has them)."""
    top = [f"{name} {seconds:.2f}" for name, seconds in list(cpu.items())[:most] if seconds >= 0.01]
    return ", ".join(top) or "-"


def gap_text(warm: dict[str, dict[str, Any]]) -> list[str]:
    """Where cachesvc's warm job spends the time a builder that kept its state does not."""
    cs, local = warm.get("cachesvc"), warm.get("local")
    if not cs or not local or not cs.get("phases"):
        return []
    ph = cs["phases"]
    gap = cs["total_s"] - local["total_s"]
    return [f"The gap to `local`: cachesvc's warm job takes {gap:.2f} s more ({cs['total_s']:.2f} s against "
            f"{local['total_s']:.2f} s). Of its build, {ph.get('resolve', 0):.2f} s pass before the cache manifest "
            f"is imported (local's whole build: {local['build_s']:.2f} s), {ph.get('pull', 0):.2f} s pulling "
            f"{cs['bytes_moved'] / MB:.0f} MB of layers, and {ph.get('unpack', 0):.2f} s after the last pull "
            "(decompressing and applying the layers to the engine's store, writing the image); the push that "
            f"ends the job takes {cs['export_s']:.2f} s. Pulling and unpacking are what every fresh builder pays, "
            "whatever the registry: compare the in-memory registry's row."]


COMMON_NOTES = [
    "total = restore + build + export: everything the CI job spends on its image and its cache. restore "
    "(tarball only) = download at the hosted-CI bandwidth + zstd -d + import; export = docker push of the "
    "image carrying its inline cache (registries), or save + tar/zstd + upload (tarball); buildah pushes its "
    "cache during the build (--cache-to), so its export is inside build.",
    "cache import = restore + (build - local's build): what getting the cache costs a fresh builder beyond "
    "the same all-cached build on a builder that kept its state.",
    "speed-up vs cold = cold total / total; overhead vs local = total - local's total.",
    "CPU s by process: CPU seconds of the job by process name, each process's own time plus that of the "
    "children it reaped (dockerd's unpigz and untar helpers count under dockerd), medians; the docker client "
    "runs outside the namespaces and is not in it.",
    "cores ours / other: CPU the benchmark's own processes (engine, registries, clients: everything in its two "
    "network namespaces and its children) used during the job (median), and what anything else on the machine "
    "used meanwhile (the worst run): above ~0.2 the job was perturbed by other work on this 2-core machine. "
    "Jobs that run RUN steps (cold, changed) over-state other: a finished step's processes are reaped outside "
    "the namespaces, so their CPU is not counted as ours; for warm jobs (no step runs) the split is exact.",
    "moved = bytes on the builder's loopback and on the link to the remote registry during the job (TCP/IP "
    "headers included), plus the archive's bytes both ways for tarball. requests = the registry's access log "
    "over the job.",
    "Every warm build is checked: every RUN/COPY step reported CACHED and the image id equal to the priming "
    "build's (the fixture's steps write /dev/urandom data, so any step that ran again changes the id). Every "
    "changed build: exactly the build step, the final stage's two steps after it re-ran, the first five layers "
    "equal the priming build's and the last two differ.",
    "Builder state and all registry data live on tmpfs, a fair common medium: on this machine the ext4 disk is "
    "mounted with discard, and for minutes after large deletes file creation runs 5-15x slower, so wiping and "
    "recreating builder state there would measure the disk's trim. On tmpfs fsync costs nothing, which favours "
    "cachesvc and distribution (both fsync) equally; the in-memory registry does not write at all.",
    "The remote registry is CNCF distribution in a network namespace of the benchmark's own, reached over a "
    "veth pair shaped with tc tbf in both directions. By default no latency is added (this kernel has no "
    "netem): the veth's round trip is ~0.05 ms, a registry in the same rack. With --link-rtt MS a delay line "
    "(benchmarks/delayline.py) in the remote namespace holds every byte for MS/2 in each direction before the "
    "registry; it terminates TCP, so connection set-up and slow start do not pay the RTT (a real path would be "
    "slower), and its CPU counts as ours.",
    "Every co-located registry runs on the builder's loopback (127.0.0.1), in the same private network "
    "namespace as the engine. The hosted-CI storage is a directory on tmpfs reached through a copy paced at the "
    "configured bandwidth.",
    "cold, local and the first exports of repetition r share one priming build; the other scenarios then run "
    "in an order rotated between repetitions.",
]

NOTES = {
    "docker": [
        "Docker Engine 20.10's BuildKit with the classic image store can only export inline cache (mode=min: "
        "the final image's layers). The CI job builds with --build-arg BUILDKIT_INLINE_CACHE=1 --cache-from REF "
        "-t REF and pushes REF; for cachesvc the flags and REF are exactly those launch.sh printed. The fixture's "
        "final stage is FROM deps, so the dependencies layer is in the final image and inline cache covers the "
        "changed-file case too.",
        "tarball with docker: docker save of the image (it carries its inline cache; all layers of the final "
        "image, so no intermediate stage is needed) | zstd -3 --long -T0, paced upload; before the build: paced "
        "download, zstd -d | docker load, then --cache-from the loaded image (BuildKit reads inline cache from "
        "a local image). A hosted-CI job saves every time (a cache key per commit).",
        "The builder is the one launch.sh makes (--device none on a tmpfs root: cachesvc + dockerd, dockerd "
        "with --insecure-registry=http://<remote> so BuildKit also imports from the remote over plain HTTP); "
        "cachesvc runs, idle, in every scenario. A fresh builder = launch.sh --stop, rm -rf root/docker, "
        "launch.sh; cachesvc's data stays, as on a real builder's cache disk.",
    ],
    "buildah": [
        "buildah build --layers --cache-to REPO --cache-from REPO: one cache image per step, pushed as the step "
        "finishes and pulled step by step. launch.sh has no buildah engine, so cachesvc is started on its own "
        "(cachesvc serve, data on the builder's tmpfs).",
        "tarball with buildah: tar of buildah's whole storage (its local layers are its cache; overlay driver) | "
        "zstd, paced upload; before the build: paced download, extract, build with --layers.",
        "The priming build pushes its cache to one registry; the others get a byte-identical copy with skopeo, "
        "so their 'first export' is not an engine export.",
    ],
}


def charts(result: dict[str, Any], prefix: Path) -> list[Path]:
    """Stacked job times (warm and changed) and bytes moved per scenario; none without matplotlib."""
    if (plt := pyplot()) is None:
        return []
    out: list[Path] = []
    table = result.get("table", {})
    cold = table.get("cold", {}).get("cold")
    cases = [c for c in ("warm", "changed") if table.get(c)]
    if not cases:
        return out

    def save(fig: Any, name: str) -> None:
        path = prefix.with_name(f"{prefix.name}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 4.8), squeeze=False)
    colours = {"restore": "#9467bd", "cache import in the build": "#17becf", "build": "#1f77b4",
               "export": "#ff7f0e"}
    for ax, case in zip(axes[0], cases, strict=True):
        rows = [("cold", cold)] if cold else []
        rows += [(s, table[case][s]) for s in ORDER if s in table[case]]
        names = [s for s, _ in rows]
        in_build = [max(0.0, (r.get("import_s") or 0.0) - r["restore_s"]) for _, r in rows]
        parts = {"restore": [r["restore_s"] for _, r in rows], "cache import in the build": in_build,
                 "build": [max(0.0, r["build_s"] - b) for (_, r), b in zip(rows, in_build, strict=True)],
                 "export": [r["export_s"] for _, r in rows]}
        bottom = [0.0] * len(rows)
        for part, vals in parts.items():
            ax.bar(names, vals, bottom=bottom, color=colours[part], label=part)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for i, (_, r) in enumerate(rows):
            ax.text(i, bottom[i], f"{r['total_s']:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(bottom, default=1.0) * 1.35)
        ax.set_title(f"{case} build ({result['engine']}; medians of each part, label: median total)", fontsize=10)
        ax.set_ylabel("seconds (lower is better)")
        ax.tick_params(axis="x", labelrotation=35, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_ha("right")
        ax.legend(fontsize=8, ncol=2, loc="upper right")
    save(fig, "times")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [s for s in ORDER if any(s in table[c] for c in cases)]
    width = 0.38
    for k, case in enumerate(cases):
        ax.bar([i + (k - 0.5) * width for i in range(len(names))],
               [table[case].get(s, {}).get("bytes_moved", 0) / MB for s in names], width, label=case)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("MB moved per job (network + archive)")
    ax.legend()
    save(fig, "bytes")
    return out


def write(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.json, ``name``.md and the charts into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = charts(result, out_dir / name)
    result["charts"] = [p.name for p in pngs]
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown(result))
    return [json_path, md_path, *pngs]
