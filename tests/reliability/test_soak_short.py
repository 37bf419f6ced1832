"""A 5-second run of bench/soak.py (the 60 s run is the benchmark; its figures are in docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_five_second_soak_of_mixed_traffic_loses_nothing_and_leaks_no_fd() -> None:
    run = subprocess.run([sys.executable, "bench/soak.py", "--seconds", "5", "--concurrency", "16", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=50)
    report = json.loads(run.stdout.strip().splitlines()[-2])
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["errors"] == {} and report["proxy_alive"]
    assert set(report["by_kind"]) == {"preflight", "get", "post", "rejected_post", "sse", "websocket"}
    assert report["denied_on_purpose"]["rejected_post"] == report["by_kind"]["rejected_post"]
    assert report["denied_reached_upstream"] == 0
    assert report["hashes_checked"] >= report["by_kind"]["get"] + report["by_kind"]["post"]
    assert report["fds"]["idle_end"] <= report["fds"]["start"]
