"""The goproxy-router command line: serve, validate, explain, check."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from goproxy_router import __version__
from goproxy_router.base.logs import log_event, setup_logging
from goproxy_router.config.loader import ConfigError, LoadedConfig, load_config, read_config
from goproxy_router.config.safety import config_warnings
from goproxy_router.config.schema import Config
from goproxy_router.config.values import parse_listen
from goproxy_router.routing.admin import AdminPolicy
from goproxy_router.routing.routes import RouteTable
from goproxy_router.scoring.api import PluginError
from goproxy_router.scoring.loader import load_plugins

log = logging.getLogger("router.cli")

DEFAULT_CONFIG = "routes.yaml"
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _load(path: str) -> Config:
    """Load and fully check a config, including what only the environment can tell."""
    return _read(path).config


def _read(path: str) -> LoadedConfig:
    """_load, keeping the YAML for warnings that name a line."""
    loaded = read_config(path)
    config = loaded.config
    RouteTable(config)  # resolves tokens_env and compiles every pattern
    AdminPolicy.from_config(config, None)   # resolves admin.token_env
    try:
        load_plugins(config.scoring.plugins, config.scoring.plugin_dirs, set(config.upstreams))
    except PluginError as exc:
        raise ConfigError([loaded.error(("scoring", "plugins", *p.loc), p.message)
                           for p in exc.problems] or [f"{path}: scoring.plugins: {exc}"]) from None
    return loaded


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from goproxy_router.base.compat import CompatError, verify
    from goproxy_router.runtime.server import ServeOptions, StartupError, check_listen, run_workers, serve

    try:
        verify()
    except CompatError as exc:
        print(f"goproxy-router: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        loaded = _read(args.config)
        config = loaded.config
        host, port = parse_listen(args.listen or config.listen)
    except (ConfigError, ValueError) as exc:
        print(f"goproxy-router: cannot start:\n{exc}", file=sys.stderr)
        return 1
    for warning in config_warnings(loaded, args.config):
        log_event(log, logging.WARNING, "config warning", warning=warning)
    if args.workers < 1:
        print("goproxy-router: --workers must be at least 1", file=sys.stderr)
        return 2
    options = ServeOptions(host, port, args.shutdown_timeout, args.config, args.watch_interval,
                           reuse_port=args.workers > 1)
    try:
        if args.workers == 1:
            uvloop.run(serve(config, options, _load))
            return 0
        check_listen(host, port)
    except StartupError as exc:
        print(f"goproxy-router: {exc}", file=sys.stderr)
        return 1
    return run_workers(args.workers, lambda: uvloop.run(serve(config, options, _load)))


def _cmd_validate(args: argparse.Namespace) -> int:
    """Exit 1 on an error; warnings (risky but valid settings) go to stderr and keep 0."""
    try:
        loaded = _read(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    config = loaded.config
    for warning in config_warnings(loaded, args.config):
        print(warning, file=sys.stderr)
    print(f"{args.config}: OK ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
          f"{len(config.sumdb)} checksum databases)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Probe every upstream and checksum database: 0 all routes served, 1 a route is not, 2 bad config."""
    from goproxy_router.ops.check.report import run

    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        print(f"goproxy-router: --timeout must be a positive number of seconds, not {args.timeout}",
              file=sys.stderr)
        return 2
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return run(config, args.timeout, as_json=args.json)


