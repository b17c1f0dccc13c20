"""Port of upstream `conformance/04_management_test.go`: the Content Management workflow (deletion).

Specs run in definition order and share `state` (upstream's `tagToDelete`, `numTags` and
`blobDeleteAllowed` closure variables). Upstream has no teardown for this workflow.
"""

from __future__ import annotations

from dataclasses import dataclass

from .client import RegistryClient
from .image import MEDIA_TYPE_IMAGE_MANIFEST
from .suite import (
    CONTENT_MANAGEMENT,
    DATA,
    ERROR_CODES,
    SETTINGS,
    TITLE_CONTENT_MANAGEMENT,
    UNSUPPORTED,
    GoUnmarshalError,
    expect,
    expect_status,
    fail,
    run_only_if,
    skip_if_disabled,
    spec,
    unmarshal_tag_list,
)

DEFAULT_TAG_NAME = "tagtest0"
OCTET_STREAM = "application/octet-stream"


@dataclass
class ManagementState:
    """The Content Management container's closure variables."""

    tag_to_delete: str = ""
    num_tags: int = 0
    blob_delete_allowed: bool = True


state = ManagementState()


def _tag_count(client: RegistryClient) -> int:
    """GET tags/list: 200 and a body that decodes as a TagList; the number of tags."""
    resp = client.do(client.new_request("GET", "/v2/<name>/tags/list"))
    expect_status(resp, 200)
    try:
        return len(unmarshal_tag_list(resp.body).tags)
    except GoUnmarshalError as e:
        fail(f"tag list does not decode: {e}", resp)


# -- Setup ------------------------------------------------------------------------------------------


@spec(TITLE_CONTENT_MANAGEMENT, "Setup", "Populate registry with test config blob")
def test_setup_populate_registry_with_test_config_blob(client: RegistryClient) -> None:
    """Push configs[3]."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    req = (client.new_request("PUT", resp.relative_location())
           .set_header("Content-Length", DATA.configs[3].content_length)
           .set_header("Content-Type", OCTET_STREAM)
           .set_query_param("digest", DATA.configs[3].digest)
           .set_body(DATA.configs[3].content))
    resp = client.do(req)
    expect_status(resp, success=True)


@spec(TITLE_CONTENT_MANAGEMENT, "Setup", "Populate registry with test layer")
def test_setup_populate_registry_with_test_layer(client: RegistryClient) -> None:
    """Push the layer."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    req = (client.new_request("PUT", resp.relative_location())
           .set_query_param("digest", DATA.layer_blob_digest)
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", DATA.layer_blob_content_length)
           .set_body(DATA.layer_blob_data))
    resp = client.do(req)
    expect_status(resp, success=True)


@spec(TITLE_CONTENT_MANAGEMENT, "Setup", "Populate registry with test tag")
def test_setup_populate_registry_with_test_tag(client: RegistryClient) -> None:
    """Tag manifests[3] as `tagtest0`."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    state.tag_to_delete = DEFAULT_TAG_NAME
    req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=state.tag_to_delete)
           .set_header("Content-Type", MEDIA_TYPE_IMAGE_MANIFEST)
           .set_body(DATA.manifests[3].content))
    resp = client.do(req)
    expect_status(resp, success=True)


@spec(TITLE_CONTENT_MANAGEMENT, "Setup", "Check how many tags there are before anything gets deleted")
def test_setup_count_tags_before_deletion(client: RegistryClient) -> None:
    """Remember the number of tags."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    state.num_tags = _tag_count(client)


# -- Manifest delete --------------------------------------------------------------------------------


@spec(TITLE_CONTENT_MANAGEMENT, "Manifest delete",
      "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)")
def test_manifest_delete_by_tag_202_or_400_405(client: RegistryClient) -> None:
    """DELETE by tag: 202, 405, or 400 whose first error code is UNSUPPORTED."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/manifests/<reference>",
                                        reference=state.tag_to_delete))
    expect_status(resp, 400, 202, 405)
    if resp.status == 400:
        try:
            errors = resp.errors()
        except ValueError as e:
            fail(f"400 body is not an OCI error document: {e}", resp)
        expect(len(errors) > 0, "400 body has no errors", resp)
        expect(errors[0].code == ERROR_CODES[UNSUPPORTED], f"error code {errors[0].code!r} != 'UNSUPPORTED'",
               resp)


@spec(TITLE_CONTENT_MANAGEMENT, "Manifest delete",
      "DELETE request to manifest (digest) should yield 202 response unless already deleted")
def test_manifest_delete_by_digest_202_or_404(client: RegistryClient) -> None:
    """DELETE manifests[3] by digest: 202, or 404 if the tag delete already removed it."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/manifests/<digest>",
                                        digest=DATA.manifests[3].digest))
    # In the case that the previous request was accepted, this may or may not fail (which is ok)
    expect_status(resp, 202, 404)


@spec(TITLE_CONTENT_MANAGEMENT, "Manifest delete",
      "GET request to deleted manifest URL should yield 404 response, unless delete is disallowed")
def test_manifest_delete_get_deleted_manifest_404(client: RegistryClient) -> None:
    """GET manifests[3] by digest: 404 (or 200 where deletion is disallowed)."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    resp = client.do(client.new_request("GET", "/v2/<name>/manifests/<digest>",
                                        digest=DATA.manifests[3].digest))
    expect_status(resp, 404, 200)


@spec(TITLE_CONTENT_MANAGEMENT, "Manifest delete",
      "GET request to tags list should reflect manifest deletion")
def test_manifest_delete_tags_list_reflects_deletion(client: RegistryClient) -> None:
    """There must now be fewer tags than before."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    count = _tag_count(client)
    expect(count < state.num_tags, f"{count} tags after deletion, {state.num_tags} before")


# -- Blob delete ------------------------------------------------------------------------------------


@spec(TITLE_CONTENT_MANAGEMENT, "Blob delete", "DELETE request to blob URL should yield 202 response")
def test_blob_delete_202(client: RegistryClient) -> None:
    """DELETE configs[3] then the layer: 202, 404 or 405; a 405 on the layer disables the next check."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    # config blob
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.configs[3].digest))
    expect_status(resp, 202, 404, 405)
    # layer blob
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.layer_blob_digest))
    expect_status(resp, 202, 404, 405)
    if resp.status == 405:
        state.blob_delete_allowed = False


@spec(TITLE_CONTENT_MANAGEMENT, "Blob delete", "GET request to deleted blob URL should yield 404 response")
def test_blob_delete_get_deleted_blob_404(client: RegistryClient) -> None:
    """GET configs[3]: 404."""
    skip_if_disabled(CONTENT_MANAGEMENT)
    run_only_if(SETTINGS.run_content_management_setup)
    run_only_if(state.blob_delete_allowed)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.configs[3].digest))
    expect_status(resp, 404)


# -- Teardown: upstream has none ("TODO: delete blob+tag?") -----------------------------------------
