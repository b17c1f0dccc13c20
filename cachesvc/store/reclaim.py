"""Deleting the files of blobs the index has dropped, in one background thread, off the request path.

Eviction drops thousands of blobs a second from the index; removing their files (a directory update each, and
for a large file the freeing of its extents) would otherwise run on the event loop between requests. The index
batch that drops a blob also records an ``unlink:<digest>`` intent, so a deletion that a crash interrupts is
finished on the next start; the intent is forgotten once the file is gone.

The thread takes what is queued in batches and removes each batch with one ``rm`` process, so it takes the
interpreter lock back once per batch instead of after every file's system calls (the event loop needs that lock
for every request it serves). It runs on idle CPU only (``priority.idle_this_thread``), so an upload waiting for
space does not wait for it: :meth:`Reclaimer.freed` removes what is still queued in the caller's worker.

A digest pushed again while its old file still waits here is never confused with it: installing a blob file
first calls :meth:`Reclaimer.settle`, which finishes the pending deletion of that digest at once. So a digest
is pending here only while the index does not hold it, and readers (who look the index up first) never open a
file that is about to go; one that already has it open keeps streaming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable

from cachesvc.priority import idle_this_thread
from cachesvc.store.blobs import BlobFiles

log = logging.getLogger("cachesvc.reclaim")

REPORT_EVERY = 512  # digests removed between two reports back to the loop (which forgets their intents)
BATCH = 256  # digests removed by one ``rm`` process at most
RM = shutil.which("rm")


class Reclaimer:
    """A queue of dropped digests and the thread that unlinks their files (plain and compressed forms)."""

    def __init__(self, files: BlobFiles, forget: Callable[[list[str]], None]) -> None:
        self.files = files
        self.forget = forget  # Index.forget_unlink, called on the loop thread
        self._lock = threading.Lock()  # held only for set updates, never across a syscall
        self._unlinked = threading.Condition(self._lock)
        self._pending: set[str] = set()
        self._busy: set[str] = set()  # the digests whose files the thread is removing right now
        self._helping: set[str] = set()  # ...and those that freed() is removing right now
        self._freeing = threading.Lock()  # one freed() at a time
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = threading.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, digest: str) -> bool:
        """Whether the file of ``digest`` is queued for deletion (or being deleted right now)."""
        with self._lock:
            return digest in self._pending or digest in self._busy or digest in self._helping

    def discard(self, digests: Iterable[str]) -> None:
        """Queue the files of dropped blobs for deletion (their ``unlink:`` intents are already written)."""
        batch = list(digests)
        if not batch:
            return
        with self._lock:
            self._pending.update(batch)
            self._idle.clear()
        for digest in batch:
            self._queue.put(digest)

    def settle(self, digest: str) -> None:
        """Before a file for ``digest`` is installed: finish the deletion of its old file, if one is pending
        (and wait for the thread if it is removing that very file right now)."""
        with self._lock:
            while digest in self._busy or digest in self._helping:
                self._unlinked.wait()
            if digest not in self._pending:
                return
            self._pending.discard(digest)
        self._remove(digest)

    def _paths(self, digest: str) -> tuple[str, str]:
        """The plain and the compressed form's file (either or both may be absent)."""
        return self.files.path(digest), self.files.zpath(digest)

    def _remove(self, digest: str) -> None:
        for path in self._paths(digest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- the thread ------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="cachesvc-reclaim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        idle_this_thread()
        done: list[str] = []
        while True:
            try:
                first = self._queue.get_nowait()
            except queue.Empty:  # caught up: report, then wait for more
                self._report(done)
                done = []
                with self._lock:
                    if not self._pending:
                        self._idle.set()
                first = self._queue.get()
            batch = [first]
            while first is not None and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            with self._lock:  # claim them: settle() now waits for these instead of removing them itself
                queued = dict.fromkeys(d for d in batch if d is not None)
                mine = [d for d in queued if d in self._pending]
                done += [d for d in queued if d not in self._pending]  # settled meanwhile: files already gone
                self._pending.difference_update(mine)
                self._busy.update(mine)
            try:
                done += self._remove_batch(mine)
            finally:
                with self._lock:
                    self._busy.clear()
                    self._unlinked.notify_all()
            if stop:
                self._report(done)
                return
            if len(done) >= REPORT_EVERY:
                self._report(done)
                done = []

    def _remove_batch(self, digests: list[str]) -> list[str]:
        """Remove the files of ``digests``; returns those whose files are gone (an intent stays for the rest,
        and the next start tries again)."""
        if not digests:
            return []
        if self._rm(digests):
            return digests
        gone = []  # no rm, or it could not remove something: one by one, to say what and why
        for digest in digests:
            try:
                self._remove(digest)
            except OSError as e:
                log.error("could not remove the file of dropped blob %s: %s", digest, e)
                continue
            gone.append(digest)
        return gone

    def _report(self, done: list[str]) -> None:
        if done and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: intents are redone at start
                self._loop.call_soon_threadsafe(self._forget, done)

    def _forget(self, done: list[str]) -> None:
        """On the loop: forget the intents of files now gone, except digests dropped again since."""
        with self._lock:
            gone = [d for d in dict.fromkeys(done) if d not in self._pending]
        if gone:
            self.forget(gone)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued file is gone and its intent's forgetting is scheduled on the loop."""
        return self._idle.wait(timeout)

    async def drained(self, timeout: float | None = None) -> bool:
        """Wait (without blocking the loop) until every queued file is gone. A reclaimer that was never started
        (a store opened but not serving) removes them here instead."""
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._forget(await loop.run_in_executor(None, self._remove_pending))
            return True
        return await loop.run_in_executor(None, self.wait_idle, timeout)

    async def freed(self) -> None:
        """For a request waiting for space: return once the files queued so far are gone. The thread runs on
        idle CPU only and may be starved by a busy machine, so their files are removed here, in a
        normal-priority worker; the thread still finds them queued and reports them (its ``rm -f`` of a file
        already gone costs little), and reports failures as it always does."""
        if self._thread is None:
            await self.drained()
            return
        await asyncio.get_running_loop().run_in_executor(None, self._free)

    def _free(self) -> None:
        with self._freeing:
            with self._lock:  # settle() of any of these waits until they are done: no new file is touched
                todo = list(self._pending | self._busy)
                self._helping.update(todo)
            try:
                for i in range(0, len(todo), BATCH):
                    self._unlink_quietly(todo[i:i + BATCH])
            finally:
                with self._lock:
                    self._helping.clear()
                    self._unlinked.notify_all()

    def _unlink_quietly(self, digests: list[str]) -> None:
        if self._rm(digests):
            return
        for digest in digests:  # the thread retries what is left, and logs what it cannot remove
            for path in self._paths(digest):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _rm(self, digests: list[str]) -> bool:
        """Remove the files of ``digests`` with one ``rm -f``; False if there is no ``rm`` or it failed."""
        if RM is None:
            return False
        paths = [p for d in digests for p in self._paths(d)]
        try:
            return subprocess.run([RM, "-f", "--", *paths], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, check=False).returncode == 0
        except OSError:
            return False

    def _remove_pending(self) -> list[str]:
        with self._lock:
            todo, self._pending = list(self._pending), set()
        for digest in todo:
            self._remove(digest)
        with self._lock:
            if not self._pending:
                self._idle.set()
        return todo

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the thread finish what is queued (bounded); what is left is redone from the intents at start."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._thread = None
        await asyncio.sleep(0)  # run the last report's forget
