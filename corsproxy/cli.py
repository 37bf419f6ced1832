"""The command line: serve, check, explain, suggest, demo. The only module that prints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, startup
from .config import Config, ConfigError, Rule, default_config_path, describe, load, with_overrides
from .explain import BrowserRequest, explain, from_curl, header_arg, target_of
from .lint import lint

if TYPE_CHECKING:  # suggest loads the Public Suffix List: imported when the command runs
    from .suggest import Seen

# corsproxy/presets/NAME.yaml, each a config that passes check --strict (tests/test_cli.py)
PRESETS = {
    "spa-dev": "a single-page app's dev server on localhost, with cookies",
    "public-api": "a public read-only API any site may call",
    "saas": "customer subdomains of your domain, with credentials",
    "legacy": "an API that already sends some CORS, in report-only mode first",
}
EXIT_OK = 0
EXIT_DENIED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv == ["help"]:  # a newcomer's first try: the help, not a usage error
        parser.print_help()
        return EXIT_OK
    if argv[0] == "help":  # "corsproxy help explain" = "corsproxy explain --help"
        argv = [*argv[1:2], "--help"]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} error(s) in the config; fix them and run again", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corsproxy",
        description="A CORS reverse proxy: forwards every request to one upstream and writes the "
        "Access-Control-* headers from rules in a YAML file.",
    )
    parser.add_argument("--version", action="version", version=f"corsproxy {__version__}")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy", description="Run the proxy in front of the upstream.")
    _config_arg(serve)
    _override_args(serve)
    serve.add_argument("--workers", type=_workers, default=1,
                       help="processes sharing the port with SO_REUSEPORT (a number, or 'auto' = CPU count)")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                       help="event loop: uvloop when installed (auto, the default; faster), or asyncio's own "
                            "(without corsproxy[speed], or to compare)")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate the config and print the effective rules",
                           description="Validate the config: every error at once as FILE:LINE:COL: field: "
                           "message; warnings about risky rules. Exit 0 when usable, 2 when not.")
    _config_arg(check)
    _override_args(check)
    check.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    check.add_argument("--json", action="store_true", help="print the effective config as JSON")
    check.set_defaults(func=_check)

    explain = sub.add_parser("explain", help="show how one request would be answered, and why",
                             description="Decide one request as the browser sends it and print, for the preflight "
                             "(when the browser sends one) and the actual request, the matched rule, the verdict, "
                             "the reason and the exact CORS response headers. Exit 0 allowed (or no rule), "
                             "1 denied, 2 bad config. Give the request with flags, or after -- as the curl "
                             "command a browser copies ('Copy as cURL').",
                             usage="%(prog)s [-c CONFIG] [--upstream URL] --origin ORIGIN [--method METHOD] "
                             "[--path PATH | --url URL] [--header NAME ...] [--preflight]\n"
                             "       %(prog)s [-c CONFIG] -- curl 'URL' -H 'Origin: ...' ...")
    _config_arg(explain)
    _override_args(explain)
    explain.add_argument("--origin", help="the Origin the browser sends (read from the curl command after --)")
    explain.add_argument("--method", default="GET", help="the request method (default GET)")
    where = explain.add_mutually_exclusive_group()
    where.add_argument("--path", default=None, help="the request path and query (default /); a whole URL works too")
    where.add_argument("--url", default=None, help="the whole URL the page fetches (its path and query are used)")
    explain.add_argument("--header", action="append", default=[], metavar="NAME",
                         help="a header the page sets, NAME or 'Name: value' (repeatable); the browser preflights "
                         "for any that is not CORS-safelisted")
    explain.add_argument("--preflight", action="store_true",
                         help="the browser preflights even a simple request (a streamed body, upload listeners)")
    explain.add_argument("curl", nargs="*", metavar="-- curl ...", help="a request copied with 'Copy as cURL'")
    explain.set_defaults(func=_explain)

    suggest = sub.add_parser("suggest", help="turn what the proxy denied into a diff of the rules",
                             description="Read JSON access-log lines (--log FILE ..., or stdin) or a running proxy's "
                             "/decisions (--admin URL) and print a unified diff of the config that would allow the "
                             "denials seen, grouped by rule (git apply / patch -p1 take it). Denials no rule change "
                             "fixes are listed on stderr with their reason. Never suggests \"*\", null, or a "
                             "wildcard; a wildcard over one domain is offered on stderr as an alternative.")
    _config_arg(suggest)
    given = suggest.add_mutually_exclusive_group()
    given.add_argument("--log", nargs="+", metavar="FILE", help="JSON access-log files ('-' for stdin)")
    given.add_argument("--admin", metavar="URL", help="the admin listener, e.g. http://127.0.0.1:9901")
    suggest.add_argument("--min-count", type=int, default=1, metavar="N",
                         help="ignore what was denied fewer than N times (default 1)")
    suggest.add_argument("--write", action="store_true", help="change the config file in place (comments kept)")
    suggest.set_defaults(func=_suggest)

    demo = sub.add_parser("demo", help="see CORS blocked and then allowed in your browser",
                          description="Start a sample API that sends no CORS headers, corsproxy in front of it "
                          "and a page on a third origin whose buttons call both. Stop with Ctrl-C.")
    demo.add_argument("--port", type=int, default=None,
                      help="the page's port (default 8080, or a free one); the proxy and the API take the next two "
                      "(or free ones)")
    demo.set_defaults(func=_demo)

    init = sub.add_parser("init", help="print a commented starter config for a common setup",
                          description="Print a commented config for a common setup to stdout: "
                          "corsproxy init --preset saas > config.yaml. Presets: "
                          + "; ".join(f"{name}: {about}" for name, about in PRESETS.items()) + ".")
    init.add_argument("--preset", choices=list(PRESETS), default="spa-dev", help="the setup (default spa-dev)")
    init.set_defaults(func=_init)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default: $CORSPROXY_CONFIG, else ./config.yaml)")


def _override_args(parser: argparse.ArgumentParser) -> None:
    """The flags serve, check and explain share, so the config judged is the one that would run (design §2)."""
    parser.add_argument("--host", help="listen address (overrides listen.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    parser.add_argument("--upstream", metavar="URL", help="upstream base URL (overrides upstream.url, or stands "
                        "in for it when the file has none)")


def _load(args: argparse.Namespace) -> Config:
    """The config file with the command line's flags applied (a flag may stand in for a missing key)."""
    config = load(args.config or default_config_path(), upstream=args.upstream)
    return with_overrides(config, host=args.host, port=args.port, upstream=args.upstream)


