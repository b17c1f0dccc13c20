"""Settings of the shared tier, object keys, and the CLI wiring (no object store needed)."""

from __future__ import annotations

import pytest

from cachesvc.remote import keys
from cachesvc.remote.prefetch import split_ref
from cachesvc.settings import SettingsError, load_settings


def test_settings() -> None:
    s = load_settings({}, env={"CACHESVC_REMOTE": "s3://bucket/ci/cache", "CACHESVC_REMOTE_MODE": "read-only",
                               "CACHESVC_PREFETCH": "cache/*:main, base/*:latest",
                               "CACHESVC_REMOTE_TIMEOUT": "2s"})
    assert s.remote == "s3://bucket/ci/cache" and s.remote_mode == "read-only" and s.remote_timeout == 2.0
    assert s.prefetch == ["cache/*:main", "base/*:latest"] and s.remote_endpoint == ""
    assert load_settings({}, env={}).remote == ""  # off by default
    for bad in ({"remote": "http://bucket"}, {"remote": "s3://"}, {"remote_mode": "write-only"},
                {"remote_endpoint": "127.0.0.1:8333"}, {"remote_timeout": "0s"}):
        with pytest.raises(SettingsError):
            load_settings(bad, env={})


def test_keys_round_trip() -> None:
    d = "sha256:" + "ab" * 32
    assert keys.blob(d) == f"blobs/sha256/{'ab' * 32}" and keys.parse_blob(keys.blob(d)) == d
    for repo in ("app", "cache/app", "a/b/sha256"):
        assert keys.parse_repo_digest(keys.manifest(repo, d), keys.MANIFESTS) == (repo, d)
        assert keys.parse_repo_digest(keys.used(repo, d), keys.USED) == (repo, d)
        assert keys.parse_tag(keys.tag(repo, "v1.2_x")) == (repo, "v1.2_x")
    rec = keys.TagRecord(d, 123, "application/vnd.oci.image.manifest.v1+json")
    assert keys.TagRecord.decode(rec.encode()) == rec
    assert keys.TagRecord.decode(b"not json") is None


def test_split_ref() -> None:
    assert split_ref("cache/app:main") == ("cache/app", "main")
    assert split_ref("cache/app") == ("cache/app", "latest")
    assert split_ref("localhost:5000/app") == ("localhost:5000/app", "latest")
    assert split_ref("cache/app@sha256:" + "0" * 64) == ("cache/app", "sha256:" + "0" * 64)
