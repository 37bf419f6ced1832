"""Run the public tools attackers use against a real ``corsproxy serve`` on loopback, and print what they found.

The proxy stands in front of a deliberately bad legacy API (it reflects any Origin with credentials), with
the rules in ``RULES`` below. Tools (none is a test dependency; install them first):

    apt-get install -y slowhttptest
    python3 -m venv /tmp/scanners && /tmp/scanners/bin/pip install corscanner corsair-scan

CORScanner and corsair-scan fetch the Public Suffix List through tldextract; offline, this script runs them
with tldextract's bundled snapshot. They need a host name: ``api.example.test`` is pointed at 127.0.0.1 in
/etc/hosts when that line is missing (loopback only). Every load is bounded: slowhttptest runs 300
connections for ``--seconds`` (30) a mode.

    .venv/bin/python bench/security_scan.py [--scanners /tmp/scanners] [--seconds 30]

Figures from a run are in docs/reliability.md ("Security").
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from corsproxy.testing import free_port, serve_process

HOST = "api.example.test"
UPSTREAM = textwrap.dedent('''
    import sys
    from aiohttp import web

    async def handle(request):  # a legacy API that gets CORS wrong: it reflects any Origin, with credentials
        headers = {"Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
                   "Access-Control-Allow-Credentials": "true"}
        if request.path.endswith("/big"):
            return web.Response(body=b"x" * 2**20, headers=headers)
        return web.json_response({"path": request.path, "secret": "user-data"}, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
''')
RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.test, "https://*.example.test", "http://localhost:*"]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type, Authorization]
    allow_credentials: true
  - name: legacy-keep
    paths: ["/legacy/**"]
    allow_origins: ["*"]
    upstream_cors: keep
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
"""
PATHS = ["api/x", "legacy/x", "public/x", "unruled/x"]
OFFLINE_PSL = "import tldextract; tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())\n"
SLOW_MODES = {
    "slow headers (slowloris)": ["-H", "-i", "5"],
    "slow body": ["-B", "-i", "5", "-s", "65536"],
    "slow read of 1 MiB": ["-X", "-k", "4", "-w", "10", "-y", "20", "-n", "5", "-z", "32"],
}


def main() -> int:
    args = _args()
    _ensure_host()
    up_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "upstream.py").write_text(UPSTREAM)
        upstream = subprocess.Popen([sys.executable, str(work / "upstream.py"), str(up_port)])
        try:
            time.sleep(1.0)
            config = (f"listen:\n  port: {port}\nupstream:\n  url: http://127.0.0.1:{up_port}\nadmin: null\n"
                      f"logging:\n  access_log: false\n{RULES}")
            with serve_process(config, work, port):
                base = f"http://{HOST}:{port}"
                _corscanner(args.scanners, base)
                _corsair(args.scanners, base, work)
                _slowhttptest(base, work, args.seconds)
                log = (work / "proxy.log").read_text()
                print(f"proxy log: {log.count('(408)')} connections closed with 408, "
                      f"{log.count('Traceback')} tracebacks")
        finally:
            upstream.terminate()
            upstream.wait(5)
    return 0


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scanners", default="/tmp/scanners", help="venv with corscanner and corsair-scan")
    parser.add_argument("--seconds", type=int, default=30, help="seconds per slowhttptest mode")
    return parser.parse_args()


def _ensure_host() -> None:
    hosts = Path("/etc/hosts")
    if HOST not in hosts.read_text():
        with hosts.open("a") as f:
            f.write(f"127.0.0.1 {HOST}\n")


def _scanner_python(scanners: str) -> list[str]:
    return [f"{scanners}/bin/python", "-c", OFFLINE_PSL + "import runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"]


def _corscanner(scanners: str, base: str) -> None:
    print("== CORScanner (all its tests: reflect, prefix, suffix, null, subdomains, http trust, ...)")
    for path in PATHS:
        out = subprocess.run([*_scanner_python(scanners), f"{scanners}/bin/corscanner", "-u", f"{base}/{path}",
                              "-v"], capture_output=True, text=True, timeout=120).stdout
        found = [line.split("Found misconfiguration! ", 1)[1] for line in out.splitlines()
                 if "Found misconfiguration" in line]
        print(f"/{path}: " + ("; ".join(found) if found else "nothing found"))


def _corsair(scanners: str, base: str, work: Path) -> None:
    print("== corsair-scan (fake origin, sub-domain, pre-domain, post-domain; with credentials)")
    requests = [{"url": f"{base}/{path}", "verb": verb, "params": "",
                 "headers": {"Origin": "https://app.example.test", "Cookie": "session=1"}}
                for path in PATHS for verb in ("GET", "POST", "PUT", "DELETE", "OPTIONS")]
    (work / "corsair.json").write_text(json.dumps(requests))
    subprocess.run([*_scanner_python(scanners), f"{scanners}/bin/corsair", str(work / "corsair.json"), "-r",
                    str(work / "corsair-report.json")], capture_output=True, timeout=300, check=True)
    report = json.loads((work / "corsair-report.json").read_text())
    for entry in report["report"]:
        flagged = {test: (r["Access-Control-Allow-Origin"], r["credentials"]) for test, r in entry.items()
                   if isinstance(r, dict) and r.get("misconfigured")}
        print(f"{entry['verb']:7} {entry['url'].removeprefix(base)}: "
              + (", ".join(f"{t} -> ACAO {a!r}{' +credentials' if c else ''}" for t, (a, c) in flagged.items())
                 or "nothing found"))


def _slowhttptest(base: str, work: Path, seconds: int) -> None:
    print(f"== slowhttptest, 300 connections, {seconds} s a mode")
    for name, mode in SLOW_MODES.items():
        target = f"{base}/api/big" if "-X" in mode else f"{base}/api/x"
        prefix = work / name.split()[1]
        subprocess.run(["slowhttptest", "-c", "300", "-r", "100", "-l", str(seconds), "-u", target, "-t",
                        "GET" if "-X" in mode else "POST", "-p", "3", "-g", "-o", str(prefix), *mode],
                       capture_output=True, timeout=seconds + 120)
        rows = list(csv.DictReader((prefix.with_suffix(".csv")).open()))
        down = [r["Seconds"] for r in rows if int(r["Service Available"]) == 0]
        closed_at = next((r["Seconds"] for r in rows if int(r["Closed"]) >= 150), "never")
        print(f"{name}: most connected {max(int(r['Connected']) for r in rows)}, half closed by the proxy at "
              f"{closed_at} s, service unavailable at {len(down)} of {len(rows)} samples")


if __name__ == "__main__":
    sys.exit(main())
