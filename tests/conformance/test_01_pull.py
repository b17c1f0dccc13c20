"""Port of upstream `conformance/01_pull_test.go`: the Pull workflow.

Specs run in definition order and share `state`, as the Ginkgo container's closure variables are shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .client import RegistryClient
from .suite import (
    DATA,
    ENV_TAG_NAME,
    ERROR_CODES,
    PULL,
    SETTINGS,
    TEST_TAG_NAME,
    TITLE_PULL,
    expect,
    expect_status,
    fail,
    run_only_if,
    run_only_if_not,
    skip_if_disabled,
    spec,
)

MANIFEST_V1 = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class PullState:
    """The Pull container's `var tag string`."""

    tag: str = ""


state = PullState()


def _push_blob(client: RegistryClient, digest: str, length: str, content: bytes) -> None:
    """POST an upload session, then PUT the whole blob to its Location; expect 2xx."""
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    req = (client.new_request("PUT", resp.relative_location())
           .set_query_param("digest", digest)
           .set_header("Content-Type", "application/octet-stream")
           .set_header("Content-Length", length)
           .set_body(content))
    resp = client.do(req)
    expect_status(resp, success=True)


# -- Setup ------------------------------------------------------------------------------------------


@spec(TITLE_PULL, "Setup", "Populate registry with test blob")
def test_setup_populate_registry_with_test_blob_config0(client: RegistryClient) -> None:
    """Push configs[0] (monolithic POST + PUT)."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _push_blob(client, DATA.configs[0].digest, DATA.configs[0].content_length, DATA.configs[0].content)


@spec(TITLE_PULL, "Setup", "Populate registry with test blob")
def test_setup_populate_registry_with_test_blob_config1(client: RegistryClient) -> None:
    """Push configs[1] (monolithic POST + PUT)."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _push_blob(client, DATA.configs[1].digest, DATA.configs[1].content_length, DATA.configs[1].content)


@spec(TITLE_PULL, "Setup", "Populate registry with test layer")
def test_setup_populate_registry_with_test_layer(client: RegistryClient) -> None:
    """Push the gzip'd tar layer."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _push_blob(client, DATA.layer_blob_digest, DATA.layer_blob_content_length, DATA.layer_blob_data)


@spec(TITLE_PULL, "Setup", "Populate registry with test manifest")
def test_setup_populate_registry_with_test_manifest_by_tag(client: RegistryClient) -> None:
    """PUT manifests[0] under the tag `tagtest0`."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    state.tag = TEST_TAG_NAME
    req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=state.tag)
           .set_header("Content-Type", MANIFEST_V1)
           .set_body(DATA.manifests[0].content))
    resp = client.do(req)
    expect_status(resp, success=True)


@spec(TITLE_PULL, "Setup", "Populate registry with test manifest")
def test_setup_populate_registry_with_test_manifest_by_digest(client: RegistryClient) -> None:
    """PUT manifests[1] by its digest."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=DATA.manifests[1].digest)
           .set_header("Content-Type", MANIFEST_V1)
           .set_body(DATA.manifests[1].content))
    resp = client.do(req)
    expect_status(resp, success=True)


@spec(TITLE_PULL, "Setup", "Get tag name from environment")
def test_setup_get_tag_name_from_environment() -> None:
    """With setup disabled by OCI_TAG_NAME/OCI_MANIFEST_DIGEST/OCI_BLOB_DIGEST, pull that tag."""
    skip_if_disabled(PULL)
    run_only_if_not(SETTINGS.run_pull_setup, "runs only against pre-existing content named by OCI_TAG_NAME, "
                    "OCI_MANIFEST_DIGEST and OCI_BLOB_DIGEST; this run pushes its own")
    tmp = os.environ.get(ENV_TAG_NAME, "")
    if tmp:
        state.tag = tmp


# -- Pull blobs -------------------------------------------------------------------------------------


@spec(TITLE_PULL, "Pull blobs", "HEAD request to nonexistent blob should result in 404 response")
def test_pull_blobs_head_nonexistent_blob_404(client: RegistryClient) -> None:
    """HEAD a blob that was never pushed."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("HEAD", "/v2/<name>/blobs/<digest>", digest=DATA.dummy_digest))
    expect_status(resp, 404)


