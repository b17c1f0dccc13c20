"""Pure parsers of untrusted input: names, digests, references, ranges, manifests."""

from __future__ import annotations

import json

import pytest

from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest, parse_name, parse_reference
from cachesvc.api.ranges import parse_content_range, parse_range
from cachesvc.store.manifests import parse_manifest

D = "sha256:" + "a" * 64


def test_names() -> None:
    for ok in ("a", "a/b", "a.b-c_d__e", "library/ubuntu", "a---b"):
        assert parse_name(ok) == ok
    for bad in ("A", "a/../b", "a//b", "/a", "a/", "a..b", "a___b", "", "x" * 256):
        with pytest.raises(RegistryError) as e:
            parse_name(bad)
        assert e.value.code == "NAME_INVALID"


def test_digests() -> None:
    assert str(parse_digest(D)) == D
    for bad in ("sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256", ":" + "a" * 64):
        with pytest.raises(RegistryError) as e:
            parse_digest(bad)
        assert e.value.code == "DIGEST_INVALID"


def test_references() -> None:
    assert parse_reference("latest") == ("latest", None)
    assert parse_reference(D)[1] is not None
    with pytest.raises(RegistryError) as e:
        parse_reference(".bad")
    assert e.value.code == "MANIFEST_UNKNOWN"
    with pytest.raises(RegistryError) as e:
        parse_reference(".bad", for_write=True)
    assert e.value.code == "MANIFEST_INVALID"


def test_ranges() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 10)
    assert parse_range("bytes=-5", 100) == (95, 5)
    assert parse_range("bytes=-500", 100) == (0, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None
    for bad in ("bytes=100-", "bytes=5-1", "bytes=", "bytes=-0", "pages=1-2"):
        with pytest.raises(RegistryError):
            parse_range(bad, 100)
    assert parse_content_range("0-99") == (0, 100)
    assert parse_content_range("bytes 10-19/*") == (10, 10)
    for bad in ("", "5-1", "a-b", "-1"):
        with pytest.raises(ValueError):
            parse_content_range(bad)


def test_manifest_references() -> None:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D, "size": 1},
        {"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": "sha256:" + "b" * 64, "size": 2},
    ]}
    p = parse_manifest(json.dumps(doc).encode(), None)
    assert p.children == [D] and p.blobs == ["sha256:" + "b" * 64]
    foreign = {"schemaVersion": 2, "config": {"mediaType": "x", "digest": D, "size": 1}, "layers": [
        {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": "sha256:" + "c" * 64,
         "size": 5, "urls": ["https://example.invalid/l"]}]}
    assert parse_manifest(json.dumps(foreign).encode(), None).blobs == [D]
