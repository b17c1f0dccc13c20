"""The shared tier's commands: ``cachesvc prefetch REPO:TAG…`` and ``cachesvc remote-status`` (clients of a
running server's admin API, found like the other operator commands) and ``cachesvc remote-gc`` (talks to the
object store directly, with the same ``--remote*`` settings the server reads, so it runs from any one node)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import fields
from typing import Any

from cachesvc.settings import Settings, SettingsError, env_name, flag_name, load_settings
from cachesvc.units import format_duration, format_size, parse_duration

REMOTE_KNOBS = ("remote", "remote_endpoint", "remote_region", "remote_mode", "remote_timeout")


def settle() -> None:
    """Let obstore's I/O threads finish waking the (closed) event loop before the interpreter exits: a thread that
    still reaches for the GIL during finalization aborts the process (SIGABRT) after a successful run."""
    time.sleep(0.05)


def add_commands(sub: Any) -> None:
    """Add ``prefetch``, ``remote-status`` and ``remote-gc`` to the CLI and their operator handlers."""
    from cachesvc import operator

    for name, help_text in (("prefetch", "pull caches (REPO:TAG, or REPO@DIGEST) from the shared tier into the "
                                         "local tier of a running server, with progress"),
                            ("remote-status", "the shared tier as the server sees it: write-behind queue, "
                                              "fetches, prefetches")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", help="server to talk to (default: http:// + the configured listen address)")
        p.add_argument("--config", metavar="FILE.toml", help="settings file to find the listen address in")
        if name == "prefetch":
            p.add_argument("refs", nargs="+", metavar="REPO:TAG")
    operator.COMMANDS.setdefault("prefetch", cmd_prefetch)
    operator.COMMANDS.setdefault("remote-status", cmd_remote_status)

    gc = sub.add_parser("remote-gc", help="delete shared-tier caches unused for --max-age, then blobs nothing "
                                          "left references (run from any one node)")
    gc.add_argument("--max-age", required=True, metavar="DURATION", help="remove roots unused this long (e.g. 14d)")
    gc.add_argument("--grace", default="1h", metavar="DURATION",
                    help="never delete objects younger than this (uploads in progress; default 1h)")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.add_argument("--config", metavar="FILE.toml", default=None, help="settings file with the --remote settings")
    by_name = {f.name: f for f in fields(Settings)}
    for name in REMOTE_KNOBS:
        meta = by_name[name].metadata
        gc.add_argument(flag_name(name), dest=name, default=None, metavar=meta["metavar"],
                        help=f"{meta['help']} (env {env_name(name)})")


def _progress_line(jobs: list[dict[str, Any]]) -> str:
    total = sum(j["bytes_total"] for j in jobs)
    done = sum(j["bytes_done"] for j in jobs)
    blobs = sum(j["blobs_done"] for j in jobs), sum(j["blobs_total"] for j in jobs)
    over = sum(j["state"] in ("done", "missing", "failed") for j in jobs)
    return (f"prefetch {over}/{len(jobs)} caches, {blobs[0]}/{blobs[1]} blobs, "
            f"{format_size(done)}/{format_size(total)}")


def cmd_prefetch(client: Any, args: Any) -> str:
    from cachesvc.operator import OperatorError, table

    tty = sys.stderr.isatty()
    last: list[dict[str, Any]] = []
    shown = 0.0
    with client._open("POST", "prefetch", {"refs": list(args.refs)}) as resp:
        for line in resp:
            if not line.strip():
                continue
            event = json.loads(line)
            last = event["jobs"]
            now = time.monotonic()
            if event["type"] == "progress" and (tty or now - shown >= 2.0):
                print(("\r" if tty else "") + _progress_line(last), end="" if tty else "\n", file=sys.stderr,
                      flush=True)
                shown = now
    if tty:
        print(file=sys.stderr)
    if not last:
        raise OperatorError("the server sent no prefetch progress")
    rows = [(j["ref"], j["state"], f"{j['blobs_done']}/{j['blobs_total']}", format_size(j["bytes_done"]),
             f"{j['seconds']:.1f}s", j["error"]) for j in last]
    out = table(rows, ["cache", "state", "blobs", "bytes", "time", "error"])
    if any(j["state"] == "failed" for j in last):
        raise OperatorError("some prefetches failed:\n" + out)
    return out


def cmd_remote_status(client: Any, args: Any) -> str:
    s = client.call("GET", "remote")
    q = s["queue"]
    lines = [f"shared tier  {s['url']} ({s['mode']}, endpoint {s['endpoint']})"
             + ("" if s["reachable"] else " - unreachable at the last lookup"),
             f"write-behind {q['depth']} queued ({q['active']} uploading), oldest waiting "
             f"{format_duration(q['lag_seconds'])}; {q['uploaded']} uploaded, {q['dropped']} dropped"
             + (f"; paused {q['paused_for']}s after: {q['last_error']}" if q["paused_for"] else "")]
    if s["fetches"]:
        lines.append(f"fetching     {len(s['fetches'])} blob(s): "
                     + ", ".join(f"{f['digest'][:19]} {format_size(f['written'])}" for f in s["fetches"][:5]))
    for j in s["prefetch"]:
        lines.append(f"prefetch     {j['ref']}: {j['state']} {j['blobs_done']}/{j['blobs_total']} blobs, "
                     f"{format_size(j['bytes_done'])}/{format_size(j['bytes_total'])}"
                     + (f" ({j['error']})" if j["error"] else ""))
    return "\n".join(lines)


def run_gc(args: argparse.Namespace) -> int:
    from cachesvc.remote.gc import remote_gc
    from cachesvc.remote.objects import Remote, RemoteUnavailable

    flags = {k: getattr(args, k) for k in REMOTE_KNOBS}
    flags["config"] = args.config
    try:
        settings = load_settings(flags)
        max_age = parse_duration(args.max_age)
        grace = parse_duration(args.grace)
    except (SettingsError, ValueError) as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 2
    if not settings.remote:
        print("cachesvc: remote-gc needs --remote s3://BUCKET[/PREFIX] (or CACHESVC_REMOTE)", file=sys.stderr)
        return 2
    if max_age <= 0:
        print("cachesvc: --max-age must be positive", file=sys.stderr)
        return 2
    if settings.remote_mode == "read-only" and not args.dry_run:
        print("cachesvc: --remote-mode read-only: remote-gc deletes; run it where the shared tier is "
              "read-write (or with --dry-run)", file=sys.stderr)
        return 2
    remote = Remote(settings.remote, endpoint=settings.remote_endpoint, region=settings.remote_region,
                    timeout=settings.remote_timeout)
    try:
        report = asyncio.run(remote_gc(remote, max_age, dry_run=args.dry_run, grace=grace,
                                       progress=lambda m: print(m, file=sys.stderr, flush=True)))
    except RemoteUnavailable as e:
        print(f"cachesvc: shared tier unreachable: {e}", file=sys.stderr)
        return 1
    finally:
        settle()
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"shared tier {remote.url}: {report.tags} tags, {report.manifests} manifests, {report.blobs} blobs; "
             f"{report.live_roots} live roots",
             f"{verb} {len(report.dead_roots)} roots unused for {format_duration(max_age)}: "
             f"{report.deleted_tags} tags, {report.deleted_manifests} manifests, {report.deleted_markers} use "
             f"markers, {report.deleted_blobs} blobs ({format_size(report.deleted_bytes)})",
             f"kept {report.kept_blobs} blobs ({format_size(report.kept_bytes)}) that live roots need; spared "
             f"{report.spared_young} objects younger than {format_duration(grace)}"
             + (f"; {report.unreadable} unreadable manifests kept" if report.unreadable else "")]
    for root in report.dead_roots[:50]:
        ref = f"{root['repository']}:{','.join(root['tags'])}" if root["tags"] else \
            f"{root['repository']}@{root['digest'][:19]}"
        lines.append(f"  {ref}  last used {format_duration(time.time() - root['last_used'])} ago")
    if len(report.dead_roots) > 50:
        lines.append(f"  … and {len(report.dead_roots) - 50} more")
    print("\n".join(lines))
    return 0
