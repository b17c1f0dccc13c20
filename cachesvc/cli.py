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
    return parser


def _run_serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(flags)
    except SettingsError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level)
    from cachesvc.app import serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings))
    except RuntimeError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _run_serve(args)
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