@spec(TITLE_PULL, "Pull blobs", "HEAD request to existing blob should yield 200")
def test_pull_blobs_head_existing_blob_200(client: RegistryClient) -> None:
    """HEAD configs[0]; a Docker-Content-Digest header, when sent, must name it."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("HEAD", "/v2/<name>/blobs/<digest>", digest=DATA.configs[0].digest))
    expect_status(resp, 200)
    if h := resp.header("Docker-Content-Digest"):
        want = DATA.configs[0].digest
        expect(h == want, f"Docker-Content-Digest {h!r} != {want!r}", resp)


@spec(TITLE_PULL, "Pull blobs", "GET nonexistent blob should result in 404 response")
def test_pull_blobs_get_nonexistent_blob_404(client: RegistryClient) -> None:
    """GET a blob that was never pushed."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.dummy_digest))
    expect_status(resp, 404)


@spec(TITLE_PULL, "Pull blobs", "GET request to existing blob URL should yield 200")
def test_pull_blobs_get_existing_blob_200(client: RegistryClient) -> None:
    """GET configs[0]."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.configs[0].digest))
    expect_status(resp, 200)


# -- Pull manifests ---------------------------------------------------------------------------------


@spec(TITLE_PULL, "Pull manifests", "HEAD request to nonexistent manifest should return 404")
def test_pull_manifests_head_nonexistent_manifest_404(client: RegistryClient) -> None:
    """HEAD the invalid reference `.INVALID_MANIFEST_NAME`."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("HEAD", "/v2/<name>/manifests/<reference>",
                                        reference=DATA.nonexistent_manifest))
    expect_status(resp, 404)


@spec(TITLE_PULL, "Pull manifests", "HEAD request to manifest[0] path (digest) should yield 200 response")
def test_pull_manifests_head_manifest0_by_digest_200(client: RegistryClient) -> None:
    """HEAD manifests[0] by digest."""
    skip_if_disabled(PULL)
    req = (client.new_request("HEAD", "/v2/<name>/manifests/<digest>", digest=DATA.manifests[0].digest)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)
    if h := resp.header("Docker-Content-Digest"):
        expect(h == DATA.manifests[0].digest, f"Docker-Content-Digest {h!r} != {DATA.manifests[0].digest!r}",
               resp)


@spec(TITLE_PULL, "Pull manifests", "HEAD request to manifest[1] path (digest) should yield 200 response")
def test_pull_manifests_head_manifest1_by_digest_200(client: RegistryClient) -> None:
    """HEAD manifests[1] by digest."""
    skip_if_disabled(PULL)
    req = (client.new_request("HEAD", "/v2/<name>/manifests/<digest>", digest=DATA.manifests[1].digest)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)
    if h := resp.header("Docker-Content-Digest"):
        expect(h == DATA.manifests[1].digest, f"Docker-Content-Digest {h!r} != {DATA.manifests[1].digest!r}",
               resp)


@spec(TITLE_PULL, "Pull manifests", "HEAD request to manifest path (tag) should yield 200 response")
def test_pull_manifests_head_manifest_by_tag_200(client: RegistryClient) -> None:
    """HEAD the tag; its digest must be manifests[0]'s."""
    skip_if_disabled(PULL)
    expect(state.tag != "", "tag is empty (setup did not run)")
    req = (client.new_request("HEAD", "/v2/<name>/manifests/<reference>", reference=state.tag)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)
    if h := resp.header("Docker-Content-Digest"):
        expect(h == DATA.manifests[0].digest, f"Docker-Content-Digest {h!r} != {DATA.manifests[0].digest!r}",
               resp)


@spec(TITLE_PULL, "Pull manifests", "GET nonexistent manifest should return 404")
def test_pull_manifests_get_nonexistent_manifest_404(client: RegistryClient) -> None:
    """GET the invalid reference `.INVALID_MANIFEST_NAME`."""
    skip_if_disabled(PULL)
    resp = client.do(client.new_request("GET", "/v2/<name>/manifests/<reference>",
                                        reference=DATA.nonexistent_manifest))
    expect_status(resp, 404)


@spec(TITLE_PULL, "Pull manifests", "GET request to manifest[0] path (digest) should yield 200 response")
def test_pull_manifests_get_manifest0_by_digest_200(client: RegistryClient) -> None:
    """GET manifests[0] by digest."""
    skip_if_disabled(PULL)
    req = (client.new_request("GET", "/v2/<name>/manifests/<digest>", digest=DATA.manifests[0].digest)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)


@spec(TITLE_PULL, "Pull manifests", "GET request to manifest[1] path (digest) should yield 200 response")
def test_pull_manifests_get_manifest1_by_digest_200(client: RegistryClient) -> None:
    """GET manifests[1] by digest."""
    skip_if_disabled(PULL)
    req = (client.new_request("GET", "/v2/<name>/manifests/<digest>", digest=DATA.manifests[1].digest)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)


