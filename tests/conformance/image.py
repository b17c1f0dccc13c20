"""Port of upstream `conformance/image.go`: the trimmed image-spec types the suite serialises.

Upstream copies the image-spec Go structs, drops unused fields and adds `newUnspecifiedField` to every
descriptor so registries are checked for tolerating unknown fields. Manifests are then serialised with
`json.MarshalIndent(v, "", "\\t")`. The builders below produce dicts whose key order, omitted fields and
values match what `encoding/json` emits for those structs (field order as declared, `omitempty` honoured,
`[]byte` as standard base64, a nil `[]byte` as `null`), and `go_marshal_indent` reproduces the byte layout,
so every payload (and therefore every digest) has the same shape as the Go suite's.
"""

from __future__ import annotations

import base64
import json
from typing import Any

MEDIA_TYPE_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_EMPTY_JSON = "application/vnd.oci.empty.v1+json"

JSONObject = dict[str, Any]


def _go_bytes(value: bytes) -> str:
    """`encoding/json` renders `[]byte` as standard, padded base64."""
    return base64.b64encode(value).decode("ascii")


def descriptor(media_type: str, digest: str, size: int, *, urls: list[str] | None = None,
               annotations: dict[str, str] | None = None, data: bytes | None = None,
               platform: JSONObject | None = None, artifact_type: str = "",
               new_unspecified_field: bytes | None = None) -> JSONObject:
    """The `descriptor` struct: `newUnspecifiedField` has no omitempty, so a nil value is `null`."""
    d: JSONObject = {"mediaType": media_type, "digest": digest, "size": size}
    if urls:
        d["urls"] = list(urls)
    if annotations:
        d["annotations"] = dict(sorted(annotations.items()))
    if data:
        d["data"] = _go_bytes(data)
    if platform is not None:
        d["platform"] = platform
    if artifact_type:
        d["artifactType"] = artifact_type
    d["newUnspecifiedField"] = None if new_unspecified_field is None else _go_bytes(new_unspecified_field)
    return d


def manifest(*, schema_version: int, config: JSONObject, layers: list[JSONObject] | None,
             media_type: str = "", artifact_type: str = "", subject: JSONObject | None = None,
             annotations: dict[str, str] | None = None) -> JSONObject:
    """The `manifest` struct; `layers` has no omitempty, so a nil slice would be `null`."""
    m: JSONObject = {"schemaVersion": schema_version}
    if media_type:
        m["mediaType"] = media_type
    if artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = config
    m["layers"] = None if layers is None else list(layers)
    if subject is not None:
        m["subject"] = subject
    if annotations:
        m["annotations"] = dict(sorted(annotations.items()))
    return m


def index(*, schema_version: int, manifests: list[JSONObject] | None, media_type: str = "",
          artifact_type: str = "", subject: JSONObject | None = None,
          annotations: dict[str, str] | None = None) -> JSONObject:
    """The `index` struct."""
    i: JSONObject = {"schemaVersion": schema_version}
    if media_type:
        i["mediaType"] = media_type
    if artifact_type:
        i["artifactType"] = artifact_type
    i["manifests"] = None if manifests is None else list(manifests)
    if subject is not None:
        i["subject"] = subject
    if annotations:
        i["annotations"] = dict(sorted(annotations.items()))
    return i


def image_config(*, architecture: str, os: str, rootfs_type: str, diff_ids: list[str] | None,
                 author: str = "", variant: str = "") -> JSONObject:
    """The `image` struct (an image config) with its `rootFS`."""
    c: JSONObject = {}
    if author:
        c["author"] = author
    c["architecture"] = architecture
    if variant:
        c["variant"] = variant
    c["os"] = os
    c["rootfs"] = {"type": rootfs_type, "diff_ids": None if diff_ids is None else list(diff_ids)}
    return c


def go_marshal_indent(value: Any) -> bytes:
    """Bytes of Go's `json.MarshalIndent(value, "", "\\t")`, including its HTML-safe escaping."""
    text = json.dumps(value, indent="\t", separators=(",", ": "), ensure_ascii=False)
    # encoding/json escapes these inside strings; outside strings they never occur in JSON.
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")
