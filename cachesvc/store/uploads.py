"""Upload sessions: POST opens one, PATCH appends chunks in order, PUT verifies and installs the blob.

The session record (repository, bytes accepted so far) lives in the index; the bytes live in ``uploads/<id>``.
The running digest lives in memory; after a restart it is rebuilt from the file when the upload finishes.
The record's offset is authoritative: a chunk is counted only once all of it is written, and on start-up any
bytes past the recorded offset (a chunk cut short by a crash) are cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cachesvc.api.errors import RegistryError
from cachesvc.store.blobs import AppendFile, new_hasher, storage_error
from cachesvc.store.index import Index
from cachesvc.store.layout import Layout
from cachesvc.store.records import UploadRecord

log = logging.getLogger("cachesvc.uploads")


@dataclass
class Session:
    """An open upload: its record, its open data file (while in use) and a lock serialising its requests."""

    id: str
    record: UploadRecord
    file: AppendFile | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UploadSessions:
    """Every open upload session, with their limits (count, idle age)."""

    def __init__(self, index: Index, layout: Layout, *, clock: Callable[[], float], max_sessions: int,
                 timeout: float) -> None:
        self.index = index
        self.layout = layout
        self.clock = clock
        self.max_sessions = max_sessions
        self.timeout = timeout
        self.live: dict[str, Session] = {}
        self.count = sum(1 for _ in index.uploads())

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def path(self, session_id: str) -> str:
        return str(self.layout.upload(session_id))

    def open(self, repo: str) -> Session:
        if self.count >= self.max_sessions:
            raise RegistryError("TOOMANYREQUESTS", {"reason": f"{self.max_sessions} upload sessions already open"})
        sid = str(uuid.uuid4())
        now = self._now()
        rec = UploadRecord(repo=repo, offset=0, created=now, updated=now)
        try:
            file = AppendFile(self.path(sid), 0, new_hasher())
        except OSError as e:
            raise storage_error(e, "starting an upload") from None
        self.index.put_upload(sid, rec)
        self.count += 1
        session = Session(sid, rec, file)
        self.live[sid] = session
        return session

    def get(self, session_id: str, repo: str) -> Session:
        session = self.live.get(session_id)
        if session is None:
            rec = self.index.upload(session_id) if _plausible_id(session_id) else None
            if rec is None:
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"session": session_id[:100]})
            session = Session(session_id, rec)
            self.live[session_id] = session
        if session.record.repo != repo:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"session": session_id[:100]})
        return session

    def _file(self, session: Session) -> AppendFile:
        if session.file is None:
            # A session from before a restart: reopen at the recorded offset; its digest is rebuilt at the end.
            session.file = AppendFile(self.path(session.id), session.record.offset, None)
        return session.file

    async def append(self, session: Session, chunks: AsyncIterator[bytes], expected: int | None) -> int:
        """Append one chunk (all of it or none of it) and record the new offset."""
        try:
            file = self._file(session)
            await file.write_stream(chunks, expected)
        except OSError as e:
            raise storage_error(e, "writing an upload chunk") from None
        session.record.offset = file.offset
        session.record.updated = self._now()
        self.index.put_upload(session.id, session.record)
        return file.offset

    def close(self, session: Session, *, remove_file: bool) -> None:
        """End a session (finished or cancelled); its data file is removed unless it was installed."""
        if session.file is not None:
            session.file.close()
            session.file = None
        if remove_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(session.id))
        if self.live.pop(session.id, None) is not None or self.index.upload(session.id) is not None:
            self.index.delete_upload(session.id)
            self.count = max(0, self.count - 1)

    def repair(self) -> None:
        """At start: cut every session's file back to its recorded offset, drop sessions without a file and
        files without a session. Touches only ``uploads/``, whose size is bounded by the session cap."""
        known: set[str] = set()
        for sid, rec in list(self.index.uploads()):
            path = self.path(sid)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                self.index.delete_upload(sid)
                continue
            if size < rec.offset:
                log.warning("upload %s lost bytes in a crash (%d < %d); dropping it", sid, size, rec.offset)
                os.unlink(path)
                self.index.delete_upload(sid)
                continue
            if size > rec.offset:
                os.truncate(path, rec.offset)
            known.add(sid)
        for entry in os.scandir(self.layout.uploads):
            if entry.name not in known:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        self.count = len(known)

    def expire(self) -> int:
        """Drop sessions idle longer than the upload timeout (not ones a request is using right now)."""
        cutoff = self._now() - int(self.timeout * 1000)
        stale = [sid for sid, rec in self.index.uploads() if rec.updated < cutoff]
        n = 0
        for sid in stale:
            live = self.live.get(sid)
            if live is not None and live.lock.locked():
                continue
            rec = self.index.upload(sid)
            if rec is None:
                continue
            self.close(live or Session(sid, rec), remove_file=True)
            n += 1
        return n


def _plausible_id(session_id: str) -> bool:
    return 0 < len(session_id) <= 64 and all(c.isalnum() or c == "-" for c in session_id)
