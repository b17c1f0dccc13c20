"""Port of upstream `conformance/setup.go`: environment settings, test payloads and spec helpers.

Everything here is computed once at import, like Go's `init()`, and shared by the four workflow modules.
Names follow the Go variables (`configs`, `manifests`, `layer_blob_data`, `test_blob_a`, `refs_*`...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import pytest

from .client import Response, go_field
from .image import (
    MEDIA_TYPE_EMPTY_JSON,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_LAYER_TAR_GZIP,
    descriptor,
    go_marshal_indent,
    image_config,
    index,
    manifest,
)

# -- environment (setup.go constants) ---------------------------------------------------------------

ENV_ROOT_URL = "OCI_ROOT_URL"
ENV_NAMESPACE = "OCI_NAMESPACE"
ENV_USERNAME = "OCI_USERNAME"
ENV_PASSWORD = "OCI_PASSWORD"
ENV_DEBUG = "OCI_DEBUG"
ENV_PULL = "OCI_TEST_PULL"
ENV_PUSH = "OCI_TEST_PUSH"
ENV_CONTENT_DISCOVERY = "OCI_TEST_CONTENT_DISCOVERY"
ENV_CONTENT_MANAGEMENT = "OCI_TEST_CONTENT_MANAGEMENT"
ENV_PUSH_EMPTY_LAYER = "OCI_SKIP_EMPTY_LAYER_PUSH_TEST"  # declared upstream, read by nothing in this version
ENV_BLOB_DIGEST = "OCI_BLOB_DIGEST"
ENV_MANIFEST_DIGEST = "OCI_MANIFEST_DIGEST"
ENV_TAG_NAME = "OCI_TAG_NAME"
ENV_TAG_LIST = "OCI_TAG_LIST"
ENV_AUTH_SCOPE = "OCI_AUTH_SCOPE"
ENV_DELETE_MANIFEST_BEFORE_BLOBS = "OCI_DELETE_MANIFEST_BEFORE_BLOBS"
ENV_CROSSMOUNT_NAMESPACE = "OCI_CROSSMOUNT_NAMESPACE"
ENV_AUTOMATIC_CROSSMOUNT = "OCI_AUTOMATIC_CROSSMOUNT"
ENV_SEED = "OCI_SEED"  # port-only: Ginkgo's --seed (defaults to the current Unix time, as Ginkgo does)

DEFAULT_NAMESPACE = "conformance/testrepo"  # upstream has no default; the port needs one to run unattended

EMPTY_LAYER_TEST_TAG = "emptylayer"
TEST_TAG_NAME = "tagtest0"

TITLE_PULL = "Pull"
TITLE_PUSH = "Push"
TITLE_CONTENT_DISCOVERY = "Content Discovery"
TITLE_CONTENT_MANAGEMENT = "Content Management"

# Workflow bits, as upstream's `pull = 1 << iota` ...
PULL, PUSH, CONTENT_DISCOVERY, CONTENT_MANAGEMENT = 1, 2, 4, 8
# Upstream's `numWorkflows` continues the `1 << iota` sequence, so it is 16: that many unique configs and
# manifests are generated, of which indexes 0..4 are used (0-1 pull, 1 push, 2 and 4 discovery, 3 management).
NUM_WORKFLOWS = 1 << 4

WORKFLOW_ENV = {ENV_PULL: PULL, ENV_PUSH: PUSH, ENV_CONTENT_DISCOVERY: CONTENT_DISCOVERY,
                ENV_CONTENT_MANAGEMENT: CONTENT_MANAGEMENT}

# Upstream's errorCodes table, indexed by the BLOB_UNKNOWN... iota constants.
ERROR_CODES = [
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED", "NAME_INVALID", "NAME_UNKNOWN",
    "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED",
]
UNSUPPORTED = ERROR_CODES.index("UNSUPPORTED")

# A base64 gzip'd tarball holding test.txt ("you bothered to find out what was in here. Congratulations!"),
# byte-for-byte upstream's layerBase64String so the layer digest is the same as the Go suite's.
LAYER_BASE64 = (
    "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
    "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
    "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"
)

ARTIFACT_TYPE_FILTER = "artifactType"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def parse_bool(value: str) -> bool | None:
    """Go's `strconv.ParseBool`; None where Go returns an error."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def digest_of(data: bytes) -> str:
    """`godigest.FromBytes(data).String()` (sha256)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Settings:
    """What upstream's `init()` reads from the environment."""

    root_url: str
    namespace: str
    crossmount_namespace: str
    username: str
    password: str
    auth_scope: str
    debug: bool
    tests_to_run: int
    blob_digest_override: str
    manifest_digest_override: str
    tag_name: str
    tag_list: str
    run_pull_setup: bool
    run_push_setup: bool
    run_content_discovery_setup: bool
    run_content_management_setup: bool
    delete_manifest_before_blobs: bool
    run_automatic_crossmount_test: bool
    automatic_crossmount_enabled: bool
    seed: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the OCI_* variables.

        One deliberate difference: upstream enables a workflow only when its OCI_TEST_* variable is true;
        here an unset variable means enabled (all four workflows run by default) and a set one is parsed
        exactly as upstream parses it.
        """
        env = os.environ if env is None else env
        tests_to_run = 0
        for var, bit in WORKFLOW_ENV.items():
            raw = env.get(var)
            if raw is None or parse_bool(raw):
                tests_to_run |= bit
        delete_first = True
        if ENV_DELETE_MANIFEST_BEFORE_BLOBS in env:
            delete_first = bool(parse_bool(env[ENV_DELETE_MANIFEST_BEFORE_BLOBS]))
        seed_raw = env.get(ENV_SEED, "")
        return cls(
            root_url=env.get(ENV_ROOT_URL, ""),
            namespace=env.get(ENV_NAMESPACE, "") or DEFAULT_NAMESPACE,
            crossmount_namespace=env.get(ENV_CROSSMOUNT_NAMESPACE, "") or f"conformance-{uuid.uuid4()}",
            username=env.get(ENV_USERNAME, ""),
            password=env.get(ENV_PASSWORD, ""),
            auth_scope=env.get(ENV_AUTH_SCOPE, ""),
            debug=bool(parse_bool(env.get(ENV_DEBUG, ""))),
            tests_to_run=tests_to_run,
            blob_digest_override=env.get(ENV_BLOB_DIGEST, ""),
            manifest_digest_override=env.get(ENV_MANIFEST_DIGEST, ""),
            tag_name=env.get(ENV_TAG_NAME, ""),
            tag_list=env.get(ENV_TAG_LIST, ""),
            run_pull_setup=not (env.get(ENV_TAG_NAME, "") and env.get(ENV_MANIFEST_DIGEST, "")
                                and env.get(ENV_BLOB_DIGEST, "")),
            run_push_setup=True,
            run_content_discovery_setup=not env.get(ENV_TAG_LIST, ""),
            run_content_management_setup=True,
            delete_manifest_before_blobs=delete_first,
            run_automatic_crossmount_test=ENV_AUTOMATIC_CROSSMOUNT in env,
            automatic_crossmount_enabled=bool(parse_bool(env.get(ENV_AUTOMATIC_CROSSMOUNT, ""))),
            seed=int(seed_raw) if seed_raw.strip() else int(time.time()),
        )


# -- test payloads (setup.go init) ------------------------------------------------------------------


@dataclass
class Blob:
    """Upstream's `TestBlob`: content, its length as a decimal string, and its digest."""

    content: bytes
    content_length: str
    digest: str


