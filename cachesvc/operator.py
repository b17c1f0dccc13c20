"""The operator commands (``cachesvc usage|stats|ls|evict|pin|unpin|rm|fsck``): clients of the admin API.

They find the server from ``--url``, else from the same settings the server reads (``--config``,
``CACHESVC_LISTEN``, ``CACHESVC_CONFIG``), so an operator never has to repeat the address.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from cachesvc.units import format_duration, format_size


class OperatorError(Exception):
    """A one-line message for the operator; the command exits non-zero."""


class AdminClient:
    def __init__(self, url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}  # Authorization, when the server has --auth-file (CACHESVC_CREDS)

    def _open(self, method: str, action: str, body: Any = None, query: str = "") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_cachesvc/api/{action}{query}", data=data, method=method,
                                     headers={**self.headers, **({"Content-Type": "application/json"} if data else {})})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["errors"][0]
                detail = err.get("detail")
                reason = detail.get("reason") if isinstance(detail, dict) else None
                msg = f"{err['code']}: {reason or err['message']}"
            except (ValueError, KeyError, IndexError, TypeError):
                msg = f"HTTP {e.code}"
            raise OperatorError(f"server at {self.url} refused: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise OperatorError(f"no cachesvc answering at {self.url} ({reason})") from None

    def call(self, method: str, action: str, body: Any = None, query: str = "") -> Any:
        with self._open(method, action, body, query) as resp:
            return json.loads(resp.read())

    def stream(self, method: str, action: str, query: str = "") -> Iterator[dict[str, Any]]:
        """An NDJSON response, line by line as the server produces it."""
        with self._open(method, action, None, query) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ago(ts: float) -> str:
    return format_duration(time.time() - ts) + " ago" if ts else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _usage_lines(u: dict[str, Any]) -> list[str]:
    budget = u["budget_bytes"]
    used = u["disk_bytes"]
    lines = [
        f"used       {format_size(used)}" + (f" of {format_size(budget)} budget ({100 * used / budget:.1f}%)"
                                             if budget else " (no budget set)"),
        f"stored     {format_size(u['stored_bytes'])} logical, {format_size(u['saved_bytes'])} saved by "
        f"compression" + _compression_note(u.get("compression")),
        f"free       {format_size(u['filesystem_free_bytes'])} on the filesystem"
        + (f" (keeping at least {format_size(u['min_free_bytes'])})" if u["min_free_bytes"] else ""),
        f"contents   {u['blobs']} blobs, {u['manifests']} manifests, {u['roots']} roots, "
        f"{u['repository_count']} repositories; index {format_size(u['index_bytes'])}",
    ]
    return lines


def cmd_usage(client: AdminClient, args: Any) -> str:
    u = client.call("GET", "usage")
    out = _usage_lines(u)
    if u["repositories"]:
        out += ["", "largest repositories:",
                table([(r["name"], format_size(r["bytes"]), format_size(r.get("disk_bytes", r["bytes"])),
                        format_size(r.get("saved_bytes", 0))) for r in u["repositories"]],
                      ["repository", "size", "on disk", "saved"])]
    return "\n".join(out)


def _compression_note(c: dict[str, Any] | None) -> str:
    """`` (at rest: 12 blobs, 3 queued)`` after the saved bytes, or that it is off."""
    if not c:
        return ""
    if c["mode"] == "off":
        return " (compression at rest off)"
    return f" (at rest: {c['compressed_blobs']} blobs" + (f", {c['queued']} queued" if c["queued"] else "") + ")"


def cmd_stats(client: AdminClient, args: Any) -> str:
    s = client.call("GET", "stats")
    hour = s["last_hour"]
    out = _usage_lines(s["usage"]) + [
        f"hit ratio  {_pct(s['hit_ratio'])} since start ({s['hits']} hits, {s['misses']} misses); "
        f"{_pct(hour['hit_ratio'])} over the last hour",
        f"served     {format_size(s['bytes_served'])} since start, {format_size(hour['bytes_served'])} in the "
        f"last hour",
    ]
    if s["top_repositories"]:
        out += ["", "top repositories:", table([(r["name"], r["hits"], r["misses"], _pct(r["hit_ratio"]),
                                                 format_size(r["bytes_served"])) for r in s["top_repositories"]],
                                               ["repository", "hits", "misses", "hit ratio", "served"])]
    if s["recent_evictions"]:
        out += ["", "recent evictions:", _evictions_table(s["recent_evictions"], when=True)]
    return "\n".join(out)


def _evictions_table(rows: list[dict[str, Any]], when: bool = False) -> str:
    body = []
    for e in rows:
        ref = f"{e['repository']}:{','.join(e['tags'])}" if e["tags"] else f"{e['repository']}@{e['digest'][:19]}"
        row = [ref, e["reason"], format_size(e["bytes"]), e["blobs"], _ago(e["last_used"])]
        if when:
            row.append(_ago(e["when"]))
        body.append(row)
    headers = ["root", "reason", "frees", "blobs", "last used"] + (["evicted"] if when else [])
    return table(body, headers)


def cmd_evict(client: AdminClient, args: Any) -> str:
    if args.dry_run:
        plan = client.call("GET", "evict", query="?dry_run=1")
        head = (f"used {format_size(plan['used'])}, budget "
                f"{format_size(plan['budget']) if plan['budget'] else 'none'}, free {format_size(plan['free'])}")
        if not plan["evictions"]:
            return head + "\nnothing would be evicted"
        total = sum(e["bytes"] for e in plan["evictions"])
        return "\n".join([head, f"would evict {len(plan['evictions'])} roots, freeing {format_size(total)}:",
                          _evictions_table(plan["evictions"])])
    done = client.call("POST", "evict")["evictions"]
    if not done:
        return "nothing to evict"
    return f"evicted {len(done)} roots:\n" + _evictions_table(done)


def cmd_ls(client: AdminClient, args: Any) -> str:
    query = f"?repo={urllib.request.quote(args.repo)}" if args.repo else ""
    rows = client.call("GET", "ls", query=query)["tags"]
    if not rows:
        return "no tags"
    return table([(r["repository"], r["tag"], format_size(r["bytes"]), _ago(r["last_used"]),
                   "yes" if r["pinned"] else "", r["digest"][:19]) for r in rows],
                 ["repository", "tag", "size", "last used", "pinned", "digest"])


def cmd_pin(client: AdminClient, args: Any) -> str:
    action = "pin" if args.command == "pin" else "unpin"
    r = client.call("POST", action, {"ref": args.ref})
    state = "pinned" if r["pinned"] else "unpinned"
    return f"{args.ref}: {state}" + ("" if r["changed"] else " (already)")


def cmd_rm(client: AdminClient, args: Any) -> str:
    done = client.call("POST", "rm", {"ref": args.ref})["evictions"]
    total = sum(e["bytes"] for e in done)
    return f"removed {len(done)} roots, freeing {format_size(total)}"


def cmd_fsck(client: AdminClient, args: Any) -> str:
    query = "?repair=1" if args.repair else ""
    summary: dict[str, Any] = {}
    tty = sys.stderr.isatty()
    for event in client.stream("POST", "fsck", query):
        if event.get("type") == "progress":
            done, total = event["done"], max(1, event["total"])
            bar = "#" * int(30 * done / total)
            line = f"\rfsck [{bar:<30}] {done}/{event['total']} blobs, {format_size(event['bytes'])}"
            print(line, end="" if tty else "\n", file=sys.stderr, flush=True)
        elif event.get("type") == "problem":
            print(("\n" if tty else "") + f"  {event['kind']}: {event['what']}", file=sys.stderr, flush=True)
        elif event.get("type") == "summary":
            summary = event
    if tty:
        print(file=sys.stderr)
    lines = [f"checked {summary.get('blobs', 0)} blobs ({format_size(summary.get('bytes', 0))}) and "
             f"{summary.get('manifests', 0)} manifests in {summary.get('seconds', 0):.1f}s",
             f"corrupt blobs: {summary.get('corrupt', 0)}, missing files: {summary.get('missing', 0)}, "
             f"unindexed files: {summary.get('stray', 0)}"]
    if args.repair:
        lines.append(f"repaired: quarantined {summary.get('quarantined', 0)} blobs, dropped "
                     f"{summary.get('dropped_manifests', 0)} manifests, removed {summary.get('removed_stray', 0)} "
                     f"stray files")
    elif summary.get("problems"):
        lines.append("run with --repair to quarantine corrupt blobs and drop the manifests that need them")
    return "\n".join(lines)


COMMANDS = {"usage": cmd_usage, "stats": cmd_stats, "evict": cmd_evict, "ls": cmd_ls, "pin": cmd_pin,
            "unpin": cmd_pin, "rm": cmd_rm, "fsck": cmd_fsck}
