#!/usr/bin/env python3
"""A SaaS-size origins file: 100,000 exact custom domains and 1,000 wildcards in one rule (issue 16).

    .venv/bin/python bench/origins_scale.py

Prints, for 10 entries and for 100,000 + 1,000: the time to load and check the config
(``config.load`` + ``lint``, as ``corsproxy check`` does, and ``Policy.from_config``, as ``serve``
does), and the resident memory each costs, measured in a fresh process each (VmRSS after loading
minus VmRSS before). Targets: load + check under 1 s, the large list under +50 MiB over the small.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = (9, 1)  # exact entries, wildcards: ten in all
LARGE = (100_000, 1_000)


def make_config(folder: Path, exact: int, wildcards: int) -> Path:
    """A config whose one rule takes ``exact`` + ``wildcards`` origins from a file (first entry: the
    origin the micro-benchmark asks for)."""
    lines = ["# customers' custom domains", "https://app.example.com"]
    lines += [f"https://shop{i}.customer{i % 977}.com" for i in range(exact - 1)]
    lines += ["https://*.tenants.example.org"] + [f"https://*.t{i}.saas-example.net" for i in range(wildcards - 1)]
    (folder / "origins.txt").write_text("\n".join(lines) + "\n")
    path = folder / "config.yaml"
    path.write_text("upstream: {url: http://127.0.0.1:9000}\nadmin: null\nrules:\n"
                    "  - name: saas\n    paths: ['/api/**']\n    allow_origins: [{file: origins.txt}]\n"
                    "    allow_methods: [GET, POST, PUT]\n    allow_headers: [Content-Type, Authorization]\n"
                    "    allow_credentials: true\n")
    return path


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(path: str) -> dict[str, float]:
    """In this (fresh) process: load + lint + compile once, timed, and the RSS it added."""
    from corsproxy import config
    from corsproxy.lint import lint
    from corsproxy.policy import Policy

    gc.collect()
    before = _rss_kib()
    started = time.perf_counter()
    loaded = config.load(path, env={})
    warnings = lint(loaded)
    policy = Policy.from_config(loaded)
    seconds = time.perf_counter() - started
    gc.collect()
    assert policy.rules[0].rule.origins.allows("https://app.example.com")
    return {"seconds": seconds, "rss_mib": (_rss_kib() - before) / 1024, "warnings": len(warnings),
            "origins": sum(len(s.entries) for s in loaded.rules[0].origin_sources)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2])))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (exact, wild) in (("10", SMALL), ("100,000 + 1,000", LARGE)):
            folder = Path(tmp) / name.replace(",", "").replace(" + ", "_")
            folder.mkdir()
            path = make_config(folder, exact, wild)
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True,
                                              capture_output=True, text=True).stdout) for _ in range(3)]
            results[name] = {"seconds": min(r["seconds"] for r in runs),
                             "rss_mib": min(r["rss_mib"] for r in runs), "origins": runs[0]["origins"]}
    print("one rule's origins from a file; fresh process each, best of 3; targets: load+check < 1 s, "
          "memory < +50 MiB over ten")
    for name, r in results.items():
        print(f"  {name:16s} {r['origins']:7d} origins  load+check+compile {r['seconds'] * 1000:7.1f} ms  "
              f"RSS +{r['rss_mib']:5.1f} MiB")
    extra = results["100,000 + 1,000"]["rss_mib"] - results["10"]["rss_mib"]
    print(f"  100,000 + 1,000 over ten: +{extra:.1f} MiB")


if __name__ == "__main__":
    main()
