"""Operator helpers for the credentials file: ``cachesvc hash-password`` and ``cachesvc gen-token``.

Both print what goes into the ``--auth-file``; neither needs a running server. The password is read from stdin
(never from the command line, where ``ps`` would show it); the generated token is shown once and only its
SHA-256 goes into the file. ``auth_header_from_env`` gives the operator commands (``cachesvc usage`` …) the
credentials in ``CACHESVC_CREDS`` (``user:password`` or ``tokenname:token``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys

from cachesvc.auth.credentials import hash_password, token_hash
from cachesvc.auth.headers import encode_basic

CREDS_ENV = "CACHESVC_CREDS"


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hp = sub.add_parser("hash-password", help="bcrypt-hash a password read from stdin, for the --auth-file")
    hp.add_argument("--rounds", type=int, default=12, help="bcrypt cost factor (default 12)")
    gt = sub.add_parser("gen-token", help="make a random static token; prints it, and its [[token]] entry to stderr")
    gt.add_argument("name", help="the token's name in the --auth-file")
    gt.add_argument("--actions", default="pull", help="comma-separated actions for the entry (default: pull)")
    gt.add_argument("--prefix", default="", help="repository prefix for the entry (default: every repository)")


def run(args: argparse.Namespace) -> int:
    if args.command == "hash-password":
        return _hash_password(args.rounds)
    return _gen_token(args.name, args.actions, args.prefix)


def _hash_password(rounds: int) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("cachesvc: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("cachesvc: empty password", file=sys.stderr)
        return 1
    try:
        print(hash_password(password, rounds))
    except ValueError as e:
        print(f"cachesvc: {e}", file=sys.stderr)
        return 1
    return 0


def _gen_token(name: str, actions: str, prefix: str) -> int:
    token = "cst_" + secrets.token_urlsafe(32)
    acts = ", ".join(f'"{a.strip()}"' for a in actions.split(",") if a.strip())
    where = f'prefix = "{prefix}", ' if prefix else ""
    print(token)
    print(f'[[token]]\nname = "{name}"\ntoken_sha256 = "{token_hash(token)}"\n'
          f"permissions = [{{ {where}actions = [{acts}] }}]", file=sys.stderr)
    return 0


def auth_header_from_env() -> dict[str, str]:
    """``Authorization`` for the operator commands, from ``CACHESVC_CREDS=user:password``."""
    creds = os.environ.get(CREDS_ENV, "")
    user, sep, password = creds.partition(":")
    return {"Authorization": encode_basic(user, password)} if sep else {}
