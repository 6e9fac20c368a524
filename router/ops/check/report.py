"""`check`'s output: the table, the JSON, the verdicts under them, the exit status.

Every string printed comes from results that `check_all` already scrubbed of
the config's secrets. Exit status 0 when every route has a working upstream,
else 1; a checksum database with no working URL is only a warning.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from yarl import URL

from goproxy_router.config.schema import Config
from goproxy_router.ops.check.probe import check_all
from goproxy_router.ops.check.targets import CheckResult, RouteVerdict, route_verdicts, shorter_than_routes
from goproxy_router.ops.check.wire import is_ip

_COLUMNS = ("KIND", "NAME", "URL", "ROUTES", "STATUS", "DNS ms", "CONNECT ms", "TLS ms",
            "FIRST BYTE ms", "DIAGNOSIS")
_NUMERIC = {5, 6, 7, 8}


def _cell_ms(value: float | None, applicable: bool = True) -> str:
    if value is not None:
        return f"{value:.1f}"
    return "-" if applicable else "n/a"


def render_table(results: Sequence[CheckResult]) -> str:
    """Aligned plain text, one row per result; "-" = not reached, "n/a" = not applicable."""
    rows = [list(_COLUMNS)]
    for r in results:
        url = URL(r.url)
        rows.append([
            r.kind, r.name, r.url, ",".join(r.routes) or "-", r.status,
            _cell_ms(r.dns_ms, applicable=not is_ip(url.raw_host or "")),
            _cell_ms(r.connect_ms),
            _cell_ms(r.tls_ms, applicable=url.scheme == "https"),
            _cell_ms(r.first_byte_ms),
            r.diagnosis,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in _NUMERIC and row is not rows[0] else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Summary:
    """The verdicts under the table: per route, per checksum database, and notes."""

    routes: list[tuple[RouteVerdict, str]]        # (verdict, its line)
    sumdb: list[tuple[str, list[str], str]]       # (database, its working URLs' names, its line)
    notes: list[str]

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.routes] + [line for *_, line in self.sumdb] + self.notes

    @property
    def problems(self) -> list[str]:
        """The exit-1 reasons: routes without a working upstream."""
        return [line for verdict, line in self.routes if not verdict.ok]


def summarize(config: Config, results: Sequence[CheckResult], timeout: float | None = None) -> Summary:
    by_name = {r.name: r for r in results if r.kind == "upstream"}
    routes: list[tuple[RouteVerdict, str]] = []
    for verdict in route_verdicts(config, results):
        total = len(verdict.upstreams)
        if verdict.ok:
            line = (f"route {verdict.route}: ok, {len(verdict.working)} of {total} upstreams "
                    f"working ({', '.join(verdict.working)})")
        else:
            why = "; ".join(f"{u}: {by_name[u].diagnosis}" for u in verdict.upstreams if u in by_name)
            line = f"route {verdict.route}: NO WORKING UPSTREAM ({why})"
        routes.append((verdict, line))
    sumdb: list[tuple[str, list[str], str]] = []
    for db in config.sumdb:
        rows = [r for r in results if r.kind == "sumdb"
                and (r.name == db.name or r.name.startswith(f"{db.name} mirror "))]
        working = [r.name for r in rows if r.ok]
        if working:
            line = f"checksum database {db.name}: ok ({', '.join(working)})"
        else:
            line = (f"checksum database {db.name}: warning: no URL works; the go command's "
                    "checksum lookups through this router will fail")
        sumdb.append((db.name, working, line))
    cut = any(r.failure in ("timeout", "slow") for r in results)
    note = shorter_than_routes(config, timeout) if cut else None
    return Summary(routes, sumdb, [note] if note else [])


def render_json(results: Sequence[CheckResult], summary: Summary) -> str:
    """One object: every row ("targets"), each route's verdict, each database's, any notes."""
    return json.dumps({
        "targets": [r.to_json() for r in results],
        "routes": [{"name": v.route, "ok": v.ok, "upstreams": list(v.upstreams),
                    "working": list(v.working),
                    "timeouts": {"connect": v.timeouts.connect, "headers": v.timeouts.headers},
                    "summary": line} for v, line in summary.routes],
        "sumdb": [{"name": name, "ok": bool(working), "working": working, "summary": line}
                  for name, working, line in summary.sumdb],
        "notes": summary.notes,
    }, indent=2)


def run(config: Config, timeout: float | None = None, as_json: bool = False,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Check, print, and return the exit status (0 every route has a working upstream, else 1).

    `timeout` None: each target is given as long as serve would wait for it.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    results = asyncio.run(check_all(config, timeout))
    summary = summarize(config, results, timeout)
    if as_json:
        print(render_json(results, summary), file=out)
        for problem in summary.problems:
            print(f"goproxy-router: {problem}", file=err)
    else:
        print(render_table(results), file=out)
        print(file=out)
        print("\n".join(summary.lines), file=out)
    return 1 if summary.problems else 0
