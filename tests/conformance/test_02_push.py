"""Port of upstream `conformance/02_push_test.go`: the Push workflow.

Specs run in definition order and share `state` (upstream's `lastResponse`, `prevResponse` and
`emptyLayerManifestRef` closure variables); a spec that fails before assigning leaves the previous value,
exactly as in Go.
"""

from __future__ import annotations

from dataclasses import dataclass

from .client import RegistryClient, Response
from .suite import (
    DATA,
    EMPTY_LAYER_TEST_TAG,
    PUSH,
    SETTINGS,
    TITLE_PUSH,
    expect,
    expect_status,
    fail,
    run_only_if,
    run_only_if_not,
    skip_if_disabled,
    spec,
    warn,
)

MANIFEST_V1 = "application/vnd.oci.image.manifest.v1+json"
OCTET_STREAM = "application/octet-stream"


@dataclass
class PushState:
    """The Push container's closure variables."""

    last_response: Response | None = None
    prev_response: Response | None = None
    empty_layer_manifest_ref: str = ""


state = PushState()


def _last() -> Response:
    """`lastResponse`, which Go would dereference (a nil pointer panics and fails the spec)."""
    if state.last_response is None:
        fail("lastResponse is nil (an earlier spec failed)")
    return state.last_response


def _prev() -> Response:
    """`prevResponse`, likewise."""
    if state.prev_response is None:
        fail("prevResponse is nil (an earlier spec failed)")
    return state.prev_response


# -- Setup: upstream has none for push --------------------------------------------------------------

# -- Blob Upload Streamed ---------------------------------------------------------------------------


@spec(TITLE_PUSH, "Blob Upload Streamed", "PATCH request with blob in body should yield 202 response")
def test_blob_upload_streamed_patch_blob_202(client: RegistryClient) -> None:
    """POST a session, PATCH testBlobA in one piece without Content-Range."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    expect(resp.header("Location") != "", "POST response has no Location", resp)
    req = (client.new_request("PATCH", resp.relative_location())
           .set_header("Content-Type", OCTET_STREAM)
           .set_body(DATA.test_blob_a))
    resp = client.do(req)
    expect_status(resp, 202)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Streamed", "PUT request to session URL with digest should yield 201 response")
def test_blob_upload_streamed_put_digest_201(client: RegistryClient) -> None:
    """Close the streamed session with a body-less PUT ?digest=."""
    skip_if_disabled(PUSH)
    last = _last()
    req = (client.new_request("PUT", last.relative_location())
           .set_query_param("digest", DATA.test_blob_a_digest)
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", DATA.test_blob_a_length))
    resp = client.do(req)
    expect_status(resp, 201)
    expect(resp.header("Location") != "", "PUT response has no Location", resp)


# -- Blob Upload Monolithic -------------------------------------------------------------------------


@spec(TITLE_PUSH, "Blob Upload Monolithic", "GET nonexistent blob should result in 404 response")
def test_blob_upload_monolithic_get_nonexistent_blob_404(client: RegistryClient) -> None:
    """GET a blob that was never pushed."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.dummy_digest))
    expect_status(resp, 404)


@spec(TITLE_PUSH, "Blob Upload Monolithic", "POST request with digest and blob should yield a 201 or 202")
def test_blob_upload_monolithic_post_digest_and_blob_201_or_202(client: RegistryClient) -> None:
    """Single-request POST ?digest= with configs[1] as body."""
    skip_if_disabled(PUSH)
    req = (client.new_request("POST", "/v2/<name>/blobs/uploads/")
           .set_header("Content-Length", DATA.configs[1].content_length)
           .set_header("Content-Type", OCTET_STREAM)
           .set_query_param("digest", DATA.configs[1].digest)
           .set_body(DATA.configs[1].content))
    resp = client.do(req)
    expect(resp.header("Location") != "", "POST response has no Location", resp)
    expect_status(resp, 201, 202)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Monolithic",
      "GET request to blob URL from prior request should yield 200 or 404 based on response code")
