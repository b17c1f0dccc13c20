"""The status page rendered by a real headless browser (Debian's chromium): it shows what /metrics says.

The screenshot is kept as a test artifact in ``tests/artifacts/status-page.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_metrics_real_traffic import scrape
from tests.support.http import Http, sha256
from tests.support.servers import Cachesvc

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1200,1500"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium missing: apt-get install chromium")


def test_status_page_in_a_browser(tmp_path: Path) -> None:
    browser = chromium()
    with Cachesvc(tmp_path / "root", extra_args=["--max-size", "3MiB", "--upload-grace", "1s"]) as server:
        h = Http(server.url)
        for i in range(4):
            h.push_image("cache/app", f"b{i}", [os.urandom(900_000)])  # the budget forces evictions
        h.push_image("cache/web", "main", [os.urandom(50_000)])
        for _ in range(3):
            h.request("GET", "/v2/cache/web/manifests/main")
        h.request("HEAD", f"/v2/cache/web/blobs/{sha256(b'missing')}")
        metrics = scrape(server.url)
        url = f"{server.url}/_cachesvc/"
        profile = tmp_path / "chromium-profile"
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        r = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and shot.stat().st_size > 10_000, r.stderr[-2000:]
    page = dom.stdout
    # The numbers the page shows are the ones /metrics shows.
    manifest_hits = metrics['cachesvc_lookups_total{kind="manifest",result="hit"}']
    total_hits = sum(v for k, v in metrics.items() if k.startswith("cachesvc_lookups_total") and 'result="hit"' in k)
    total_misses = sum(v for k, v in metrics.items()
                       if k.startswith("cachesvc_lookups_total") and 'result="miss"' in k)
    assert manifest_hits >= 3 and total_misses >= 1
    card = re.search(r'id="card-1".*?<b>([\d.]+)%</b>.*?(\d+) hits, (\d+) misses', page, re.S)
    assert card, page[:3000]
    assert (int(card.group(2)), int(card.group(3))) == (total_hits, total_misses)
    assert float(card.group(1)) == pytest.approx(100 * total_hits / (total_hits + total_misses), abs=0.06)
    used = re.search(r'id="usage-bar"[^>]*aria-label="([^"]+)"', page)
    assert used and used.group(1).endswith("of 3.0 MiB")
    assert 'id="evictions"' in page and "budget" in page.split('id="evictions"')[1]
    assert "cache/web" in page.split('id="top-repositories"')[1]
    assert "<polyline" in page.split('id="hit-ratio-chart"')[1].split("</svg>")[0]
