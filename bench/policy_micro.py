#!/usr/bin/env python3
"""Policy decision alone: a 20-rule config where the last rule matches (issue 8 target: <= 3 us a call).

    .venv/bin/python bench/policy_micro.py

Prints microseconds per call for a preflight and an actual request, best of 5 timing runs.
Pure function calls, no I/O.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multidict import CIMultiDict  # noqa: E402

from corsproxy import config  # noqa: E402
from corsproxy.policy import CorsRequest, Policy, decide, finish  # noqa: E402

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

    def preflight() -> None:
        decide(policy, CorsRequest.from_headers("OPTIONS", "/api/items/7", pre_headers))

    def actual() -> None:
        decision = decide(policy, CorsRequest.from_headers("GET", "/api/items/7", get_headers))
        finish(decision, CIMultiDict({"Content-Type": "application/json", "Vary": "Accept-Encoding"}))

    for name, fn in (("preflight decision", preflight), ("actual decision + finish", actual)):
        assert decide(policy, CorsRequest.from_headers("OPTIONS", "/api/items/7", pre_headers)).verdict == "allowed"
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        print(f"{name:28s} {best:6.2f} us/call  (20 rules, the last matching; target <= 3 us)")


if __name__ == "__main__":
    main()