def random_string(n: int) -> str:
    """Upstream's `randomString`: crypto-random characters from [0-9A-Za-z-]."""
    letters = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
    return "".join(secrets.choice(letters) for _ in range(n))


def random_blob(size: int, seed: int) -> tuple[str, bytes]:
    """Upstream's `randomBlob`: reproducible pseudo-random bytes for a seed (Python's PRNG, not Go's)."""
    data = random.Random(seed).randbytes(size)
    return digest_of(data), data


@dataclass
class ChunkedBlob:
    """`testBlobB` and its two chunks; push's first chunked spec may rebuild it (`setupChunkedBlob`)."""

    blob: bytes = b""
    digest: str = ""
    chunk1: bytes = b""
    chunk1_length: str = ""
    chunk1_range: str = ""
    chunk2: bytes = b""
    chunk2_length: str = ""
    chunk2_range: str = ""

    def setup(self, size: int, seed: int) -> None:
        """Upstream's `setupChunkedBlob(size)`: chunk 1 is the first size/2+1 bytes, chunk 2 the rest."""
        self.digest, self.blob = random_blob(size, seed + 2)
        cut = size // 2 + 1
        self.chunk1 = self.blob[:cut]
        self.chunk1_length = str(len(self.chunk1))
        self.chunk1_range = f"0-{len(self.chunk1) - 1}"
        self.chunk2 = self.blob[cut:]
        self.chunk2_length = str(len(self.chunk2))
        self.chunk2_range = f"{len(self.chunk1)}-{len(self.blob) - 1}"


