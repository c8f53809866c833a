#!/usr/bin/env python3
"""Runs every query of every panel of the Grafana dashboard against a
Prometheus and prints what each returns (a few series per query).

    [AT=UNIX_SECONDS] scripts/dashboard-queries.py [PROMETHEUS_URL] [DASHBOARD_JSON]

Defaults: http://127.0.0.1:9090 (what `MONITORING=1 scripts/cluster.sh up`
starts), monitoring/grafana/dashboards/navcast.json, and now (AT evaluates
at an earlier moment, e.g. just before a load run ended and its series went
stale: scripts/demo.sh does that). Exits 1 when a
query fails or returns no series, so a panel that would stay empty on a
running cluster is found without Grafana (which cannot be installed here);
loadtest/tests/monitoring.rs runs it during a load.
"""

import json
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path

prom = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9090"
board = Path(sys.argv[2] if len(sys.argv) > 2 else
             Path(__file__).resolve().parent.parent / "monitoring/grafana/dashboards/navcast.json")
panels = json.loads(board.read_text())["panels"]
at = os.environ.get("AT")

empty = 0
for panel in panels:
    for target in panel["targets"]:
        expr = target["expr"]
        params = {"query": expr} | ({"time": at} if at else {})
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except Exception as e:  # noqa: BLE001 - any failure is reported
            print(f"FAIL {panel['title']} | {expr} | {e}")
            empty += 1
            continue
        result = body.get("data", {}).get("result", [])
        if body.get("status") != "success" or not result:
            print(f"EMPTY {panel['title']} | {expr} | {body.get('error', 'no series')}")
            empty += 1
            continue
        # The largest values first (NaN last): what the panel shows most.
        def size(s):
            try:
                v = float(s["value"][1])
            except ValueError:
                return float("-inf")
            return float("-inf") if v != v else v
        result.sort(key=size, reverse=True)
        shown = []
        for s in result[:4]:
            labels = ",".join(f"{k}={v}" for k, v in s["metric"].items() if k not in ("__name__", "job"))
            shown.append(f"{{{labels}}} {s['value'][1]}")
        more = f" (+{len(result) - 4})" if len(result) > 4 else ""
        print(f"ok {panel['title']} | {expr} | {'; '.join(shown)}{more}")
print(f"dashboard: {sum(len(p['targets']) for p in panels) - empty} queries with series, {empty} without")
sys.exit(1 if empty else 0)
