#!/usr/bin/env python3
"""Run the shared benchmark harness against this working tree and print issue 8's target table.

    .venv/bin/python bench/targets.py                    # 3 interleaved rounds, every peer
    .venv/bin/python bench/targets.py --repeat 1 --duration 3
    .venv/bin/python bench/targets.py --report bench/last.json   # table of an earlier run
    .venv/bin/python bench/targets.py --before /work/old/.venv/bin/python   # and an older build, same run

It runs ``../shared/bench/run`` (nginx, Caddy, cors-anywhere, the bare upstream and corsproxy
with 1 and 2 workers, one process each, interleaved rounds; its README says how) and then
checks each ratio against its target. Ratios from one run hold within about +-0.05 on these
shared 2-core machines; absolute req/s do not, so only ratios are judged. cors-anywhere needs
``npm install --prefix /tmp/bench-deps cors-anywhere`` first (the harness skips it otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "bench" / "run"
ONE, TWO, BEFORE = "corsproxy", "corsproxy-w2", "before"

# (scenario, metric, peer, minimum corsproxy / peer ratio); req/s: higher is better
TARGETS = [
    ("preflight", "nginx", 0.50), ("preflight", "caddy", 1.3),
    ("get-small", "nginx", 0.45), ("get-small", "caddy", 1.1), ("get-small", "cors-anywhere", 3.0),
    ("get-large", "nginx", 0.70), ("get-large", "caddy", 1.0),
    ("post-64k", "nginx", 0.80), ("post-64k", "caddy", 1.0),
]


def run_harness(args: argparse.Namespace, out: Path) -> None:
    py = sys.executable
    cmd = [py, str(HARNESS), "--repeat", str(args.repeat), "--duration", str(args.duration),
           "--node-path", args.node_path, "--out", str(out),
           "--proxy-cmd", f"{py} -m corsproxy serve -c {{config}}", "--proxy-label", ONE,
           "--proxy-cmd", f"{py} -m corsproxy serve -c {{config}} --workers 2", "--proxy-label", TWO]
    if args.before:  # PYTHONSAFEPATH: this checkout must not shadow the older build's install
        cmd += ["--proxy-cmd", f"PYTHONSAFEPATH=1 {args.before} -m corsproxy serve -c {{config}}",
                "--proxy-label", BEFORE]
    subprocess.run(cmd, cwd=ROOT, check=True)


def cell(table: list[dict], scenario: str, metric: str, target: str) -> float | None:
    for row in table:
        if row["scenario"] == scenario and row["metric"] == metric:
            return row["values"].get(target)
    return None


def report(data: dict) -> int:
    table = data["table"]
    print(f"\nissue 8 targets, {data['settings'].get('repeat', 1)} round(s), median; machine: "
          f"{data['machine'].get('cpu', '?')}, {data['machine'].get('cpus', '?')} CPUs\n")
    print(f"{'scenario':10s} {'vs':14s} {'ratio':>6s} {'target':>7s}  met")
    missed = 0
    for scenario, peer, minimum in TARGETS:
        ours, theirs = cell(table, scenario, "req/s", ONE), cell(table, scenario, "req/s", peer)
        if not ours or not theirs:
            print(f"{scenario:10s} {peer:14s} {'-':>6s} {minimum:>7.2f}  not measured")
            continue
        ratio = ours / theirs
        missed += ratio < minimum
        print(f"{scenario:10s} {peer:14s} {ratio:6.3f} {minimum:>6.2f}+  {'yes' if ratio >= minimum else 'NO'}")
    growth = cell(table, "stream", "peak RSS growth MiB", ONE)
    rest = cell(table, "stream", "peak RSS before MiB", ONE)
    print(f"{'256 MiB stream':25s} peak RSS growth {growth:.1f} MiB (target < 5), resting {rest:.1f} MiB (target < 60)")
    w1, w2 = cell(table, "get-small", "req/s", ONE), cell(table, "get-small", "req/s", TWO)
    if w1 and w2:
        print(f"{'--workers 2 vs 1':25s} GET 1 KiB {w2 / w1:.2f}x (wrk and the upstream share the 2 cores)")
    print(f"\n{missed} target(s) missed; policy decision alone: .venv/bin/python bench/policy_micro.py")
    if any(BEFORE in row["values"] for row in table):
        compare(table)
    return 0


def compare(table: list[dict]) -> None:
    """This build beside the older one measured in the same run (``--before``), scenario by scenario."""
    print("\nthis build ÷ before, req/s (single process each, same rounds):\n")
    for scenario in ("preflight", "get-small", "get-large", "post-64k"):
        ours, old = cell(table, scenario, "req/s", ONE), cell(table, scenario, "req/s", BEFORE)
        if ours and old:
            worse = "  more than 5 % worse" if ours / old < 0.95 else ""
            print(f"{scenario:10s} {ours:9.0f} vs {old:9.0f}  {ours / old:.3f}{worse}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--node-path", default="/tmp/bench-deps/node_modules")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "last.json")
    parser.add_argument("--report", type=Path, help="print the table of an earlier --out without measuring")
    parser.add_argument("--before", metavar="PYTHON",
                        help="also run an older build (the interpreter of a venv it is installed in), labelled before")
    args = parser.parse_args()
    if args.report is None:
        run_harness(args, args.out)
    return report(json.loads((args.report or args.out).read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