def test_blob_upload_monolithic_get_blob_200_or_404(client: RegistryClient) -> None:
    """After a 202 (session opened, blob ignored) configs[1] must be 404, after a 201 it must be 200."""
    skip_if_disabled(PUSH)
    last = _last()
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.configs[1].digest))
    if last.status == 202:
        expect_status(resp, 404)
    else:
        expect_status(resp, 200)


@spec(TITLE_PUSH, "Blob Upload Monolithic", "POST request should yield a session ID")
def test_blob_upload_monolithic_post_session_202(client: RegistryClient) -> None:
    """POST opens an upload session."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    expect_status(resp, 202)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Monolithic", "PUT upload of a blob should yield a 201 Response")
def test_blob_upload_monolithic_put_blob_201(client: RegistryClient) -> None:
    """PUT configs[1] to the session."""
    skip_if_disabled(PUSH)
    req = (client.new_request("PUT", _last().relative_location())
           .set_header("Content-Length", DATA.configs[1].content_length)
           .set_header("Content-Type", OCTET_STREAM)
           .set_query_param("digest", DATA.configs[1].digest)
           .set_body(DATA.configs[1].content))
    resp = client.do(req)
    expect(resp.header("Location") != "", "PUT response has no Location", resp)
    expect_status(resp, 201)


@spec(TITLE_PUSH, "Blob Upload Monolithic", "GET request to existing blob should yield 200 response")
def test_blob_upload_monolithic_get_existing_blob_200(client: RegistryClient) -> None:
    """GET configs[1]."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.configs[1].digest))
    expect_status(resp, 200)


@spec(TITLE_PUSH, "Blob Upload Monolithic", "PUT upload of a layer blob should yield a 201 Response")
def test_blob_upload_monolithic_put_layer_201(client: RegistryClient) -> None:
    """POST a session, PUT the layer."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("POST", "/v2/<name>/blobs/uploads/"))
    req = (client.new_request("PUT", resp.relative_location())
           .set_header("Content-Length", DATA.layer_blob_content_length)
           .set_header("Content-Type", OCTET_STREAM)
           .set_query_param("digest", DATA.layer_blob_digest)
           .set_body(DATA.layer_blob_data))
    resp = client.do(req)
    expect(resp.header("Location") != "", "PUT response has no Location", resp)
    expect_status(resp, 201)


@spec(TITLE_PUSH, "Blob Upload Monolithic", "GET request to existing layer should yield 200 response")
def test_blob_upload_monolithic_get_existing_layer_200(client: RegistryClient) -> None:
    """GET the layer."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("GET", "/v2/<name>/blobs/<digest>", digest=DATA.layer_blob_digest))
    expect_status(resp, 200)


# -- Blob Upload Chunked ----------------------------------------------------------------------------


@spec(TITLE_PUSH, "Blob Upload Chunked", "Out-of-order blob upload should return 416")
def test_blob_upload_chunked_out_of_order_416(client: RegistryClient) -> None:
    """PATCH chunk 2 first; honours OCI-Chunk-Min-Length by rebuilding the chunked blob."""
    skip_if_disabled(PUSH)
    req = client.new_request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
    resp = client.do(req)
    expect(resp.header("Location") != "", "POST response has no Location", resp)

    # rebuild the chunked blob if the registry's minimum chunk size is above our chunk size
    chunked = DATA.chunked
    if min_size_str := resp.header("OCI-Chunk-Min-Length"):
        try:
            min_size = int(min_size_str)  # Go's strconv.Atoi
        except ValueError:
            fail(f"OCI-Chunk-Min-Length {min_size_str!r} is not an integer", resp)
        if min_size > len(chunked.chunk1):
            chunked.setup(min_size * 2 - 2, DATA.seed)

    req = (client.new_request("PATCH", resp.relative_location())
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", chunked.chunk2_length)
           .set_header("Content-Range", chunked.chunk2_range)
           .set_body(chunked.chunk2))
    resp = client.do(req)
    expect_status(resp, 416)