@dataclass
class TestData:
    """Every payload upstream's `init()` prepares."""

    __test__ = False  # not a pytest test class

    seed: int
    configs: list[Blob]
    manifests: list[Blob]
    layer_blob_data: bytes
    layer_blob_digest: str
    layer_blob_content_length: str
    empty_layer_manifest_content: bytes
    empty_layer_manifest_digest: str
    nonexistent_manifest: str
    invalid_manifest_content: bytes
    test_blob_a: bytes
    test_blob_a_length: str
    test_blob_a_digest: str
    chunked: ChunkedBlob
    empty_json_blob: bytes
    empty_json_descriptor: dict[str, Any]
    test_ref_blob_a: bytes
    test_ref_blob_a_length: str
    test_ref_blob_a_digest: str
    test_ref_artifact_type_a: str
    test_ref_blob_b: bytes
    test_ref_blob_b_length: str
    test_ref_blob_b_digest: str
    test_ref_artifact_type_b: str
    test_ref_artifact_type_index: str
    test_annotation_key: str
    test_annotation_values: dict[str, str]
    refs_manifest_a_config_artifact_content: bytes
    refs_manifest_a_config_artifact_digest: str
    refs_manifest_b_config_artifact_content: bytes
    refs_manifest_b_config_artifact_digest: str
    refs_manifest_a_layer_artifact_content: bytes
    refs_manifest_a_layer_artifact_digest: str
    refs_manifest_b_layer_artifact_content: bytes
    refs_manifest_b_layer_artifact_digest: str
    refs_manifest_c_layer_artifact_content: bytes
    refs_manifest_c_layer_artifact_digest: str
    refs_index_artifact_content: bytes
    refs_index_artifact_digest: str
    dummy_digest: str = field(default_factory=lambda: digest_of(b"hello world"))


