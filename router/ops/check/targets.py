"""What `check` checks and what it concludes, as plain data (no I/O).

`targets()` lists every upstream (with the limits of the routes using it) and
every checksum database URL; a `CheckResult` is one row of the report;
`route_verdicts()` says which routes have a working upstream, the contract
behind the command's exit status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from goproxy_router.config.schema import Config, Timeouts
from goproxy_router.upstream.targets import UpstreamTarget, sumdb_targets

TargetKind = Literal["upstream", "sumdb"]          # what a CheckTarget is
# how a check failed: the class of a CheckResult's diagnosis
FailureClass = Literal["dns", "refused", "connect", "tls", "timeout", "slow", "http", "protocol"]


@dataclass(frozen=True)
class Limit:
    """How long `serve` waits for a target on behalf of one route (or of the sumdb proxy)."""

    route: str | None            # None: the top-level timeouts (checksum databases, unused upstreams)
    connect: float
    headers: float

    @property
    def who(self) -> str:
        return f"route {self.route}" if self.route is not None else "serve"


@dataclass(frozen=True)
class CheckTarget:
    """One URL to check: an upstream or one checksum database URL."""

    kind: TargetKind
    target: UpstreamTarget       # base URL without credentials, headers to send, secrets
    path: str                    # the path fetched, appended to the URL's own path
    routes: tuple[str, ...]
    limits: tuple[Limit, ...]
    db_name: str | None = None   # for a checksum database URL: the database's name

    @property
    def name(self) -> str:
        return self.target.name


@dataclass
class CheckResult:
    """One row of the report. Times are milliseconds; None = not reached / not applicable."""

    kind: TargetKind
    name: str
    url: str
    routes: list[str]
    status: Literal["ok", "fail"]
    diagnosis: str
    failure: FailureClass | None = None
    http_status: int | None = None
    path: str = "/"
    address: str | None = None   # the IP:port connected to
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    first_byte_ms: float | None = None
    until_first_byte_ms: float | None = None   # from the start, DNS included: what timeouts.headers limits
    ok_for: list[str] = field(default_factory=list)   # the routes this upstream works for

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "url": self.url, "routes": self.routes,
            "status": self.status, "http_status": self.http_status, "path": self.path,
            "address": self.address, "dns_ms": self.dns_ms, "connect_ms": self.connect_ms,
            "tls_ms": self.tls_ms, "first_byte_ms": self.first_byte_ms,
            "until_first_byte_ms": self.until_first_byte_ms, "ok_for": self.ok_for,
            "failure": self.failure, "diagnosis": self.diagnosis,
        }


@dataclass(frozen=True)
class RouteVerdict:
    """One route's verdict: its upstreams, and those working for it."""

    route: str
    upstreams: tuple[str, ...]
    working: tuple[str, ...]
    timeouts: Timeouts

    @property
    def ok(self) -> bool:
        return bool(self.working)


def targets(config: Config) -> list[CheckTarget]:
    """Every upstream (config order), then every checksum database URL and mirror."""
    out: list[CheckTarget] = []
    top = Limit(None, config.timeouts.connect, config.timeouts.headers)
    for name, upstream in config.upstreams.items():
        routes = [r for r in config.routes if name in r.upstreams]
        limits = tuple(Limit(r.name, t.connect, t.headers)
                       for r, t in ((r, config.route_timeouts(r)) for r in routes)) or (top,)
        out.append(CheckTarget("upstream", UpstreamTarget.from_config(name, upstream),
                               upstream.probe_path, tuple(r.name for r in routes), limits))
    sumdb_routes = tuple(r.name for r in config.routes if r.sumdb)
    for db in config.sumdb:
        for target in sumdb_targets(db):
            out.append(CheckTarget("sumdb", target, "/latest", sumdb_routes, (top,), db_name=db.name))
    return out


def route_verdicts(config: Config, results: Sequence[CheckResult]) -> list[RouteVerdict]:
    """Per route: its upstreams, and those working for it (answering, and fast enough)."""
    ok_for = {r.name: r.ok_for for r in results if r.kind == "upstream"}
    return [RouteVerdict(route.name, route.upstreams,
                         tuple(u for u in route.upstreams if route.name in ok_for.get(u, ())),
                         config.route_timeouts(route))
            for route in config.routes]


def shorter_than_routes(config: Config, timeout: float | None) -> str | None:
    """A note for when --timeout may have cut a wait that a route's timeouts allow."""
    if timeout is None:
        return None
    longer = [f"route {r.name} {t.headers:g} s" for r, t in
              ((r, config.route_timeouts(r)) for r in config.routes) if t.headers > timeout]
    if not longer:
        return None
    return (f"note: --timeout {timeout:g} is shorter than timeouts.headers ({', '.join(longer)}): "
            "an upstream slower than that is reported as a timeout here, though serve would "
            "still wait for it; run without --timeout to wait as serve does")