@spec(TITLE_PUSH, "Blob Upload Chunked", "PATCH request with first chunk should return 202")
def test_blob_upload_chunked_patch_first_chunk_202(client: RegistryClient) -> None:
    """POST a session, PATCH chunk 1 with Content-Range; Range must echo it."""
    skip_if_disabled(PUSH)
    chunked = DATA.chunked
    req = client.new_request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
    resp = client.do(req)
    expect(resp.header("Location") != "", "POST response has no Location", resp)
    state.prev_response = resp
    req = (client.new_request("PATCH", resp.relative_location())
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", chunked.chunk1_length)
           .set_header("Content-Range", chunked.chunk1_range)
           .set_body(chunked.chunk1))
    resp = client.do(req)
    expect_status(resp, 202)
    expect(resp.header("Range") == chunked.chunk1_range,
           f"Range {resp.header('Range')!r} != {chunked.chunk1_range!r}", resp)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Chunked", "Retry previous blob chunk should return 416")
def test_blob_upload_chunked_retry_previous_chunk_416(client: RegistryClient) -> None:
    """PATCH chunk 1 again at the session's first Location."""
    skip_if_disabled(PUSH)
    chunked = DATA.chunked
    req = (client.new_request("PATCH", _prev().relative_location())
           .set_header("Content-Type", OCTET_STREAM)
           .set_header("Content-Length", chunked.chunk1_length)
           .set_header("Content-Range", chunked.chunk1_range)
           .set_body(chunked.chunk1))
    resp = client.do(req)
    expect_status(resp, 416)


@spec(TITLE_PUSH, "Blob Upload Chunked",
      "Get on stale blob upload should return 204 with a range and location")
