"""A SIGKILL anywhere in compression at rest leaves every blob whole: exactly one form on disk, the one its
record describes, the counters right, and the original bytes served after the restart."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.compression.conftest import ThreadedServer
from tests.compression.layers import config_json, text_tar

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs a store in a child process: stores the blobs given as files, then compresses them, and is SIGKILLed by
# itself at the named step of the swap (or by the test at a random moment).
CHILD = textwrap.dedent("""
    import asyncio, hashlib, os, signal, sys
    from dataclasses import replace
    from pathlib import Path
    from cachesvc.api.names import parse_digest
    from cachesvc.settings import Settings
    from cachesvc.store.compression import Compressor
    from cachesvc.store.store import Store

    root, step, *paths = sys.argv[1:]

    def checkpoint(self, name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    Compressor._checkpoint = checkpoint

    async def main():
        store = Store(replace(Settings(), root=Path(root)))
        await store.start()
        for p in paths:
            data = Path(p).read_bytes()

            async def chunks(data=data):
                yield data

            digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
            await store.write_blob("cache/app", digest, chunks(), len(data))
        print("stored", flush=True)
        await store.compressor.drain()
        print("drained", flush=True)
        await store.close()

    asyncio.run(main())
""")


def run_child(root: Path, step: str, blobs: list[Path], kill_after: float | None = None) -> int:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), step, *map(str, blobs)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    if kill_after is not None:
        line = proc.stdout.readline()
        assert line == b"stored\n", proc.stderr.read() if proc.stderr else line
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    return proc.returncode


def check_whole(s: ThreadedServer, contents: list[bytes]) -> None:
    """Every blob: one form, described by its record, serving the original bytes; counters agree with disk."""
    index, files = s.store.index, s.store.files
    total = 0
    compressed = 0
    for data in contents:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        rec = s.sync(lambda d=digest: index.blob(d))
        assert rec is not None
        plain, packed = s.forms(digest)
        assert plain != packed, (digest, plain, packed)
        on_disk = os.path.getsize(files.zpath(digest) if packed else files.path(digest))
        assert rec.stored_size == on_disk and (rec.stored_size != rec.size) == packed
        total += on_disk
        compressed += packed
        status, _, body = s.get_blob("cache/app", digest)
        assert status == 200 and body == data
    c = s.sync(lambda: dict(index.counters))
    assert c["disk_bytes"] == total and c["compressed_blobs"] == compressed
    assert c["stored_bytes"] == sum(len(x) for x in contents)
    assert s.sync(index.pending_swaps) == []
    assert [p.name for p in (s.root / "uploads").iterdir()] == []


@pytest.mark.parametrize("step", ["intent", "renamed", "indexed", "trashed"])
def test_sigkill_at_each_step_of_the_swap(tmp_path: Path, step: str) -> None:
    data = text_tar(40, 600_000)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    root = tmp_path / "root"
    assert run_child(root, step, [blob]) == -signal.SIGKILL
    s = ThreadedServer(root)
    try:
        check_whole(s, [data])
        s.drain()  # whatever the crash undid is done again
        check_whole(s, [data])
        assert s.forms("sha256:" + hashlib.sha256(data).hexdigest()) == (False, True)
    finally:
        s.stop()


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    contents = [text_tar(50 + i, 300_000 + 150_000 * i) for i in range(4)] + [config_json(5)]
    paths = []
    for i, data in enumerate(contents):
        paths.append(tmp_path / f"blob{i}")
        paths[-1].write_bytes(data)
    rnd = random.Random(7)
    for attempt in range(3):
        root = tmp_path / f"root{attempt}"
        run_child(root, "-", paths, kill_after=rnd.uniform(0.0, 0.15))
        s = ThreadedServer(root)
        try:
            check_whole(s, contents)
            s.drain()
            check_whole(s, contents)
        finally:
            s.stop()
