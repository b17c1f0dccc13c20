"""The reclaimer removes dropped blobs' files in batches (one ``rm`` each), and one by one without ``rm``.

Real files in a real store layout; the loop is real too, since forgetting the intents is reported back to it.
A file that cannot be removed keeps its intent (the next start tries again) and never holds up the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path

import pytest

from cachesvc.priority import BACKGROUND_NICE
from cachesvc.store import reclaim
from cachesvc.store.blobs import BlobFiles
from cachesvc.store.layout import Layout
from cachesvc.store.reclaim import Reclaimer


def blob_files(tmp_path: Path, n: int) -> tuple[BlobFiles, list[str]]:
    layout = Layout(tmp_path / "store")
    layout.create()
    files = BlobFiles(layout)
    digests = []
    for i in range(n):
        digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
        os.makedirs(os.path.dirname(files.path(digest)), exist_ok=True)
        Path(files.path(digest)).write_bytes(b"x" * i)
        if i % 3 == 0:  # some have a compressed form too
            Path(files.zpath(digest)).write_bytes(b"z")
        digests.append(digest)
    return files, digests


@pytest.mark.parametrize("rm", ["rm", "none"])
async def test_dropped_files_are_removed_and_their_intents_forgotten(tmp_path: Path, rm: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if rm == "none":
        monkeypatch.setattr(reclaim, "RM", None)
    else:
        assert reclaim.RM is not None, "rm (coreutils) is expected on every machine this runs on"
    files, digests = blob_files(tmp_path, reclaim.BATCH * 2 + 7)  # more than one batch
    forgotten: list[str] = []
    r = Reclaimer(files, forgotten.extend)
    r.start(asyncio.get_running_loop())
    r.discard(digests)
    assert await r.drained(30)
    await r.stop()
    assert sorted(forgotten) == sorted(digests)
    assert not any(os.path.exists(files.path(d)) or os.path.exists(files.zpath(d)) for d in digests)


async def test_a_file_that_cannot_be_removed_keeps_its_intent(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    files, digests = blob_files(tmp_path, 5)
    stuck = digests[2]
    os.unlink(files.path(stuck))
    os.makedirs(os.path.join(files.path(stuck), "in-the-way"))  # a directory where the file was: rm -f fails
    forgotten: list[str] = []
    r = Reclaimer(files, forgotten.extend)
    r.start(asyncio.get_running_loop())
    with caplog.at_level(logging.ERROR, "cachesvc.reclaim"):
        r.discard(digests)
        assert await r.drained(30)
        await r.stop()
    assert sorted(forgotten) == sorted(d for d in digests if d != stuck)
    assert f"could not remove the file of dropped blob {stuck}" in caplog.text
    assert not any(os.path.exists(files.path(d)) for d in digests if d != stuck)


async def test_freed_removes_queued_files_while_the_thread_is_held_up(tmp_path: Path) -> None:
    """The thread runs on idle CPU only, so a busy machine can hold it up for long; a request waiting for
    space calls freed(), which removes the queued files itself. The thread, once it runs, still reports every
    intent exactly once, and a file it cannot remove still keeps its intent."""
    files, digests = blob_files(tmp_path, reclaim.BATCH + 9)
    stuck = digests[4]
    os.unlink(files.path(stuck))
    os.makedirs(os.path.join(files.path(stuck), "in-the-way"))
    forgotten: list[str] = []
    r = Reclaimer(files, forgotten.extend)
    held, release = threading.Event(), threading.Event()
    real = r._remove_batch

    def starved(batch: list[str]) -> list[str]:
        held.set()
        release.wait(30)
        return real(batch)

    r._remove_batch = starved  # type: ignore[method-assign]
    r.start(asyncio.get_running_loop())
    try:
        r.discard(digests)
        assert await asyncio.to_thread(held.wait, 10)  # the thread holds its first batch and goes no further
        await asyncio.wait_for(r.freed(), 30)
        assert not any(os.path.exists(files.path(d)) or os.path.exists(files.zpath(d))
                       for d in digests if d != stuck)
        assert forgotten == []  # reporting is still the thread's
    finally:
        release.set()
    assert await r.drained(30)
    await r.stop()
    assert sorted(forgotten) == sorted(d for d in digests if d != stuck)


async def test_the_thread_runs_on_idle_cpu_only(tmp_path: Path) -> None:
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("SCHED_IDLE is Linux's; elsewhere the thread is only niced")
    files, _ = blob_files(tmp_path, 1)
    r = Reclaimer(files, lambda _: None)
    r.start(asyncio.get_running_loop())
    try:
        thread = next(t for t in threading.enumerate() if t.name == "cachesvc-reclaim")
        for _ in range(100):  # the thread sets its own policy first thing
            if os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE:
                break
            await asyncio.sleep(0.01)
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == BACKGROUND_NICE
    finally:
        await r.stop()
