"""Upload endpoints: monolithic, sessions, chunks, status, cancel, mount, and their errors."""

from __future__ import annotations

import asyncio
import os

from tests.support.inproc import Running, error_code, sha256


async def start(reg: Running, repo: str = "a") -> str:
    async with reg.http.post(f"/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202
        assert r.headers["Range"] == "0-0"
        assert r.headers["Docker-Upload-UUID"]
        assert r.headers["Content-Length"] == "0"
        return r.headers["Location"]


async def test_monolithic_post(reg: Running) -> None:
    data = os.urandom(2_500_000)
    digest = sha256(data)
    async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": digest}, data=data) as r:
        assert r.status == 201
        assert r.headers["Location"] == f"/v2/a/blobs/{digest}"
        assert r.headers["Docker-Content-Digest"] == digest
    async with reg.http.get(f"/v2/a/blobs/{digest}") as r:
        assert await r.read() == data


async def test_post_then_single_put_like_buildkit(reg: Running) -> None:
    data = os.urandom(100_000)
    location = await start(reg)
    async with reg.http.put(location, params={"digest": sha256(data)}, data=data,
                            headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201
        assert r.headers["Docker-Content-Digest"] == sha256(data)
    async with reg.http.head(f"/v2/a/blobs/{sha256(data)}") as r:
        assert r.status == 200


async def test_chunked_upload_and_status(reg: Running) -> None:
    data = os.urandom(3_000_000)
    location = await start(reg)
    pieces = [data[:1_000_000], data[1_000_000:2_500_000], data[2_500_000:]]
    offset = 0
    for piece in pieces[:2]:
        end = offset + len(piece) - 1
        async with reg.http.patch(location, data=piece, headers={"Content-Range": f"{offset}-{end}",
                                                                  "Content-Type": "application/octet-stream"}) as r:
            assert r.status == 202, await r.text()
            assert r.headers["Range"] == f"0-{end}"
            location = r.headers["Location"]
        offset = end + 1
    async with reg.http.get(location) as r:
        assert r.status == 204
        assert r.headers["Range"] == f"0-{offset - 1}"
    last = pieces[2]
    async with reg.http.put(location, params={"digest": sha256(data)}, data=last,
                            headers={"Content-Range": f"{offset}-{offset + len(last) - 1}"}) as r:
        assert r.status == 201, await r.text()
    async with reg.http.get(f"/v2/a/blobs/{sha256(data)}") as r:
        assert await r.read() == data
    assert list((reg.root / "uploads").iterdir()) == []


async def test_streamed_patch_without_content_range(reg: Running) -> None:
    data = os.urandom(500_000)

    async def gen():  # chunked transfer encoding
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    location = await start(reg)
    async with reg.http.patch(location, data=gen()) as r:
        assert r.status == 202 and r.headers["Range"] == f"0-{len(data) - 1}"
    async with reg.http.put(location, params={"digest": sha256(data)}) as r:
        assert r.status == 201


async def test_out_of_order_chunk_is_416_and_changes_nothing(reg: Running) -> None:
    location = await start(reg)
    async with reg.http.patch(location, data=b"abcd", headers={"Content-Range": "0-3"}) as r:
        assert r.status == 202
    for bad in ("10-13", "0-3", "2-5"):  # a gap, a replay, an overlap
        async with reg.http.patch(location, data=b"efgh", headers={"Content-Range": bad}) as r:
            assert r.status == 416, bad
            assert r.headers["Range"] == "0-3"
            assert r.headers["Location"]
    async with reg.http.put(location, params={"digest": sha256(b"abcd")}) as r:
        assert r.status == 201


async def test_malformed_content_range_is_416(reg: Running) -> None:
    location = await start(reg)
    for bad in ("abc", "5-2", "-3", "0-"):
        async with reg.http.patch(location, data=b"x", headers={"Content-Range": bad}) as r:
            assert r.status == 416, bad


async def test_content_range_length_mismatch_is_size_invalid(reg: Running) -> None:
    location = await start(reg)
    async with reg.http.patch(location, data=b"abc", headers={"Content-Range": "0-9"}) as r:
        assert r.status == 400 and await error_code(r) == "SIZE_INVALID"
    async with reg.http.get(location) as r:
        assert r.headers["Range"] == "0-0"  # nothing was taken


async def test_digest_mismatch_is_rejected_and_invisible(reg: Running) -> None:
    data = b"actual content"
    wrong = sha256(b"something else")
    async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": wrong}, data=data) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    for d in (wrong, sha256(data)):
        async with reg.http.head(f"/v2/a/blobs/{d}") as r:
            assert r.status == 404
    location = await start(reg)
    async with reg.http.put(location, params={"digest": wrong}, data=data) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    assert list((reg.root / "uploads").iterdir()) == []
    assert reg.store.index.counters["blobs"] == 0


async def test_put_without_digest(reg: Running) -> None:
    location = await start(reg)
    async with reg.http.put(location, data=b"x") as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"


async def test_malformed_and_unsupported_digests(reg: Running) -> None:
    for bad in ("sha256:short", "sha256:" + "G" * 64, "md5:" + "a" * 32, "nocolon", "sha256:" + "A" * 64):
        async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": bad}, data=b"x") as r:
            assert r.status == 400, bad
            assert await error_code(r) == "DIGEST_INVALID"
        async with reg.http.head(f"/v2/a/blobs/{bad}") as r:
            assert r.status == 400, bad


async def test_sha512_blob(reg: Running) -> None:
    import hashlib

    data = os.urandom(1000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    async with reg.http.post("/v2/a/blobs/uploads/", params={"digest": digest}, data=data) as r:
        assert r.status == 201
    async with reg.http.get(f"/v2/a/blobs/{digest}") as r:
        assert await r.read() == data


async def test_unknown_session(reg: Running) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        async with reg.http.request(method, "/v2/a/blobs/uploads/not-a-session",
                                    params={"digest": sha256(b"")}) as r:
            assert r.status == 404, method
            assert await error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_session_is_bound_to_its_repository(reg: Running) -> None:
    location = await start(reg, "one")
    other = location.replace("/v2/one/", "/v2/two/")
    async with reg.http.get(other) as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_cancel_upload(reg: Running) -> None:
    location = await start(reg)
    async with reg.http.patch(location, data=b"partial", headers={"Content-Range": "0-6"}) as r:
        assert r.status == 202
    async with reg.http.delete(location) as r:
        assert r.status == 204
    async with reg.http.get(location) as r:
        assert r.status == 404
    assert list((reg.root / "uploads").iterdir()) == []


async def test_location_query_reordered_still_works(reg: Running) -> None:
    """containerd re-encodes and sorts an upload Location's query; the session must not depend on it."""
    data = b"payload"
    location = await start(reg)
    async with reg.http.put(location + "?zzz=1&aaa=%2F", params={"digest": sha256(data)}, data=data) as r:
        assert r.status == 201


async def test_cross_repository_mount(reg: Running) -> None:
    data = os.urandom(10_000)
    digest = await reg.push_blob("src", data)
    async with reg.http.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"}) as r:
        assert r.status == 201
        assert r.headers["Location"] == f"/v2/dst/blobs/{digest}"
        assert r.headers["Docker-Content-Digest"] == digest
    async with reg.http.get(f"/v2/dst/blobs/{digest}") as r:
        assert await r.read() == data


async def test_mount_falls_back_to_upload_session(reg: Running) -> None:
    digest = await reg.push_blob("src", b"x")
    for params in ({"mount": sha256(b"absent"), "from": "src"}, {"mount": digest, "from": "other"},
                   {"mount": "garbage", "from": "src"}, {"mount": digest, "from": "BAD NAME"},
                   {"mount": digest}):
        async with reg.http.post("/v2/dst/blobs/uploads/", params=params) as r:
            assert r.status == 202, params
            assert "/blobs/uploads/" in r.headers["Location"]


async def test_concurrent_pushes_of_the_same_digest(reg: Running) -> None:
    data = os.urandom(2_000_000)

    async def push() -> int:
        location = await start(reg)
        async with reg.http.put(location, params={"digest": sha256(data)}, data=data) as r:
            return r.status

    assert await asyncio.gather(*(push() for _ in range(8))) == [201] * 8
    async with reg.http.get(f"/v2/a/blobs/{sha256(data)}") as r:
        assert await r.read() == data
    assert reg.store.index.counters["blobs"] == 1
    assert list((reg.root / "uploads").iterdir()) == []


async def test_session_survives_restart(reg: Running) -> None:
    data = os.urandom(200_000)
    location = await start(reg)
    async with reg.http.patch(location, data=data[:100_000], headers={"Content-Range": "0-99999"}) as r:
        assert r.status == 202
    await reg.restart()
    async with reg.http.get(location) as r:
        assert r.status == 204 and r.headers["Range"] == "0-99999"
    async with reg.http.put(location, params={"digest": sha256(data)}, data=data[100_000:],
                            headers={"Content-Range": "100000-199999"}) as r:
        assert r.status == 201, await r.text()
    async with reg.http.get(f"/v2/a/blobs/{sha256(data)}") as r:
        assert await r.read() == data


async def test_upload_session_cap(make_server) -> None:
    reg = await make_server(max_upload_sessions=2)
    await start(reg)
    await start(reg)
    async with reg.http.post("/v2/a/blobs/uploads/") as r:
        assert r.status == 429 and await error_code(r) == "TOOMANYREQUESTS"


async def test_idle_sessions_expire(make_server, clock) -> None:
    reg = await make_server(upload_timeout=60)
    location = await start(reg)
    clock.advance(61)
    assert reg.store.uploads.expire() == 1
    async with reg.http.get(location) as r:
        assert r.status == 404
