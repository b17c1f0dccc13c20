"""The HTTP face of cachesvc: OCI Distribution v1.1 routes, their handlers and the spec's error bodies."""