def build_test_data(settings: Settings) -> TestData:
    """Build the payloads exactly as upstream's `init()` does (random parts freshly drawn)."""
    seed = settings.seed
    configs: list[Blob] = []
    for _ in range(NUM_WORKFLOWS):
        # a fresh random author per workflow gives every config (and manifest) a unique digest per run
        content = go_marshal_indent(image_config(architecture="amd64", os="linux", rootfs_type="layers",
                                                 diff_ids=[], author=random_string(16)))
        configs.append(Blob(content, str(len(content)), settings.blob_digest_override or digest_of(content)))

    layer_blob_data = base64.b64decode(LAYER_BASE64)
    layer_blob_digest = digest_of(layer_blob_data)
    layers = [descriptor(MEDIA_TYPE_LAYER_TAR_GZIP, layer_blob_digest, len(layer_blob_data))]

    def config_descriptor(i: int) -> dict[str, Any]:
        return descriptor(MEDIA_TYPE_IMAGE_CONFIG, configs[i].digest, len(configs[i].content),
                          data=configs[i].content,  # must be the config content
                          new_unspecified_field=b"hello world")  # content doesn't matter

    manifests: list[Blob] = []
    for i in range(NUM_WORKFLOWS):
        content = go_marshal_indent(manifest(schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST,
                                             config=config_descriptor(i), layers=layers))
        manifests.append(Blob(content, str(len(content)),
                              settings.manifest_digest_override or digest_of(content)))

    # used in the push test: no mediaType, no layers
    empty_layer_manifest_content = go_marshal_indent(manifest(schema_version=2, config=config_descriptor(1),
                                                              layers=[]))

    dig_a, blob_a = random_blob(42, seed + 1)
    chunked = ChunkedBlob()
    chunked.setup(42, seed)

    # used in the referrers test (artifacts with the subject field set)
    empty_json_blob = b"{}"
    empty_json = descriptor(MEDIA_TYPE_EMPTY_JSON, digest_of(empty_json_blob), len(empty_json_blob))
    ref_blob_a = b"NHL Peanut Butter on my NHL bagel"
    ref_type_a = "application/vnd.nhl.peanut.butter.bagel"
    ref_blob_b = b"NBA Strawberry Jam on my NBA croissant"
    ref_type_b = "application/vnd.nba.strawberry.jam.croissant"
    ref_type_index = "application/vnd.food.stand"
    annotation_key = "org.opencontainers.conformance.test"
    annotation_values: dict[str, str] = {}

    def subject_of(i: int) -> dict[str, Any]:
        content = manifests[i].content
        return descriptor(MEDIA_TYPE_IMAGE_MANIFEST, digest_of(content), len(content))

    def add(doc: dict[str, Any]) -> tuple[bytes, str]:
        content = go_marshal_indent(doc)
        dig = digest_of(content)
        if doc.get("annotations"):
            annotation_values[dig] = doc["annotations"][annotation_key]
        return content, dig

    # artifact with a subject, config.mediaType = artifactType
    a_config = add(manifest(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST,
        config=descriptor(ref_type_a, digest_of(ref_blob_a), len(ref_blob_a)),
        subject=subject_of(4), layers=[empty_json], annotations={annotation_key: "test config a"}))
    b_config = add(manifest(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST,
        config=descriptor(ref_type_b, digest_of(ref_blob_b), len(ref_blob_b)),
        subject=subject_of(4), layers=[empty_json], annotations={annotation_key: "test config b"}))
    # artifact with a subject, artifactType set, config.mediaType = empty JSON
    a_layer = add(manifest(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST, artifact_type=ref_type_a, config=empty_json,
        subject=subject_of(4), layers=[descriptor(ref_type_a, digest_of(ref_blob_a), len(ref_blob_a))],
        annotations={annotation_key: "test layer a"}))
    b_layer = add(manifest(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST, artifact_type=ref_type_b, config=empty_json,
        subject=subject_of(4), layers=[descriptor(ref_type_b, digest_of(ref_blob_b), len(ref_blob_b))],
        annotations={annotation_key: "test layer b"}))
    # C is B's shape, but its subject (manifests[3]) is never pushed before C is, and has no annotations
    c_layer = add(manifest(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_MANIFEST, artifact_type=ref_type_b, config=empty_json,
        subject=subject_of(3), layers=[descriptor(ref_type_b, digest_of(ref_blob_b), len(ref_blob_b))]))
    refs_index = add(index(
        schema_version=2, media_type=MEDIA_TYPE_IMAGE_INDEX, artifact_type=ref_type_index,
        manifests=[descriptor(MEDIA_TYPE_IMAGE_MANIFEST, a_config[1], len(a_config[0])),
                   descriptor(MEDIA_TYPE_IMAGE_MANIFEST, a_layer[1], len(a_layer[0]))],
        subject=subject_of(4), annotations={annotation_key: "test index"}))

    return TestData(
        seed=seed,
        configs=configs,
        manifests=manifests,
        layer_blob_data=layer_blob_data,
        layer_blob_digest=layer_blob_digest,
        layer_blob_content_length=str(len(layer_blob_data)),
        empty_layer_manifest_content=empty_layer_manifest_content,
        empty_layer_manifest_digest=digest_of(empty_layer_manifest_content),
        nonexistent_manifest=".INVALID_MANIFEST_NAME",
        invalid_manifest_content=b"blablabla",
        test_blob_a=blob_a,
        test_blob_a_length=str(len(blob_a)),
        test_blob_a_digest=dig_a,
        chunked=chunked,
        empty_json_blob=empty_json_blob,
        empty_json_descriptor=empty_json,
        test_ref_blob_a=ref_blob_a,
        test_ref_blob_a_length=str(len(ref_blob_a)),
        test_ref_blob_a_digest=digest_of(ref_blob_a),
        test_ref_artifact_type_a=ref_type_a,
        test_ref_blob_b=ref_blob_b,
        test_ref_blob_b_length=str(len(ref_blob_b)),
        test_ref_blob_b_digest=digest_of(ref_blob_b),
        test_ref_artifact_type_b=ref_type_b,
        test_ref_artifact_type_index=ref_type_index,
        test_annotation_key=annotation_key,
        test_annotation_values=annotation_values,
        refs_manifest_a_config_artifact_content=a_config[0],
        refs_manifest_a_config_artifact_digest=a_config[1],
        refs_manifest_b_config_artifact_content=b_config[0],
        refs_manifest_b_config_artifact_digest=b_config[1],
        refs_manifest_a_layer_artifact_content=a_layer[0],
        refs_manifest_a_layer_artifact_digest=a_layer[1],
        refs_manifest_b_layer_artifact_content=b_layer[0],
        refs_manifest_b_layer_artifact_digest=b_layer[1],
        refs_manifest_c_layer_artifact_content=c_layer[0],
        refs_manifest_c_layer_artifact_digest=c_layer[1],
        refs_index_artifact_content=refs_index[0],
        refs_index_artifact_digest=refs_index[1],
    )


