"""Fixtures for the OCI conformance port: the registry under test and a client for it.

Which registry:
* `OCI_ROOT_URL` set: that registry, used as is (nothing is started);
* else `CONFORMANCE_TARGET=distribution`: CNCF distribution 2.8 (Debian's docker-registry) in a temp dir;
* else (default, `CONFORMANCE_TARGET=cachesvc`): `python -m cachesvc serve` in a temp dir.

One registry serves the whole session, as one registry serves the whole upstream Ginkgo run; the four
workflow modules run in file order and their specs in definition order, sharing state as upstream does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `tests.support` is not installed; pytest's rootdir is not on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.servers import Cachesvc, Distribution, ServerProcess  # noqa: E402

# cachesvc mounts only with an explicit `from=` (a blob is visible per repository): run upstream's "automatic
# cross-mount disabled" spec for it instead of skipping both automatic cross-mount specs.
if os.environ.get("CONFORMANCE_TARGET", "cachesvc").strip().lower() == "cachesvc" and not os.environ.get(
        "OCI_ROOT_URL"):
    os.environ.setdefault("OCI_AUTOMATIC_CROSSMOUNT", "0")

from .client import RegistryClient  # noqa: E402
from .suite import SETTINGS  # noqa: E402

TARGETS = ("cachesvc", "distribution")

_server: ServerProcess | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that records each test's upstream Ginkgo spec."""
    config.addinivalue_line("markers", "oci_spec(workflow, context, text): the upstream Ginkgo spec ported")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Show which registry and which upstream knobs this run uses."""
    target = SETTINGS.root_url or os.environ.get("CONFORMANCE_TARGET", "cachesvc")
    return [f"conformance: target={target} namespace={SETTINGS.namespace} "
            f"crossmount={SETTINGS.crossmount_namespace} seed={SETTINGS.seed} "
            f"delete_manifest_before_blobs={SETTINGS.delete_manifest_before_blobs}"]


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the registry under test (no trailing slash)."""
    global _server
    if SETTINGS.root_url:
        yield SETTINGS.root_url.rstrip("/")
        return
    target = os.environ.get("CONFORMANCE_TARGET", "cachesvc").strip().lower()
    if target not in TARGETS:
        raise pytest.UsageError(f"CONFORMANCE_TARGET must be one of {', '.join(TARGETS)}, got {target!r}")
    base = tmp_path_factory.mktemp(f"conformance-{target}")
    server: ServerProcess = Cachesvc(base / "root") if target == "cachesvc" else Distribution(base / "root")
    server.start()
    _server = server
    try:
        yield server.url
    finally:
        _server = None
        server.stop()


@pytest.fixture(scope="session")
def client(registry_url: str) -> RegistryClient:
    """The suite's reggie-like client, defaulting to `OCI_NAMESPACE`."""
    return RegistryClient(registry_url, SETTINGS.namespace, username=SETTINGS.username,
                          password=SETTINGS.password, auth_scope=SETTINGS.auth_scope, debug=SETTINGS.debug)


_log_offset: dict[str, int] = {}


def _log_size() -> int:
    try:
        return _server.log_path.stat().st_size if _server is not None else 0
    except OSError:
        return 0


def pytest_runtest_call(item: pytest.Item) -> None:
    """Remember where the server log stood when the test body started."""
    _log_offset[item.nodeid] = _log_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """Attach what the server logged during a failing test (last 30 lines) to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or _server is None:
        return
    start = _log_offset.pop(item.nodeid, 0)
    try:
        with open(_server.log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode("utf-8", errors="replace").splitlines()[-30:]
    except OSError:
        return
    if lines:
        report.sections.append((f"{_server.kind} log during this test", "\n".join(lines)))
