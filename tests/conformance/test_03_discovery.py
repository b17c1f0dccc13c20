"""Port of upstream `conformance/03_discovery_test.go`: the Content Discovery workflow (tags and referrers).

Specs run in definition order and share `state` (upstream's `numTags` and `tagList` closure variables).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .client import RegistryClient, Response
from .image import MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST
from .suite import (
    ARTIFACT_TYPE_FILTER,
    CONTENT_DISCOVERY,
    DATA,
    EMPTY_JSON_DIGEST,
    ENV_TAG_LIST,
    SETTINGS,
    TEST_TAG_NAME,
    TITLE_CONTENT_DISCOVERY,
    GoUnmarshalError,
    IndexEntry,
    expect,
    expect_status,
    fail,
    get_tag_list,
    go_index,
    run_only_if,
    run_only_if_not,
    skip_if_disabled,
    spec,
    unmarshal_index,
    warn,
)

OCTET_STREAM = "application/octet-stream"


@dataclass
class DiscoveryState:
    """The Content Discovery container's `numTags` (initially 4) and `tagList`."""

    num_tags: int = 4
    tag_list: list[str] = field(default_factory=list)


state = DiscoveryState()


def _push_blob(client: RegistryClient, digest: str, length: str, content: bytes) -> None:
    """POST an upload session, then PUT the whole blob to its Location; expect 2xx."""
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    req = (client.new_request("PUT", resp.relative_location())
           .set_query_param("digest", digest)
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", length)
           .set_body(content))
    resp = client.do(req)
    expect_status(resp, success=True)


def _put_manifest(client: RegistryClient, reference: str, content_type: str, content: bytes) -> Response:
    """PUT a manifest by reference; expect 2xx."""
    req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=reference)
           .set_header("Content-Type", content_type)
           .set_body(content))
    resp = client.do(req)
    expect_status(resp, success=True)
    return resp


def _expect_subject(resp: Response, want: str) -> None:
    """The OCI-Subject response header must name the subject's digest."""
    got = resp.header("OCI-Subject")
    expect(got == want, f"OCI-Subject {got!r} != {want!r}", resp)


def _decode_index(resp: Response) -> list[IndexEntry]:
    try:
        return unmarshal_index(resp.body)
    except GoUnmarshalError as e:
        fail(f"referrers body does not decode as an image index: {e}", resp)


# -- Setup ------------------------------------------------------------------------------------------


@spec(TITLE_CONTENT_DISCOVERY, "Setup", "Populate registry with test blob")
def test_setup_populate_registry_with_test_blob(client: RegistryClient) -> None:
    """Push configs[2]."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    _push_blob(client, DATA.configs[2].digest, DATA.configs[2].content_length, DATA.configs[2].content)


@spec(TITLE_CONTENT_DISCOVERY, "Setup", "Populate registry with test layer")
def test_setup_populate_registry_with_test_layer(client: RegistryClient) -> None:
    """Push the layer."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    _push_blob(client, DATA.layer_blob_digest, DATA.layer_blob_content_length, DATA.layer_blob_data)


@spec(TITLE_CONTENT_DISCOVERY, "Setup", "Populate registry with test tags")
def test_setup_populate_registry_with_test_tags(client: RegistryClient) -> None:
    """Tag manifests[2] as test0..test3, then read the tag list back."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    for i in range(state.num_tags):
        tag = f"test{i}"
        state.tag_list.append(tag)
        _put_manifest(client, tag, MEDIA_TYPE_IMAGE_MANIFEST, DATA.manifests[2].content)
    resp = client.do(client.new_request("GET", "/v2/<name>/tags/list"))
    state.tag_list = get_tag_list(resp)


@spec(TITLE_CONTENT_DISCOVERY, "Setup", "Populate registry with test tags (no push)")
def test_setup_populate_registry_with_test_tags_no_push() -> None:
    """With OCI_TAG_LIST set, take the tags from it instead of pushing."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if_not(SETTINGS.run_content_discovery_setup, "runs only against a pre-existing tag list named by "
                    "OCI_TAG_LIST; this run pushes its own tags")
    state.tag_list = os.environ.get(ENV_TAG_LIST, "").split(",")