def test_blob_upload_chunked_get_stale_upload_204(client: RegistryClient) -> None:
    """GET the session's first Location: 204, a Location, and Range covering chunk 1."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("GET", _prev().relative_location()))
    expect_status(resp, 204)
    expect(resp.header("Location") != "", "GET upload response has no Location", resp)
    expect(resp.header("Range") == DATA.chunked.chunk1_range,
           f"Range {resp.header('Range')!r} != {DATA.chunked.chunk1_range!r}", resp)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Chunked", "PATCH request with second chunk should return 202")
def test_blob_upload_chunked_patch_second_chunk_202(client: RegistryClient) -> None:
    """PATCH chunk 2 at the Location the status GET returned."""
    skip_if_disabled(PUSH)
    chunked = DATA.chunked
    req = (client.new_request("PATCH", _last().relative_location())
           .set_header("Content-Length", chunked.chunk2_length)
           .set_header("Content-Range", chunked.chunk2_range)
           .set_header("Content-Type", OCTET_STREAM)
           .set_body(chunked.chunk2))
    resp = client.do(req)
    location = resp.header("Location")
    expect_status(resp, 202)
    expect(location != "", "PATCH response has no Location", resp)
    state.last_response = resp


@spec(TITLE_PUSH, "Blob Upload Chunked", "PUT request with digest should return 201")
def test_blob_upload_chunked_put_digest_201(client: RegistryClient) -> None:
    """Close the chunked session with a body-less PUT ?digest=."""
    skip_if_disabled(PUSH)
    req = (client.new_request("PUT", _last().relative_location())
           .set_header("Content-Length", "0")
           .set_header("Content-Type", OCTET_STREAM)
           .set_query_param("digest", DATA.chunked.digest))
    resp = client.do(req)
    expect_status(resp, 201)
    expect(resp.header("Location") != "", "PUT response has no Location", resp)


# -- Cross-Repository Blob Mount --------------------------------------------------------------------


@spec(TITLE_PUSH, "Cross-Repository Blob Mount",
      "Cross-mounting of a blob without the from argument should yield session id")
def test_cross_mount_without_from_yields_session(client: RegistryClient) -> None:
    """POST ?mount=<unknown digest> without from: 202 and a Location."""
    skip_if_disabled(PUSH)
    req = (client.new_request("POST", "/v2/<name>/blobs/uploads/", name=SETTINGS.crossmount_namespace)
           .set_query_param("mount", DATA.dummy_digest))
    resp = client.do(req)
    expect_status(resp, 202)
    expect(resp.absolute_location() != "", "mount response has no Location", resp)


@spec(TITLE_PUSH, "Cross-Repository Blob Mount",
      "POST request to mount another repository's blob should return 201 or 202")
def test_cross_mount_from_other_repository_201_or_202(client: RegistryClient) -> None:
    """POST ?mount=testBlobA&from=<namespace> into the cross-mount namespace."""
    skip_if_disabled(PUSH)
    req = (client.new_request("POST", "/v2/<name>/blobs/uploads/", name=SETTINGS.crossmount_namespace)
           .set_query_param("mount", DATA.test_blob_a_digest)
           .set_query_param("from", client.default_name))
    resp = client.do(req)
    expect_status(resp, 201, 202)
    state.last_response = resp


@spec(TITLE_PUSH, "Cross-Repository Blob Mount",
      "GET request to test digest within cross-mount namespace should return 200")
def test_cross_mount_get_mounted_blob_200(client: RegistryClient) -> None:
    """After a 201 the Location is the mounted blob, which must be readable."""
    skip_if_disabled(PUSH)
    last = _last()
    run_only_if(last.status == 201)
    want = f"/v2/{SETTINGS.crossmount_namespace}/blobs/{DATA.test_blob_a_digest}"
    expect(last.relative_location() == want, f"mount Location path {last.relative_location()!r} != {want!r}",
           last)
    resp = client.do(client.new_request("GET", last.relative_location()))
    expect_status(resp, 200)


@spec(TITLE_PUSH, "Cross-Repository Blob Mount", "Cross-mounting of nonexistent blob should yield session id")
def test_cross_mount_nonexistent_blob_yields_session(client: RegistryClient) -> None:
    """After a 202 the Location is an upload session in the cross-mount namespace."""
    skip_if_disabled(PUSH)
    last = _last()
    run_only_if(last.status == 202, "the mount succeeded (201), so there is no fallback upload session to "
                "check")
    prefix = f"/v2/{SETTINGS.crossmount_namespace}/blobs/uploads/"
    expect(last.relative_location().startswith(prefix),
           f"mount Location path {last.relative_location()!r} does not start with {prefix!r}", last)


@spec(TITLE_PUSH, "Cross-Repository Blob Mount",
      "Cross-mounting without from, and automatic content discovery enabled should return a 201")
def test_cross_mount_automatic_enabled_201(client: RegistryClient) -> None:
    """Only with OCI_AUTOMATIC_CROSSMOUNT=1: mount without from must succeed."""
    skip_if_disabled(PUSH)
    run_only_if(SETTINGS.run_automatic_crossmount_test)
    run_only_if(_last().status == 201)
    run_only_if(SETTINGS.automatic_crossmount_enabled, "automatic cross-mount is disabled for this registry "
                "(OCI_AUTOMATIC_CROSSMOUNT=0): the disabled variant runs instead")
    req = (client.new_request("POST", "/v2/<name>/blobs/uploads/", name=SETTINGS.crossmount_namespace)
           .set_query_param("mount", DATA.test_blob_a_digest))
    resp = client.do(req)
    expect_status(resp, 201)


@spec(TITLE_PUSH, "Cross-Repository Blob Mount",
      "Cross-mounting without from, and automatic content discovery disabled should return a 202")
def test_cross_mount_automatic_disabled_202(client: RegistryClient) -> None:
    """Only with OCI_AUTOMATIC_CROSSMOUNT=0: mount without from must open a session."""
    skip_if_disabled(PUSH)
    run_only_if(SETTINGS.run_automatic_crossmount_test)
    run_only_if(_last().status == 201)
    run_only_if_not(SETTINGS.automatic_crossmount_enabled)
    req = (client.new_request("POST", "/v2/<name>/blobs/uploads/", name=SETTINGS.crossmount_namespace)
           .set_query_param("mount", DATA.test_blob_a_digest))
    resp = client.do(req)
    expect_status(resp, 202)


# -- Manifest Upload --------------------------------------------------------------------------------


@spec(TITLE_PUSH, "Manifest Upload", "GET nonexistent manifest should return 404")
def test_manifest_upload_get_nonexistent_manifest_404(client: RegistryClient) -> None:
    """GET the invalid reference `.INVALID_MANIFEST_NAME`."""
    skip_if_disabled(PUSH)
    resp = client.do(client.new_request("GET", "/v2/<name>/manifests/<reference>",
                                        reference=DATA.nonexistent_manifest))
    expect_status(resp, 404)


@spec(TITLE_PUSH, "Manifest Upload", "PUT should accept a manifest upload")
def test_manifest_upload_put_manifest_201(client: RegistryClient) -> None:
    """PUT manifests[1] under tags test0..test3: 201 with a Location each time."""
    skip_if_disabled(PUSH)
    for i in range(4):
        req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=f"test{i}")
               .set_header("Content-Type", MANIFEST_V1)
               .set_body(DATA.manifests[1].content))
        resp = client.do(req)
        expect(resp.header("Location") != "", "manifest PUT response has no Location", resp)
        expect_status(resp, 201)


@spec(TITLE_PUSH, "Manifest Upload", "Registry should accept a manifest upload with no layers")
def test_manifest_upload_manifest_with_no_layers(client: RegistryClient) -> None:
    """PUT a manifest with `layers: []` (and no mediaType) under `emptylayer`; anything but 201 warns."""
    skip_if_disabled(PUSH)
    req = (client.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=EMPTY_LAYER_TEST_TAG)
           .set_header("Content-Type", MANIFEST_V1)
           .set_body(DATA.empty_layer_manifest_content))
    resp = client.do(req)
    if resp.status == 201:
        location = resp.header("Location")
        state.empty_layer_manifest_ref = location
        expect(location != "", "manifest PUT response has no Location", resp)
        expect_status(resp, 201)
    else:
        warn("image manifest with no layers is not supported")


@spec(TITLE_PUSH, "Manifest Upload", "GET request to manifest URL (digest) should yield 200 response")
def test_manifest_upload_get_manifest_by_digest_200(client: RegistryClient) -> None:
    """GET manifests[1] by digest."""
    skip_if_disabled(PUSH)
    req = (client.new_request("GET", "/v2/<name>/manifests/<digest>", digest=DATA.manifests[1].digest)
           .set_header("Accept", MANIFEST_V1))
    resp = client.do(req)
    expect_status(resp, 200)


# -- Teardown ---------------------------------------------------------------------------------------


def _delete_pushed_manifests(client: RegistryClient) -> None:
    """DELETE manifests[1], and the empty-layer manifest if it was accepted: 2xx or 405."""
    resp = client.do(client.new_request("DELETE", "/v2/<name>/manifests/<digest>",
                                        digest=DATA.manifests[1].digest))
    expect_status(resp, 405, success=True)
    if state.empty_layer_manifest_ref:
        resp = client.do(client.new_request("DELETE", "/v2/<name>/manifests/<reference>",
                                            reference=DATA.empty_layer_manifest_digest))
        expect_status(resp, 405, success=True)


if SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_PUSH, "Teardown", "Delete manifest created in tests")
    def test_teardown_delete_manifest(client: RegistryClient) -> None:
        """Delete the manifests pushed above."""
        skip_if_disabled(PUSH)
        run_only_if(SETTINGS.run_push_setup)
        _delete_pushed_manifests(client)


@spec(TITLE_PUSH, "Teardown", "Delete config blob created in tests")
def test_teardown_delete_config_blob(client: RegistryClient) -> None:
    """DELETE configs[1]: 2xx, 404 or 405."""
    skip_if_disabled(PUSH)
    run_only_if(SETTINGS.run_push_setup)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.configs[1].digest))
    expect_status(resp, 404, 405, success=True)


@spec(TITLE_PUSH, "Teardown", "Delete layer blob created in setup")
def test_teardown_delete_layer_blob(client: RegistryClient) -> None:
    """DELETE the layer: 2xx, 404 or 405."""
    skip_if_disabled(PUSH)
    run_only_if(SETTINGS.run_push_setup)
    resp = client.do(client.new_request("DELETE", "/v2/<name>/blobs/<digest>", digest=DATA.layer_blob_digest))
    expect_status(resp, 404, 405, success=True)


if not SETTINGS.delete_manifest_before_blobs:

    @spec(TITLE_PUSH, "Teardown", "Delete manifest created in tests")
    def test_teardown_delete_manifest_after_blobs(client: RegistryClient) -> None:
        """Delete the manifests pushed above (after the blobs)."""
        skip_if_disabled(PUSH)
        run_only_if(SETTINGS.run_push_setup)
        _delete_pushed_manifests(client)