SETTINGS = Settings.from_env()
DATA = build_test_data(SETTINGS)


# -- spec helpers (SkipIfDisabled, RunOnlyIf, RunOnlyIfNot, Warn) ----------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def spec(workflow: str, context: str, text: str) -> Callable[[F], F]:
    """Tag a test with the upstream Ginkgo path `<workflow> / <context> / <g.Specify text>`."""
    return pytest.mark.oci_spec(workflow=workflow, context=context, text=text)  # type: ignore[return-value]


def user_disabled(workflow: int) -> bool:
    """Upstream's `userDisabled`."""
    return not (workflow & SETTINGS.tests_to_run)


def skip_if_disabled(workflow: int) -> None:
    """Upstream's `SkipIfDisabled`."""
    if user_disabled(workflow):
        lines = [f"\t{var}={os.environ.get(var, '')}" for var in WORKFLOW_ENV]
        pytest.skip("you have skipped this test; if this is an error, check your environment variable "
                    "settings:\n" + "\n".join(lines))


def run_only_if(condition: bool, reason: str = "a precondition of this spec does not hold") -> None:
    """Upstream's `RunOnlyIf` (upstream says only "you have skipped this test"; here the reason is given)."""
    if not condition:
        pytest.skip(f"not applicable: {reason}")


def run_only_if_not(condition: bool, reason: str = "a precondition of this spec does not hold") -> None:
    """Upstream's `RunOnlyIfNot`."""
    if condition:
        pytest.skip(f"not applicable: {reason}")


class ConformanceWarning(UserWarning):
    """Upstream's `Warn`: a non-fatal finding, shown in pytest's warnings summary."""


def warn(message: str) -> None:
    """Upstream's `Warn`."""
    warnings.warn(message, ConformanceWarning, stacklevel=2)


# -- gomega matchers on responses ----------------------------------------------------------------


def is_2xx(status: int) -> bool:
    """`SatisfyAll(BeNumerically(">=", 200), BeNumerically("<", 300))`."""
    return 200 <= status < 300


