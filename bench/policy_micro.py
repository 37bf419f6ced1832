#!/usr/bin/env python3
"""Policy decision alone: a 20-rule config where the last rule matches (issue 8 target: <= 3 us a call).

    .venv/bin/python bench/policy_micro.py

Prints microseconds per call of decide() alone (the target) and of the whole per-request policy
work around it (reading the headers, and finish() on a response), best of 5 timing runs.
Pure function calls, no I/O.

Then one rule with its origins in a file, ten entries against 100,000 exact + 1,000 wildcards
(issue 16 target: decide() within 20 % of the ten-entry time), for an exact, a wildcard and a denied origin.
"""

from __future__ import annotations

import sys
import tempfile
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multidict import CIMultiDict  # noqa: E402

from corsproxy import config  # noqa: E402
from corsproxy.policy import CorsRequest, Policy, decide, finish  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from origins_scale import LARGE, SMALL, make_config  # noqa: E402

RULES = "\n".join(
    f"  - name: r{i}\n    paths: ['/svc{i}/**', '/v{i}/*/items']\n"
    f"    allow_origins: ['https://a{i}.example.com', 'https://*.b{i}.example.com']"
    for i in range(19)
)
TEXT = f"""upstream: {{url: http://127.0.0.1:9000}}
admin: null
rules:
{RULES}
  - name: last
    paths: ['/api/**']
    allow_origins: [https://app.example.com, 'https://*.example.org', {{regex: '^https://pr-[0-9]+\\.dev$'}}]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type, Authorization]
    expose_headers: [X-Request-Id]
    allow_credentials: true
"""


def main() -> None:
    policy = Policy.from_config(config.parse(TEXT, "bench"))
    assert len(policy.rules) == 20
    pre_headers = CIMultiDict({"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
                               "Access-Control-Request-Headers": "content-type, authorization"})
    get_headers = CIMultiDict({"Origin": "https://app.example.com"})
    n = 20_000
    pre = CorsRequest.from_headers("OPTIONS", "/api/items/7", pre_headers)
    get = CorsRequest.from_headers("GET", "/api/items/7", get_headers)
    assert decide(policy, pre).verdict == "allowed" and decide(policy, get).verdict == "allowed"
    cases = {
        "decide(): preflight": lambda: decide(policy, pre),
        "decide(): actual": lambda: decide(policy, get),
        "headers -> decide(): preflight": lambda: decide(policy, CorsRequest.from_headers(
            "OPTIONS", "/api/items/7", pre_headers)),
        "headers -> decide() + finish(): GET": lambda: finish(
            decide(policy, CorsRequest.from_headers("GET", "/api/items/7", get_headers)),
            CIMultiDict({"Content-Type": "application/json", "Vary": "Accept-Encoding"})),
    }
    print("20 rules, the last one matching; best of 5 runs; target: decide() <= 3 us")
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        print(f"  {name:38s} {best:5.2f} us/call")
    scale()


def scale() -> None:
    origins = {"exact": "https://app.example.com", "wildcard": "https://a.b.tenants.example.org",
               "denied": "https://evil.example.net"}
    n = 20_000
    times: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (exact, wild) in (("10", SMALL), ("100,000", LARGE)):
            folder = Path(tmp) / name.replace(",", "")
            folder.mkdir()
            policy = Policy.from_config(config.load(make_config(folder, exact, wild), env={}))
            times[name] = {}
            for kind, origin in origins.items():
                req = CorsRequest.from_headers("GET", "/api/items/7", CIMultiDict({"Origin": origin}))
                assert (decide(policy, req).verdict == "allowed") == (kind != "denied")
                times[name][kind] = min(timeit.repeat(lambda: decide(policy, req), number=n, repeat=5)) / n * 1e6
    print("one rule, origins from a file: 10 entries vs 100,000 exact + 1,000 wildcards; target: within 20 %")
    for kind in origins:
        small, large = times["10"][kind], times["100,000"][kind]
        print(f"  decide(): {kind:8s} origin   10: {small:5.2f} us   100,000: {large:5.2f} us   "
              f"({(large / small - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
