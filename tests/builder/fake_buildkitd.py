"""A stand-in for buildkitd, for machines without BuildKit (Debian packages none): it reads the config launch.sh
wrote with a real TOML parser, records what it was given next to that config (`fake-buildkitd.json`), listens
on every unix address of `[grpc] address` as buildkitd does, and exits 0 on SIGTERM/SIGINT.

The tests copy this file behind a shebang naming their interpreter (see `fake_buildkitd()` in conftest.py).
"""

import argparse
import json
import signal
import socket
import sys
import tomllib
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="buildkitd")
    parser.add_argument("--config", required=True)
    args, rest = parser.parse_known_args()
    config_path = Path(args.config)
    config = tomllib.loads(config_path.read_text())
    record = {"argv": sys.argv[1:], "extra": rest, "config": config}
    config_path.with_name("fake-buildkitd.json").write_text(json.dumps(record, indent=1))

    listeners = []
    for address in config["grpc"]["address"]:
        if address.startswith("unix://"):
            path = Path(address.removeprefix("unix://"))
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            sock.listen()
            listeners.append((sock, path))

    def stop(signum: int, frame: object) -> None:
        for sock, path in listeners:
            sock.close()
            path.unlink(missing_ok=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
