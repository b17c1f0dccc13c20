"""The Grafana dashboard and Prometheus alert rules in builder-image/operator only use metrics cachesvc exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import yaml

from tests.support.http import Http
from tests.support.servers import Cachesvc

KIT = Path(__file__).resolve().parents[2] / "builder-image" / "operator"
METRIC = re.compile(r"\bcachesvc_[a-z_]+")


def exported_names(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def test_dashboard_and_alerts_use_real_metrics(tmp_path: Path) -> None:
    rules = yaml.safe_load((KIT / "prometheus-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 4 and all(r.get("alert") for g in rules["groups"] for r in g["rules"])
    dash = json.loads((KIT / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    with Cachesvc(tmp_path / "root") as server:
        Http(server.url).push_image("kit/app", "t", [b"layer"])  # so labelled families have samples
        Http(server.url).request("GET", "/v2/kit/app/manifests/t")
        names = exported_names(server.url)
    missing = used - names
    assert not missing, f"dashboard/alerts use metrics cachesvc does not export: {sorted(missing)}"
