"""The status page at ``/_cachesvc/``: usage against budget, hit ratio and bytes served over the last hour, top
repositories and the last evictions, for a person. Charts are SVG drawn here; the page needs no JavaScript."""

from __future__ import annotations

import html
import time
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachesvc import __version__
from cachesvc.api.admin import require_local, usage
from cachesvc.api.context import Registry
from cachesvc.traffic import Counts
from cachesvc.units import format_duration, format_size

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.1em;margin-top:1.6em}
.muted{color:#777} table{border-collapse:collapse;min-width:60%} td,th{padding:.25em .8em;text-align:left;
border-bottom:1px solid #eee} th{font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.8em 1.2em;
min-width:180px} .card b{font-size:1.5em;display:block}
"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def usage_bar(used: int, budget: int, width: int = 520) -> str:
    """A horizontal bar: used bytes against the budget (or against used when there is none)."""
    total = budget or max(used, 1)
    frac = min(1.0, used / total)
    color = "#2e7d32" if frac < 0.8 else "#f9a825" if frac < 0.95 else "#c62828"
    label = f"{format_size(used)} of {format_size(budget)}" if budget else f"{format_size(used)} (no budget)"
    return (f'<svg id="usage-bar" width="{width}" height="34" role="img" aria-label="{_esc(label)}">'
            f'<rect x="0" y="4" width="{width}" height="20" fill="#eee" rx="3"/>'
            f'<rect x="0" y="4" width="{frac * width:.1f}" height="20" fill="{color}" rx="3"/>'
            f'<text x="6" y="19" font-size="12" fill="#000">{_esc(label)}</text></svg>')


def line_chart(points: list[float | None], *, ident: str, label: str, ymax: float, fmt: Any,
               width: int = 520, height: int = 140) -> str:
    """Values per minute (None: no data that minute) as a polyline with a light grid."""
    pad = 30
    n = max(1, len(points) - 1)
    segments: list[list[str]] = [[]]
    for i, v in enumerate(points):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        x = pad + i * (width - pad - 5) / n
        y = height - 20 - (min(v, ymax) / ymax if ymax else 0) * (height - 30)
        segments[-1].append(f"{x:.1f},{y:.1f}")
    lines = "".join(f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{" ".join(s)}"/>'
                    for s in segments if s)
    dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2" fill="#1565c0"/>'
                   for s in segments if len(s) == 1 for p in s)
    grid = "".join(f'<line x1="{pad}" x2="{width - 5}" y1="{y}" y2="{y}" stroke="#eee"/>'
                   for y in (10, (height - 20 + 10) / 2, height - 20))
    return (f'<svg id="{ident}" width="{width}" height="{height}" role="img" aria-label="{_esc(label)}">{grid}'
            f'<text x="0" y="14" font-size="10" fill="#777">{_esc(fmt(ymax))}</text>'
            f'<text x="0" y="{height - 20}" font-size="10" fill="#777">0</text>'
            f'<text x="{pad}" y="{height - 4}" font-size="10" fill="#777">60 min ago</text>'
            f'<text x="{width - 30}" y="{height - 4}" font-size="10" fill="#777">now</text>{lines}{dots}</svg>')


def render(reg: Registry) -> str:
    u = usage(reg)
    total, series = reg.traffic.last_hour()
    ratios = [c.ratio() for _, c in series]
    served = [float(c.bytes_served) for _, c in series]
    top = reg.traffic.top(10)
    recent = list(reversed(reg.store.evictor.recent))[:15]
    ratio = total.ratio()
    cards = [
        ("used", format_size(u["disk_bytes"]), f"of {format_size(u['budget_bytes'])} budget"
         if u["budget_bytes"] else "no budget set"),
        ("hit ratio, last hour", "-" if ratio is None else f"{100 * ratio:.1f}%",
         f"{total.hits} hits, {total.misses} misses"),
        ("served, last hour", format_size(total.bytes_served), f"{format_size(reg.traffic.total.bytes_served)} "
         "since start"),
        ("free disk", format_size(u["filesystem_free_bytes"]), f"keeping {format_size(u['min_free_bytes'])}"),
        ("contents", f"{u['roots']} roots", f"{u['blobs']} blobs, {u['manifests']} manifests"),
    ]
    card_html = "".join(f'<div class="card" id="card-{i}"><span class="muted">{_esc(t)}</span><b>{_esc(v)}</b>'
                        f'<span class="muted">{_esc(s)}</span></div>' for i, (t, v, s) in enumerate(cards))
    top_rows = "".join(_repo_row(r, c) for r, c in top) or '<tr><td colspan="5" class="muted">no traffic yet</td></tr>'
    ev_rows = "".join(
        f"<tr><td>{_esc(e.repo)}:{_esc(','.join(e.tags) or e.digest[:19])}</td><td>{_esc(e.reason)}</td>"
        f'<td class="num">{_esc(format_size(e.bytes))}</td><td>{_esc(format_duration(time.time() - e.when))} ago'
        f"</td></tr>" for e in recent) or '<tr><td colspan="4" class="muted">no evictions yet</td></tr>'
    repo_rows = "".join(f'<tr><td>{_esc(r["name"])}</td><td class="num">{_esc(format_size(r["bytes"]))}</td></tr>'
                        for r in u["repositories"][:10])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>cachesvc status</title><style>{CSS}</style></head><body>
<h1>cachesvc</h1><div class="muted">version {__version__} · serving {_esc(reg.settings.listen)} ·
data in {_esc(reg.store.layout.root)}</div>
<h2>Usage</h2>{usage_bar(u["disk_bytes"], u["budget_bytes"])}
<div class="cards">{card_html}</div>
<h2>Hit ratio per minute, last hour</h2>
{line_chart(ratios, ident="hit-ratio-chart", label="hit ratio per minute", ymax=1.0, fmt=lambda v: f"{v:.0%}")}
<h2>Bytes served per minute, last hour</h2>
{line_chart(served, ident="served-chart", label="bytes served per minute", ymax=max(served) or 1.0,
            fmt=format_size)}
<h2>Top repositories by traffic</h2>
<table id="top-repositories"><tr><th>repository</th><th class="num">hits</th><th class="num">misses</th>
<th class="num">hit ratio</th><th class="num">served</th></tr>{top_rows}</table>
<h2>Largest repositories</h2><table id="largest-repositories"><tr><th>repository</th><th class="num">size</th></tr>
{repo_rows}</table>
<h2>Last evictions</h2>
<table id="evictions"><tr><th>root</th><th>reason</th><th class="num">freed</th><th>when</th></tr>{ev_rows}</table>
</body></html>"""


def _repo_row(repo: str, c: Counts) -> str:
    ratio = c.ratio()
    return (f'<tr><td>{_esc(repo)}</td><td class="num">{c.hits}</td><td class="num">{c.misses}</td>'
            f'<td class="num">{"-" if ratio is None else f"{100 * ratio:.1f}%"}</td>'
            f'<td class="num">{_esc(format_size(c.bytes_served))}</td></tr>')


async def status_page(reg: Registry, request: BaseRequest, p: dict[str, str]) -> web.StreamResponse:
    require_local(request)
    return web.Response(text=render(reg), content_type="text/html")
