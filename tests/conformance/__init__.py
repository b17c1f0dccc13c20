"""Port of the OCI distribution-spec conformance suite (pull, push, content discovery, content management)."""
