"""The seekable zstd format on its own: round trips, ranges, compatibility with the zstd CLI, damage detection."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesvc.store.seekable import SeekableError, SeekableReader, SeekTable, compress_bytes, compress_fd
from tests.compression.layers import text_tar


def _reader_for(data: bytes, frame_size: int) -> tuple[SeekableReader, int]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, compress_bytes(data, frame_size=frame_size))
    return SeekableReader(fd), fd


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode),
       frame_size=st.integers(1, 1500), ranges=st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 6000)),
                                                        max_size=8))
def test_any_range_of_any_content_reads_back_exactly(data: bytes, frame_size: int,
                                                      ranges: list[tuple[int, int]]) -> None:
    reader, fd = _reader_for(data, frame_size)
    try:
        assert reader.size == len(data)
        assert reader.read(0, len(data)) == data
        for a, b in ranges:
            start = min(a, len(data))
            count = min(b, len(data) - start)
            assert reader.read(start, count) == data[start:start + count]
    finally:
        os.close(fd)


def test_compress_fd_matches_compress_bytes_and_threads(tmp_path: Path) -> None:
    data = text_tar(5, 700_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    from concurrent.futures import ThreadPoolExecutor

    outs = []
    with ThreadPoolExecutor(3) as pool:
        for workers, p in ((1, None), (3, pool)):
            dst = tmp_path / f"dst{workers}"
            sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                size = compress_fd(sfd, len(data), dfd, pool=p, workers=workers, frame_size=64 * 1024)
            finally:
                os.close(sfd)
                os.close(dfd)
            assert size == dst.stat().st_size
            outs.append(dst.read_bytes())
    assert outs[0] == outs[1] == compress_bytes(data, frame_size=64 * 1024)
    table = SeekTable.read(os.open(tmp_path / "dst1", os.O_RDONLY))
    assert len(table.compressed) == (len(data) + 65535) // 65536 and table.size == len(data)


def test_gives_up_when_it_would_not_save(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert compress_fd(sfd, len(data), dfd, give_up_above=int(len(data) * 0.9), frame_size=65536) is None
    finally:
        os.close(sfd)
        os.close(dfd)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed (apt-get install zstd)")
def test_plain_zstd_decoder_reads_the_file(tmp_path: Path) -> None:
    """The seek table is a skippable frame: any zstd decoder returns the original bytes."""
    data = text_tar(6, 400_000)
    packed = tmp_path / "blob.zst"
    packed.write_bytes(compress_bytes(data, frame_size=100_000))
    out = subprocess.run(["zstd", "-d", "-c", str(packed)], capture_output=True, check=True).stdout
    assert out == data


def test_damage_is_an_error_never_wrong_bytes(tmp_path: Path) -> None:
    data = text_tar(7, 200_000)
    packed = bytearray(compress_bytes(data, frame_size=50_000))
    path = tmp_path / "blob.zst"
    # a flipped byte inside a frame: the frame's checksum (or its structure) catches it
    damaged = bytearray(packed)
    damaged[len(damaged) // 3] ^= 0x55
    path.write_bytes(damaged)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SeekableError):
            SeekableReader(fd).read(0, len(data))
    finally:
        os.close(fd)
    # a truncated file has no valid seek table
    path.write_bytes(packed[:-5])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SeekableError):
            SeekableReader(fd)
    finally:
        os.close(fd)