def _serve(args: argparse.Namespace) -> int:
    from .logs import setup
    from .server import EXIT_STARTUP, WORKER_DIR_ENV, run, worker_argv  # aiohttp is only needed here

    def load_config() -> Config:
        return _load(args)

    config = load_config()
    setup(config.logging.level, config.logging.format)
    if not os.environ.get(WORKER_DIR_ENV):  # a worker's supervisor checked already (and its siblings share the port)
        log = logging.getLogger("corsproxy")
        if problems := startup.port_problems(config):
            for refused in problems:
                log.error("cannot start: %s", refused)
            return EXIT_STARTUP
        if (problem := startup.upstream_problem(config)) is not None:
            log.warning("%s; serving anyway: requests get 502 and /readyz says 503 until it does", problem)
        log.info("%s", startup.raise_nofile())  # (a worker inherits its supervisor's)
    argv = worker_argv(args.config or default_config_path(), host=args.host, port=args.port, upstream=args.upstream,
                       loop=args.loop)
    return run(config, load_config, workers=args.workers, worker_argv=argv, loop=args.loop)


def _workers(value: str) -> int:
    """``--workers``: a whole number >= 1, or ``auto`` for one a CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'auto', got {value!r}")
    return int(value)


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from . import demo  # aiohttp is only needed here
    from .logs import setup

    def ready(running: demo.Demo) -> None:
        print("corsproxy demo: CORS blocked, then allowed.\n"
              f"  Open {running.page_url} in your browser and press the buttons.\n"
              f"  page       {running.page_url}\n"
              f"  corsproxy  {running.proxy_url}  (rules: demo-page allows the page on /api/**; private does not)\n"
              f"  API        {running.api_url}  (a sample API that sends no CORS headers)\n"
              "Press Ctrl-C to stop.", flush=True)

    setup("info", "text")
    try:
        return asyncio.run(demo.run(args.port, ready))
    except demo.PortInUse as exc:
        print(f"corsproxy demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C before the servers were up
        return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    print((resources.files("corsproxy") / "presets" / f"{args.preset}.yaml").read_text(encoding="utf-8"), end="")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    warnings = lint(config)
    if args.json:
        print(json.dumps(describe(config), indent=2))
    else:
        print(f"{config.source}: OK, upstream {config.upstream.url}, {len(config.rules)} rule(s)")
        for rule in config.rules:
            print(f"  {rule.name}: paths {', '.join(rule.paths.patterns)}; origins "
                  f"{', '.join(_show_origins(rule))}; methods {', '.join(rule.allow_methods)}"
                  f"{'; credentials' if rule.allow_credentials else ''}"
                  f"{'; ' + rule.mode if rule.mode != 'enforce' else ''}")
    for warning in warnings:
        print(warning, file=sys.stderr)
    return EXIT_CONFIG if args.strict and warnings else EXIT_OK


def _show_origins(rule: Rule) -> list[str]:
    """Each entry as written; a {file:} or {env:} one as its count (a SaaS list holds 100,000)."""
    sources = {source.index: source for source in rule.origin_sources}
    return [f"{s.kind} {s.name} ({len(s.entries)} origins)" if (s := sources.get(i)) else _show_origin(entry)
            for i, entry in enumerate(rule.allow_origins)]


def _show_origin(entry: object) -> str:
    return f"regex {entry['regex']}" if isinstance(entry, dict) else str(entry)


def _suggest(args: argparse.Namespace) -> int:
    from . import suggest

    path = args.config or default_config_path()
    config = load(path)
    try:
        seen = list(_seen(args))
    except (OSError, ValueError) as exc:  # an unreachable admin URL, a missing log file, a non-JSON answer
        print(f"corsproxy suggest: cannot read what the proxy saw: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    result = suggest.plan(config, seen, max(args.min_count, 1))
    text = Path(path).read_text(encoding="utf-8")
    new, shared = suggest.edit(text, config.source, result.changes) if result.changes else (text, [])
    result.changes = [change for change in result.changes if change not in shared]
    result.notes += [suggest.shared_note(change) for change in shared]
    diff = suggest.unified_diff(text, new, _patch_path(path), config, result.changes)
    print(f"suggest: {sum(s.count for s in seen)} decision(s) read; {len(result.changes)} change(s)"
          + (", written to " + path if args.write and diff else ""), file=sys.stderr)
    for line in suggest.changes_text(result.changes):
        print(f"  {line}", file=sys.stderr)
    for note in result.notes:
        print(f"  {note.kind}: {note.text}" + (f" [{note.count}x]" if note.count else ""), file=sys.stderr)
    sys.stdout.write(diff)
    if args.write and diff:
        _replace(path, new)
    return EXIT_OK


def _seen(args: argparse.Namespace) -> Iterator[Seen]:
    from . import suggest

    if args.admin:
        import urllib.request

        url = args.admin.rstrip("/")
        url = url if url.endswith("/decisions") else url + "/decisions"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:  # the user's own admin listener
            yield from suggest.from_decisions(json.load(resp))
        return
    for name in args.log or ["-"]:
        if name == "-":
            yield from suggest.from_log_lines(sys.stdin)
        else:
            with open(name, encoding="utf-8", errors="replace") as lines:
                yield from suggest.from_log_lines(lines)


def _patch_path(path: str) -> str:
    """The config's path as ``git apply`` reads it: from the top of its git work tree, else from here."""
    full = Path(path).resolve()
    for parent in full.parents:
        if (parent / ".git").exists():
            return full.relative_to(parent).as_posix()
    return Path(os.path.relpath(full)).as_posix()