def expect_status(resp: Response, *allowed: int, success: bool = False) -> None:
    """Expect the status to be one of `allowed`, or any 2xx when `success` (gomega SatisfyAny)."""
    ok = resp.status in allowed or (success and is_2xx(resp.status))
    if not ok:
        want = " or ".join([*(["2xx"] if success else []), *map(str, allowed)])
        pytest.fail(f"expected status {want}, got {resp.status}\n{resp.describe()}", pytrace=False)


def expect(condition: bool, message: str, resp: Response | None = None) -> None:
    """A gomega `Expect(...)` that reports the response when it fails."""
    if not condition:
        pytest.fail(message + (f"\n{resp.describe()}" if resp is not None else ""), pytrace=False)


def fail(message: str, resp: Response | None = None) -> NoReturn:
    """A gomega failure that reports the response."""
    pytest.fail(message + (f"\n{resp.describe()}" if resp is not None else ""), pytrace=False)


def go_index(items: list[str], i: int) -> str:
    """Go slice indexing: a negative or too-large index panics (fails the spec) instead of wrapping."""
    if i < 0 or i >= len(items):
        pytest.fail(f"runtime error: index out of range [{i}] with length {len(items)}", pytrace=False)
    return items[i]


# -- JSON decoding as Go's encoding/json would --------------------------------------------------


class GoUnmarshalError(ValueError):
    """Where `json.Unmarshal` would return an error."""


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise GoUnmarshalError(str(e)) from e


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) or v is None for v in value):
        raise GoUnmarshalError(f"{what} is not an array of strings: {value!r}")
    return [v or "" for v in value]


@dataclass
class TagList:
    """Upstream's `TagList`."""

    name: str
    tags: list[str]


def unmarshal_tag_list(body: bytes) -> TagList:
    """`json.Unmarshal(body, &TagList{})`."""
    doc = _decode(body)
    if doc is None:
        return TagList("", [])
    if not isinstance(doc, dict):
        raise GoUnmarshalError(f"tag list is not a JSON object: {doc!r}")
    name = go_field(doc, "name")
    if name is not None and not isinstance(name, str):
        raise GoUnmarshalError(f"`name` is not a string: {name!r}")
    return TagList(name or "", _str_list(go_field(doc, "tags"), "`tags`"))


def get_tag_list(resp: Response) -> list[str]:
    """Upstream's `getTagList`: the tags, or [] when the body does not decode."""
    try:
        return unmarshal_tag_list(resp.body).tags
    except GoUnmarshalError:
        return []


@dataclass
class IndexEntry:
    """The fields of an index descriptor the suite reads."""

    digest: str
    annotations: dict[str, str]
    artifact_type: str


def unmarshal_index(body: bytes) -> list[IndexEntry]:
    """`json.Unmarshal(body, &index{})`, returning its `manifests`."""
    doc = _decode(body)
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise GoUnmarshalError(f"index is not a JSON object: {doc!r}")
    entries = go_field(doc, "manifests")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise GoUnmarshalError(f"`manifests` is not an array: {entries!r}")
    out: list[IndexEntry] = []
    for entry in entries:
        if entry is None:
            out.append(IndexEntry("", {}, ""))
            continue
        if not isinstance(entry, dict):
            raise GoUnmarshalError(f"index entry is not an object: {entry!r}")
        dig, art = go_field(entry, "digest"), go_field(entry, "artifactType")
        annotations = go_field(entry, "annotations")
        for value in (dig, art):
            if value is not None and not isinstance(value, str):
                raise GoUnmarshalError(f"index entry field is not a string: {entry!r}")
        if annotations is not None and not (isinstance(annotations, dict)
                                            and all(isinstance(v, str) for v in annotations.values())):
            raise GoUnmarshalError(f"`annotations` is not a string map: {annotations!r}")
        out.append(IndexEntry(dig or "", dict(annotations or {}), art or ""))
    return out

