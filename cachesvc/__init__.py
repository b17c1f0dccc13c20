"""cachesvc: a persistent layer cache for container builders, spoken to as an OCI Distribution registry."""

__version__ = "0.1.0"