@spec(TITLE_PULL, "Pull manifests", "GET request to manifest path (tag) should yield 200 response")
def test_pull_manifests_get_manifest_by_tag_200(client: RegistryClient) -> None:
    """GET the tag."""
    skip_if_disabled(PULL)
    expect(state.tag != "", "tag is empty (setup did not run)")
    req = (client.new_request("GET", "/v2/<name>/manifests/<reference>", reference=state.tag)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)


# -- Error codes ------------------------------------------------------------------------------------


@spec(TITLE_PULL, "Error codes", "400 response body should contain OCI-conforming JSON message")
def test_error_codes_400_body_is_oci_error_json(client: RegistryClient) -> None:
    """GET `sha256:totallywrong`: 404, or 400 whose first error code is a spec'd one.

    Upstream also sets a Content-Type and a body on this GET; resty drops bodies on GET, so only the
    header goes out, as here.
    """
    skip_if_disabled(PULL)
    req = (client.new_request("GET", "/v2/<name>/manifests/<reference>", reference="sha256:totallywrong")
           .set_header("Content-Type", MANIFEST_V1)
           .set_body(DATA.invalid_manifest_content))
    resp = client.do(req)
    expect_status(resp, 400, 404)
    if resp.status == 400:
        try:
            errors = resp.errors()
        except ValueError as e:
            fail(f"400 body is not an OCI error document: {e}", resp)
        expect(len(errors) > 0, "400 body has no errors", resp)
        expect(errors[0].code in ERROR_CODES, f"error code {errors[0].code!r} is not a spec'd code", resp)


# -- Teardown ---------------------------------------------------------------------------------------


def _delete_manifest(client: RegistryClient, digest: str) -> None:
    resp = client.do(client.new_request("DELETE", "/v2/<name>/manifests/<digest>", digest=digest))
    expect_status(resp, 405, success=True)


def _delete_blob(client: RegistryClient, digest: str) -> None:
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=digest))
    expect_status(resp, 404, 405, success=True)


if SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_PULL, "Teardown", "Delete manifest[0] created in setup")
    def test_teardown_delete_manifest0(client: RegistryClient) -> None:
        """DELETE manifests[0]: 2xx or 405."""
        skip_if_disabled(PULL)
        run_only_if(SETTINGS.run_pull_setup)
        _delete_manifest(client, DATA.manifests[0].digest)

    @spec(TITLE_PULL, "Teardown", "Delete manifest[1] created in setup")
    def test_teardown_delete_manifest1(client: RegistryClient) -> None:
        """DELETE manifests[1]: 2xx or 405."""
        skip_if_disabled(PULL)
        run_only_if(SETTINGS.run_pull_setup)
        _delete_manifest(client, DATA.manifests[1].digest)


@spec(TITLE_PULL, "Teardown", "Delete config[0] blob created in setup")
def test_teardown_delete_config0_blob(client: RegistryClient) -> None:
    """DELETE configs[0]: 2xx, 404 or 405."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _delete_blob(client, DATA.configs[0].digest)


@spec(TITLE_PULL, "Teardown", "Delete config[1] blob created in setup")
def test_teardown_delete_config1_blob(client: RegistryClient) -> None:
    """DELETE configs[1]: 2xx, 404 or 405."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _delete_blob(client, DATA.configs[1].digest)


@spec(TITLE_PULL, "Teardown", "Delete layer blob created in setup")
def test_teardown_delete_layer_blob(client: RegistryClient) -> None:
    """DELETE the layer: 2xx, 404 or 405."""
    skip_if_disabled(PULL)
    run_only_if(SETTINGS.run_pull_setup)
    _delete_blob(client, DATA.layer_blob_digest)


if not SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_PULL, "Teardown", "Delete manifest[0] created in setup")
    def test_teardown_delete_manifest0_after_blobs(client: RegistryClient) -> None:
        """DELETE manifests[0] (after the blobs): 2xx or 405."""
        skip_if_disabled(PULL)
        run_only_if(SETTINGS.run_pull_setup)
        _delete_manifest(client, DATA.manifests[0].digest)

    @spec(TITLE_PULL, "Teardown", "Delete manifest[1] created in setup")
    def test_teardown_delete_manifest1_after_blobs(client: RegistryClient) -> None:
        """DELETE manifests[1] (after the blobs): 2xx or 405."""
        skip_if_disabled(PULL)
        run_only_if(SETTINGS.run_pull_setup)
        _delete_manifest(client, DATA.manifests[1].digest)
