"""Manifest parsing: which media type a pushed document is, and which blobs and manifests it references.

A registry cache must accept BuildKit's legacy cache form: an OCI index (or Docker manifest list) whose entries
are layer blobs and a cache-config blob rather than manifests. Entries are therefore sorted by their media type:
manifest types are child manifests, anything else is a blob reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cachesvc.api.errors import RegistryError
from cachesvc.api.names import parse_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES
# Layers that registries are not expected to hold (they are fetched from their ``urls``).
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


@dataclass
class ParsedManifest:
    """What the store needs to know about a manifest to keep it consistent."""

    media_type: str
    blobs: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    config_media_type: str | None = None
    config_digest: str | None = None
    config_size: int = 0

    def referrer_descriptor(self, digest: str, size: int) -> dict[str, Any]:
        """The descriptor the referrers API lists for this manifest."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": digest, "size": size}
        artifact_type = self.artifact_type or (self.config_media_type if self.media_type in IMAGE_TYPES else None)
        if artifact_type:
            d["artifactType"] = artifact_type
        if self.annotations:
            d["annotations"] = self.annotations
        return d


def _invalid(reason: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", {"reason": reason})


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest is missing")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size is not a non-negative integer")
    parse_digest(digest, code="MANIFEST_INVALID")
    return value


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a pushed manifest and list its references; raises MANIFEST_INVALID with a reason."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _invalid(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _invalid("not a JSON object")
    declared = content_type.split(";")[0].strip().lower() if content_type else ""
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise _invalid("mediaType is not a string")
    if declared in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise RegistryError("MANIFEST_INVALID", {"reason": "Docker schema 1 manifests are not supported"},
                            message="manifest invalid: schema 1 is not supported")
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    if declared in MANIFEST_TYPES:
        media_type = declared
        if inner and inner != declared:
            raise _invalid(f"Content-Type {declared} does not match mediaType {inner}")
    elif inner in MANIFEST_TYPES:
        media_type = inner
    elif declared and declared not in ("application/json", "application/octet-stream"):
        raise RegistryError("MANIFEST_INVALID", {"reason": f"unsupported manifest media type {declared}"},
                            message="manifest invalid: unsupported media type")
    elif "manifests" in doc:
        media_type = OCI_INDEX
    else:
        media_type = OCI_MANIFEST

    parsed = ParsedManifest(media_type=media_type)
    artifact_type = doc.get("artifactType")
    if artifact_type is not None:
        if not isinstance(artifact_type, str):
            raise _invalid("artifactType is not a string")
        parsed.artifact_type = artifact_type
    annotations = doc.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise _invalid("annotations must map strings to strings")
        parsed.annotations = annotations
    subject = doc.get("subject")
    if subject is not None:
        parsed.subject = _descriptor(subject, "subject")["digest"]

    if media_type in IMAGE_TYPES:
        config = _descriptor(doc.get("config"), "config")
        parsed.config_media_type = config["mediaType"]
        parsed.config_digest = config["digest"]
        parsed.config_size = config["size"]
        parsed.blobs.append(config["digest"])
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers is not a list")
        for i, layer in enumerate(layers):
            d = _descriptor(layer, f"layers[{i}]")
            if d["mediaType"] in FOREIGN_LAYER_TYPES and d.get("urls"):
                continue
            parsed.blobs.append(d["digest"])
    else:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _invalid("manifests is not a list")
        for i, entry in enumerate(entries):
            d = _descriptor(entry, f"manifests[{i}]")
            if d["mediaType"] in MANIFEST_TYPES:
                parsed.children.append(d["digest"])
            else:
                # BuildKit's legacy cache index lists layer and cache-config blobs here.
                parsed.blobs.append(d["digest"])
                if d["mediaType"] == BUILDKIT_CACHE_CONFIG:
                    parsed.config_media_type = d["mediaType"]
                    parsed.config_digest = d["digest"]
                    parsed.config_size = d["size"]
    return parsed