def _cmd_explain(args: argparse.Namespace) -> int:
    """Rank the upstreams for MODULE: locally from the config, or live from --server."""
    if args.server:
        return _explain_remote(args)
    from goproxy_router.protocol.paths import ProtocolError
    from goproxy_router.routing.geo import parse_ip
    from goproxy_router.serving.edge import EdgeState
    from goproxy_router.upstream.client import UpstreamClient
    from goproxy_router.upstream.stats import StatsRegistry, StatsSettings

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    client_ip = parse_ip(args.client_ip) if args.client_ip else None
    if args.client_ip and client_ip is None:
        print(f"goproxy-router: --client-ip {args.client_ip!r} is not an IP address", file=sys.stderr)
        return 2
    state = EdgeState(config, UpstreamClient(),
                      StatsRegistry(StatsSettings.from_scoring(config.scoring)))
    try:
        report = state.explain(args.module, client_ip)
    except ProtocolError as exc:
        print(f"goproxy-router: {exc.reason}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"goproxy-router: {exc}", file=sys.stderr)
        return 1
    finally:
        state.geo.close()
    _print_explain(report, args.json, live=False)
    return 0


def _admin_token(args: argparse.Namespace) -> tuple[str | None, str]:
    """The admin token to send (--token, else admin.token_env of --config), and where it came from."""
    import os

    if args.token:
        return args.token.strip(), "--token"
    if args.config == DEFAULT_CONFIG and not os.path.exists(args.config):
        return None, f"no --token, and no {DEFAULT_CONFIG} here to name admin.token_env"
    try:           # only needed if the server asks: a config that fails to load is a reason
        variable = load_config(args.config).admin.token_env
    except ConfigError as exc:
        return None, f"no --token, and {args.config} did not load: {exc.errors[0]}"
    if not variable:
        return None, f"no --token, and {args.config} sets no admin.token_env"
    token = os.environ.get(variable, "").strip()
    if not token:
        return None, f"no --token, and ${variable} (admin.token_env in {args.config}) is not set"
    return token, f"${variable} (admin.token_env in {args.config})"


def _explain_remote(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    token, source = _admin_token(args)
    query = {"module": args.module} | ({"client_ip": args.client_ip} if args.client_ip else {})
    url = args.server.rstrip("/") + "/_router/explain?" + urllib.parse.urlencode(query)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as response:
            report = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            sent = f"the token from {source} was refused" if token else source
            print(f"goproxy-router: {url}: HTTP {exc.code}: the server wants the admin token "
                  f"({sent}); pass --token TOKEN, or --config with the server's routes.yaml and "
                  "its admin.token_env variable set", file=sys.stderr)
        else:
            print(f"goproxy-router: {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}",
                  file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"goproxy-router: {url}: {exc}", file=sys.stderr)
        return 1
    _print_explain(report, args.json, live=True)
    return 0


def _print_explain(report: dict[str, Any], as_json: bool, live: bool) -> None:
    if as_json:
        import json

        print(json.dumps(report, indent=2))
        return
    where = (f"{report['client_ip']} (country {report['country'] or 'unknown'}, "
             f"continent {report['continent'] or 'unknown'})" if report["client_ip"]
             else "unknown (no --client-ip): no plugin punishes an unknown country")
    print(f"module:  {report['module']}\nroute:   {report['route']}\nclient:  {where}")
    if not live:
        print("stats:   none yet (a fresh edge); --server URL explains a running one with live stats")
    if report["panic"]:
        print("panic:   every upstream is vetoed, so all are used")
    plugins = list(report["upstreams"][0]["factors"]) if report["upstreams"] else []
    header = ["rank", "upstream", "cost", *plugins, "state", "veto"]
    rows = [[str(u["rank"] or "-"), u["name"], f"{u['cost']:.4g}",
             *[f"{u['factors'][p]:.4g}" if isinstance(u["factors"][p], float) else "veto"
               for p in plugins],
             u["breaker"], u["veto"] or ""] for u in report["upstreams"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("cost = product of the plugin factors; lower wins (" + ", ".join(plugins) + ")")
    why = [(u["name"], plugin, text) for u in report["upstreams"]
           for plugin, text in u.get("reasons", {}).items()]
    if why:
        width = max(len(name) for name, _, _ in why)
        print("why:")
        for name, plugin, text in why:
            print(f"  {name.ljust(width)}  {plugin}: {text}")
    hedge = report.get("hedge") or {}
    if hedge:
        width = max(len(name) for name in hedge)
        print("hedge:   an attempt still unanswered after this is hedged to the next upstream:")
        for name, delays in hedge.items():
            print(f"  {name.ljust(width)}  {_hedge_delay(delays['small'])}, "
                  f"zip {_hedge_delay(delays['zip'])}")


def _hedge_delay(delay: dict[str, Any] | None) -> str:
    return "off" if delay is None else f"{delay['seconds']:.3g}s ({delay['source']})"


class _HelpFormatter(argparse.HelpFormatter):
    """Says each option's default, unless its help already does or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        if (not action.option_strings or "default" in text or text == argparse.SUPPRESS
                or any(default is nothing for nothing in (None, False, argparse.SUPPRESS))):
            return action.help
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    # --log-level goes before or after the subcommand; SUPPRESS keeps a subcommand
    # from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                        help="log threshold (default: info)")
    parser = argparse.ArgumentParser(
        prog="goproxy-router", formatter_class=formatter,
        description="A GeoIP-aware, failover-routing reverse proxy for Go modules.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log threshold")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[common],
                                  formatter_class=formatter)
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="routes.yaml path")
        return sub

    serve_cmd = command("serve", "serve the GOPROXY protocol")
    serve_cmd.add_argument("--listen", help="HOST:PORT (default: listen: in the config)")
    serve_cmd.add_argument("--shutdown-timeout", type=float, default=30.0,
                           help="seconds in-flight downloads may take after SIGTERM")
    serve_cmd.add_argument("--workers", type=int, default=1,
                           help="processes sharing the port (SO_REUSEPORT) and the disk cache")
    serve_cmd.add_argument("--watch-interval", type=float, default=2.0,
                           help="seconds between checks of the config file for changes "
                                "(0: reload only on SIGHUP)")
    serve_cmd.set_defaults(run=_cmd_serve)

    validate_cmd = command("validate", "check a routes.yaml and exit 0 or 1")
    validate_cmd.set_defaults(run=_cmd_validate)

    check_cmd = command("check", "probe every upstream and checksum database; "
                                 "exit 1 if a route has no working upstream")
    check_cmd.add_argument("--timeout", type=float, default=None,
                           help="seconds allowed for each target, all phases together (default: as "
                                "long as serve would wait, the longest timeouts.connect and "
                                "timeouts.headers of the routes using it)")
    check_cmd.add_argument("--json", action="store_true",
                           help="print one JSON object (targets, routes, sumdb, notes) instead of a table")
    check_cmd.set_defaults(run=_cmd_check)

    explain_cmd = command("explain", "why each upstream ranks where it does")
    explain_cmd.add_argument("module", help="module path, e.g. golang.org/x/mod")
    explain_cmd.add_argument("--client-ip", help="rank as for a client at this address "
                                                 "(default: unknown)")
    explain_cmd.add_argument("--server", help="ask a running router (its live stats), e.g. "
                                              "http://127.0.0.1:8080 (default: explain locally)")
    explain_cmd.add_argument("--token", help="with --server: the admin Bearer token (default: the "
                                             "variable named by admin.token_env in --config)")
    explain_cmd.add_argument("--json", action="store_true", help="print JSON")
    explain_cmd.set_defaults(run=_cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.run(args)
    except BrokenPipeError:          # e.g. `goproxy-router explain ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