@spec(TITLE_CONTENT_DISCOVERY, "Setup", "References setup")
def test_setup_references(client: RegistryClient) -> None:
    """Push the subject manifests[4], five referrers to it (before and after it) and one to manifests[3]."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    subject = DATA.manifests[4].digest

    # Populate registry with empty JSON blob; validate the expected empty JSON blob digest
    expect(DATA.empty_json_descriptor["digest"] == EMPTY_JSON_DIGEST,
           f"empty JSON digest {DATA.empty_json_descriptor['digest']} != {EMPTY_JSON_DIGEST}")
    _push_blob(client, DATA.empty_json_descriptor["digest"], str(DATA.empty_json_descriptor["size"]),
               DATA.empty_json_blob)

    # Populate registry with reference blob before the image manifest is pushed
    _push_blob(client, DATA.test_ref_blob_a_digest, DATA.test_ref_blob_a_length, DATA.test_ref_blob_a)

    # Populate registry with test references manifest (config.MediaType = artifactType)
    resp = _put_manifest(client, DATA.refs_manifest_a_config_artifact_digest, MEDIA_TYPE_IMAGE_MANIFEST,
                         DATA.refs_manifest_a_config_artifact_content)
    _expect_subject(resp, subject)

    # Populate registry with test references manifest (ArtifactType, config.MediaType = emptyJSON)
    resp = _put_manifest(client, DATA.refs_manifest_a_layer_artifact_digest, MEDIA_TYPE_IMAGE_MANIFEST,
                         DATA.refs_manifest_a_layer_artifact_content)
    _expect_subject(resp, subject)

    # Populate registry with test index manifest
    resp = _put_manifest(client, DATA.refs_index_artifact_digest, MEDIA_TYPE_IMAGE_INDEX,
                         DATA.refs_index_artifact_content)
    _expect_subject(resp, subject)

    # Populate registry with test blob and test layer
    _push_blob(client, DATA.configs[4].digest, DATA.configs[4].content_length, DATA.configs[4].content)
    _push_blob(client, DATA.layer_blob_digest, DATA.layer_blob_content_length, DATA.layer_blob_data)

    # Populate registry with test manifest (the subject)
    _put_manifest(client, TEST_TAG_NAME, MEDIA_TYPE_IMAGE_MANIFEST, DATA.manifests[4].content)

    # Populate registry with reference blob after the image manifest is pushed
    _push_blob(client, DATA.test_ref_blob_b_digest, DATA.test_ref_blob_b_length, DATA.test_ref_blob_b)

    # Populate registry with test references manifest (config.MediaType = artifactType)
    resp = _put_manifest(client, DATA.refs_manifest_b_config_artifact_digest, MEDIA_TYPE_IMAGE_MANIFEST,
                         DATA.refs_manifest_b_config_artifact_content)
    _expect_subject(resp, subject)

    # Populate registry with test references manifest (ArtifactType, config.MediaType = emptyJSON)
    resp = _put_manifest(client, DATA.refs_manifest_b_layer_artifact_digest, MEDIA_TYPE_IMAGE_MANIFEST,
                         DATA.refs_manifest_b_layer_artifact_content)
    _expect_subject(resp, subject)

    # Populate registry with test references manifest to a non-existent subject
    resp = _put_manifest(client, DATA.refs_manifest_c_layer_artifact_digest, MEDIA_TYPE_IMAGE_MANIFEST,
                         DATA.refs_manifest_c_layer_artifact_content)
    _expect_subject(resp, DATA.manifests[3].digest)


# -- Test content discovery endpoints (listing tags) ------------------------------------------------

LISTING_TAGS = "Test content discovery endpoints (listing tags)"


@spec(TITLE_CONTENT_DISCOVERY, LISTING_TAGS, "GET request to list tags should yield 200 response")
def test_listing_tags_get_tags_list_200(client: RegistryClient) -> None:
    """GET tags/list; remember the tags and their number."""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = client.do(client.new_request("GET", "/v2/<name>/tags/list"))
    expect_status(resp, 200)
    state.tag_list = get_tag_list(resp)
    state.num_tags = len(state.tag_list)


@spec(TITLE_CONTENT_DISCOVERY, LISTING_TAGS, "GET number of tags should be limitable by `n` query parameter")
def test_listing_tags_limited_by_n(client: RegistryClient) -> None:
    """?n=numTags/2 returns exactly that many tags."""
    skip_if_disabled(CONTENT_DISCOVERY)
    num_results = state.num_tags // 2
    resp = client.do(client.new_request("GET", "/v2/<name>/tags/list").set_query_param("n", str(num_results)))
    expect_status(resp, 200)
    state.tag_list = get_tag_list(resp)
    expect(len(state.tag_list) == num_results, f"got {len(state.tag_list)} tags for n={num_results}", resp)


@spec(TITLE_CONTENT_DISCOVERY, LISTING_TAGS, "GET start of tag is set by `last` query parameter")
def test_listing_tags_start_set_by_last(client: RegistryClient) -> None:
    """?n=numTags/2, then ?n=...&last=<last tag of that page> must answer 200.

    Faithful to upstream: the second response's tags are not decoded, so the length and membership checks
    run on the first page (they hold whenever the previous spec's did).
    """
    skip_if_disabled(CONTENT_DISCOVERY)
    num_results = state.num_tags // 2
    resp = client.do(client.new_request("GET", "/v2/<name>/tags/list").set_query_param("n", str(num_results)))
    state.tag_list = get_tag_list(resp)
    last = go_index(state.tag_list, num_results - 1)
    req = (client.new_request("GET", "/v2/<name>/tags/list")
           .set_query_param("n", str(num_results))
           .set_query_param("last", last))
    resp = client.do(req)
    expect_status(resp, 200)
    expect(len(state.tag_list) <= num_results, f"{len(state.tag_list)} tags > n={num_results}", resp)
    expect(go_index(state.tag_list, num_results - 1) in state.tag_list, "tag list lost its last tag", resp)


# -- Test content discovery endpoints (listing references) ------------------------------------------

LISTING_REFERENCES = "Test content discovery endpoints (listing references)"


def _get_referrers(client: RegistryClient, digest: str, artifact_type: str = "") -> Response:
    req = client.new_request("GET", "/v2/<name>/referrers/<digest>", digest=digest)
    if artifact_type:
        req.set_query_param("artifactType", artifact_type)
    resp = client.do(req)
    expect_status(resp, 200)
    content_type = resp.header("Content-Type")
    expect(content_type == MEDIA_TYPE_IMAGE_INDEX,
           f"Content-Type {content_type!r} != {MEDIA_TYPE_IMAGE_INDEX!r}", resp)
    return resp


def _expect_annotations(entries: list[IndexEntry], resp: Response) -> None:
    """Each referrer descriptor carries exactly the one annotation its manifest has."""
    key = DATA.test_annotation_key
    for entry in entries:
        expect(len(entry.annotations) == 1, f"{entry.digest}: annotations {entry.annotations!r}", resp)
        want = DATA.test_annotation_values.get(entry.digest, "")
        got = entry.annotations.get(key, "")
        expect(got == want, f"{entry.digest}: annotation {key}={got!r}, want {want!r}", resp)


@spec(TITLE_CONTENT_DISCOVERY, LISTING_REFERENCES,
      "GET request to nonexistent blob should result in empty 200 response")
def test_listing_references_nonexistent_digest_empty_200(client: RegistryClient) -> None:
    """Referrers of an unknown digest: 200 with an empty image index."""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = _get_referrers(client, DATA.dummy_digest)
    entries = _decode_index(resp)
    expect(len(entries) == 0, f"expected no referrers, got {len(entries)}", resp)


@spec(TITLE_CONTENT_DISCOVERY, LISTING_REFERENCES, "GET request to existing blob should yield 200")
def test_listing_references_existing_subject_200(client: RegistryClient) -> None:
    """Referrers of manifests[4]: the five referrers pushed in setup, with their annotations."""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = _get_referrers(client, DATA.manifests[4].digest)
    entries = _decode_index(resp)
    expect(len(entries) == 5, f"expected 5 referrers, got {len(entries)}", resp)
    expect(entries[0].digest != entries[1].digest, "the first two referrers are the same manifest", resp)
    _expect_annotations(entries, resp)


@spec(TITLE_CONTENT_DISCOVERY, LISTING_REFERENCES,
      "GET request to existing blob with filter should yield 200")
def test_listing_references_existing_subject_with_filter_200(client: RegistryClient) -> None:
    """?artifactType=: 2 referrers with OCI-Filters-Applied: artifactType, or all 5 (and a warning)."""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = _get_referrers(client, DATA.manifests[4].digest, DATA.test_ref_artifact_type_a)
    entries = _decode_index(resp)
    # also check resp header "OCI-Filters-Applied: artifactType" denoting that an artifactType filter
    # was applied
    if applied := resp.header("OCI-Filters-Applied"):
        expect(len(entries) == 2, f"expected 2 filtered referrers, got {len(entries)}", resp)
        expect(applied == ARTIFACT_TYPE_FILTER,
               f"OCI-Filters-Applied {applied!r} != {ARTIFACT_TYPE_FILTER!r}", resp)
        _expect_annotations(entries, resp)
    else:
        expect(len(entries) == 5, f"expected 5 (unfiltered) referrers, got {len(entries)}", resp)
        _expect_annotations(entries, resp)
        warn("filtering by artifact-type is not implemented")


@spec(TITLE_CONTENT_DISCOVERY, LISTING_REFERENCES, "GET request to missing manifest should yield 200")
def test_listing_references_missing_subject_200(client: RegistryClient) -> None:
    """Referrers of manifests[3], never pushed here: just the C referrer."""
    skip_if_disabled(CONTENT_DISCOVERY)
    resp = _get_referrers(client, DATA.manifests[3].digest)
    entries = _decode_index(resp)
    expect(len(entries) == 1, f"expected 1 referrer, got {len(entries)}", resp)
    expect(entries[0].digest == DATA.refs_manifest_c_layer_artifact_digest,
           f"referrer {entries[0].digest} != {DATA.refs_manifest_c_layer_artifact_digest}", resp)


# -- Teardown ---------------------------------------------------------------------------------------


def _delete_tolerant(client: RegistryClient, method_path: str, **ref: str) -> None:
    """DELETE; 2xx, 405 and 404 all pass."""
    resp = client.do(client.new_request("DELETE", method_path, **ref))
    expect_status(resp, 405, 404, success=True)


def _delete_created_manifests_and_tags(client: RegistryClient) -> None:
    references = [
        DATA.refs_index_artifact_digest,
        DATA.manifests[2].digest,
        DATA.manifests[4].digest,
        DATA.refs_manifest_a_config_artifact_digest,
        DATA.refs_manifest_a_layer_artifact_digest,
        TEST_TAG_NAME,
        DATA.refs_manifest_b_config_artifact_digest,
        DATA.refs_manifest_b_layer_artifact_digest,
        DATA.refs_manifest_c_layer_artifact_digest,
    ]
    for ref in references:
        _delete_tolerant(client, "/v2/<name>/manifests/<digest>", digest=ref)


if SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_CONTENT_DISCOVERY, "Teardown", "Delete created manifest & associated tags")
    def test_teardown_delete_created_manifests_and_tags(client: RegistryClient) -> None:
        """DELETE every manifest and the tag pushed above: 2xx, 405 or 404."""
        skip_if_disabled(CONTENT_DISCOVERY)
        run_only_if(SETTINGS.run_content_discovery_setup)
        _delete_created_manifests_and_tags(client)


@spec(TITLE_CONTENT_DISCOVERY, "Teardown", "Delete config blob created in tests")
def test_teardown_delete_config_blob(client: RegistryClient) -> None:
    """DELETE configs[2]: 2xx or 405."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.configs[2].digest))
    expect_status(resp, 405, success=True)


@spec(TITLE_CONTENT_DISCOVERY, "Teardown", "Delete layer blob created in setup")
def test_teardown_delete_layer_blob(client: RegistryClient) -> None:
    """DELETE the layer: 2xx or 405."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.layer_blob_digest))
    expect_status(resp, 405, success=True)


if not SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_CONTENT_DISCOVERY, "Teardown", "Delete created manifest & associated tags")
    def test_teardown_delete_created_manifests_and_tags_after_blobs(client: RegistryClient) -> None:
        """DELETE every manifest and the tag pushed above (after the blobs): 2xx, 405 or 404."""
        skip_if_disabled(CONTENT_DISCOVERY)
        run_only_if(SETTINGS.run_content_discovery_setup)
        _delete_created_manifests_and_tags(client)


def _delete_reference_manifests(client: RegistryClient) -> None:
    manifests_path, digest_path = "/v2/<name>/manifests/<reference>", "/v2/<name>/manifests/<digest>"
    _delete_tolerant(client, manifests_path, reference=DATA.refs_index_artifact_digest)
    _delete_tolerant(client, manifests_path, reference=DATA.refs_manifest_a_config_artifact_digest)
    _delete_tolerant(client, manifests_path, reference=DATA.refs_manifest_a_layer_artifact_digest)
    _delete_tolerant(client, digest_path, digest=DATA.manifests[4].digest)
    _delete_tolerant(client, manifests_path, reference=DATA.refs_manifest_b_config_artifact_digest)
    _delete_tolerant(client, manifests_path, reference=DATA.refs_manifest_b_layer_artifact_digest)


@spec(TITLE_CONTENT_DISCOVERY, "Teardown", "References teardown")
def test_teardown_references(client: RegistryClient) -> None:
    """DELETE the referrers, the subject and their blobs (2xx, 405 or 404), in the configured order."""
    skip_if_disabled(CONTENT_DISCOVERY)
    run_only_if(SETTINGS.run_content_discovery_setup)
    if SETTINGS.delete_manifest_before_blobs:
        _delete_reference_manifests(client)
    blob_path = "/v2/<name>/blobs/<digest>"
    _delete_tolerant(client, blob_path, digest=DATA.configs[4].digest)  # config blob created in setup
    _delete_tolerant(client, blob_path, digest=DATA.test_ref_blob_a_digest)  # reference blobs
    _delete_tolerant(client, blob_path, digest=DATA.test_ref_blob_b_digest)
    _delete_tolerant(client, blob_path, digest=DATA.empty_json_descriptor["digest"])  # empty JSON blob
    if not SETTINGS.delete_manifest_before_blobs:
        _delete_reference_manifests(client)
