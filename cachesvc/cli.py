"""The ``cachesvc`` command: ``serve`` runs the registry; the other commands talk to a running one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from cachesvc import __version__, logs
from cachesvc.settings import SettingsError, add_flags, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachesvc", description="Persistent layer cache for container builders, "
                                     "spoken to as an OCI Distribution registry.")
    parser.add_argument("--version", action="version", version=f"cachesvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the registry server")
    add_flags(serve)
    from cachesvc.auth.commands import add_commands

    add_commands(sub)

    def operator(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--url", help="server to talk to (default: http:// + the configured listen address)")
        p.add_argument("--config", metavar="FILE.toml", help="settings file to find the listen address in")
        return p

    operator("usage", help="used/budget/free and the largest repositories")
    operator("stats", help="usage, hit ratio, bytes served, top repositories, recent evictions")
    evict = operator("evict", help="run an eviction pass now (or show what one would do)")
    evict.add_argument("--dry-run", action="store_true", help="only show what would be evicted, and why")
    ls = operator("ls", help="tags with size, last use and whether they are pinned")
    ls.add_argument("repo", nargs="?", help="only this repository")
    for name, what in (("pin", "never evict"), ("unpin", "stop pinning")):
        p = operator(name, help=f"{what} REPO:TAG (globs allowed)")
        p.add_argument("ref", metavar="REPO:TAG")
    rm = operator("rm", help="remove a tag's cache (REPO:TAG) or a whole repository (REPO)")
    rm.add_argument("ref", metavar="REPO[:TAG]")
    fsck = operator("fsck", help="re-hash every blob and check index and files agree")
    fsck.add_argument("--repair", action="store_true",
                      help="quarantine corrupt blobs, drop manifests that lose blobs, remove stray files")
    from cachesvc.remote.commands import add_commands as add_remote_commands

    add_remote_commands(sub)  # shared tier: prefetch, remote-status (operator commands), remote-gc
    return parser


def _run_serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(flags)
    except SettingsError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 2
    access_log = logs.setup(settings.log_format, settings.log_level)
    from cachesvc.app import serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings, access_log=access_log))
    except RuntimeError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 1
    return 0


def _run_operator(args: argparse.Namespace) -> int:
    from cachesvc.operator import COMMANDS, AdminClient, OperatorError

    url = args.url
    if not url:
        try:
            settings = load_settings({"config": args.config})
        except SettingsError as e:
            print(f"cachesvc: {e}", file=sys.stderr)
            return 2
        host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        scheme = "https" if settings.tls_cert else "http"
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{settings.port}"
    from cachesvc.auth.commands import auth_header_from_env

    try:
        print(COMMANDS[args.command](AdminClient(url, headers=auth_header_from_env()), args))
    except OperatorError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _run_serve(args)
    if args.command in ("hash-password", "gen-token"):
        from cachesvc.auth.commands import run

        return run(args)
    if args.command == "remote-gc":
        from cachesvc.remote.commands import run_gc

        return run_gc(args)
    return _run_operator(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