def _replace(path: str, text: str) -> None:
    """Write in one step (a watching proxy never reads half a file), through a symlink to its target."""
    real = Path(os.path.realpath(path))
    tmp = real.with_name(f".{real.name}.suggest.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, real.stat().st_mode & 0o7777)
    os.replace(tmp, real)


def _explain(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        request = _browser_request(args)
    except ValueError as exc:
        print(f"corsproxy explain: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    lines, code = explain(config, request)
    print("\n".join(lines))
    return code


def _browser_request(args: argparse.Namespace) -> BrowserRequest:
    """The request to explain, from the flags or from the curl command after ``--``."""
    if args.curl:
        request = from_curl(args.curl, args.origin)
    else:
        target = args.path or "/"
        if args.url is not None or "://" in target:  # a URL pasted as --path matched no rule before
            target = target_of(args.url or target)
        request = BrowserRequest(args.origin, args.method, target, tuple(header_arg(h) for h in args.header),
                                 force_preflight=args.preflight)
    if not request.origin:
        raise ValueError("no Origin: give --origin ORIGIN (the page's origin, e.g. https://app.example.com), or a "
                         "copied request with an Origin header; without one it is not a CORS request")
    if args.preflight and not request.force_preflight:
        request = dataclasses.replace(request, force_preflight=True)
    return request
