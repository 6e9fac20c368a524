"""The routes.yaml schema: one frozen pydantic model per section, and Config.

The schema is a contract relied on by outside tests, so every
model forbids unknown keys: a typo must fail loudly at startup rather than
silently route a private module to the wrong place. Reading the file, ${VAR}
expansion and errors by line are config/loader.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from goproxy_router.config.values import ByteSize, HttpURL, Networks, Origin, parse_listen, parse_size
from goproxy_router.protocol.pathmatch import PatternError
from goproxy_router.protocol.paths import sumdb_name_problem
from goproxy_router.protocol.patterns import validate_glob

# Route and upstream names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers an operator must not set on upstream requests: the HTTP client owns them.
_RESERVED_HEADERS = frozenset({
    "host", "connection", "content-length", "transfer-encoding", "te", "trailer",
    "upgrade", "keep-alive", "proxy-connection", "accept-encoding",
})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Per-attempt limits, and a deadline for the whole request to get an answer started.

    The deadline covers every attempt, retry, backoff and hedge until an
    upstream's response begins; once a body streams only `read` (the longest
    silence) applies, so a long zip over a slow link is never cut. `send` is
    the other direction: the longest a client may take to accept more of its
    answer before its connection is dropped (nginx's send_timeout), so a
    client that stopped reading does not hold a fill others wait for, nor a
    cached file's lease, for ever.
    """

    connect: Annotated[float, Field(gt=0)] = 5.0
    headers: Annotated[float, Field(gt=0)] = 30.0
    read: Annotated[float, Field(gt=0)] = 30.0
    deadline: Annotated[float, Field(gt=0)] = 60.0
    send: Annotated[float, Field(gt=0)] = 60.0


class TimeoutOverrides(_Strict):
    connect: Annotated[float, Field(gt=0)] | None = None
    headers: Annotated[float, Field(gt=0)] | None = None
    read: Annotated[float, Field(gt=0)] | None = None
    deadline: Annotated[float, Field(gt=0)] | None = None
    send: Annotated[float, Field(gt=0)] | None = None

    def over(self, base: Timeouts) -> Timeouts:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Upstream(_Strict):
    url: HttpURL
    countries: tuple[str, ...] = ("*",)
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    weight: Annotated[float, Field(gt=0)] = 1.0
    priority: Annotated[int, Field(ge=0, le=9)] = 0
    probe_path: str = "/"          # what active probes fetch; any answer below 500 is "alive"
    # Other origins this upstream's redirects may lead to (router/upstream/redirects.py).
    redirects: tuple[Origin, ...] = ()

    @field_validator("probe_path")
    @classmethod
    def _probe_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("probe_path must be a URL path starting with '/'")
        return value

    @field_validator("countries", mode="before")
    @classmethod
    def _countries(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        codes = []
        for code in value:
            code = str(code).strip().upper()
            if code != "*" and not re.fullmatch(r"[A-Z]{2}", code):
                raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code or '*'")
            codes.append(code)
        if not codes:
            raise ValueError("list at least one country, or '*' for near everyone")
        return tuple(codes)

    @model_validator(mode="after")
    def _one_credential(self) -> Upstream:
        from yarl import URL

        url = URL(self.url)
        if (url.user or url.password) and any(h.lower() == "authorization" for h in self.headers):
            raise ValueError("credentials in the url and an Authorization header: keep one")
        if url.scheme == "https" and any(o.startswith("http:") for o in self.redirects):
            raise ValueError("redirects: an https upstream is never followed to http")
        return self

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is managed by the router and cannot be set")
        return value


class Allow(_Strict):
    """Who may fetch a route's modules: by address, by token, or both."""

    cidrs: Networks = ()
    tokens_env: str | None = None
    require: Literal["any", "all"] = "any"

    @model_validator(mode="after")
    def _something(self) -> Allow:
        if not self.cidrs and not self.tokens_env:
            raise ValueError("allow needs cidrs, tokens_env, or both")
        return self


class Retry(_Strict):
    """Failover after a failure, with backoff, capped by a budget shared by all requests."""

    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4   # first try included; cycles the order
    backoff_base: Annotated[float, Field(ge=0)] = 0.02      # seconds; full jitter
    backoff_cap: Annotated[float, Field(ge=0)] = 1.0
    budget_ratio: Annotated[float, Field(ge=0, le=10)] = 0.2   # retries + hedges per request ...
    budget_floor: Annotated[float, Field(ge=0)] = 10.0         # ... plus this many per second
    budget_window: Annotated[float, Field(gt=0)] = 10.0        # seconds over which it is counted


RequestKindName = Literal["list", "info", "mod", "zip", "latest", "sumdb"]


class Hedge(_Strict):
    """A second request to the next upstream when the first is slower than its own p95.

    The delay comes from the running upstream's own samples, else the route's
    other upstreams' pooled, else its probes (small kinds only), else the cold
    default (router/upstream/hedging.py). A zip hedges only until headers arrive.
    """

    enabled: bool = True
    kinds: tuple[RequestKindName, ...] = ("list", "info", "mod", "latest", "zip")
    percentile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    min_delay: Annotated[float, Field(ge=0)] = 0.025   # seconds: never hedge sooner
    min_samples: Annotated[int, Field(ge=1)] = 20      # of the upstream's recent latencies
    probe_samples: Annotated[int, Field(ge=1)] = 1     # probe measurements that set a delay ...
    probe_factor: Annotated[float, Field(ge=1)] = 3.0  # ... times this: a probe is the cheapest request
    cold_delay: Annotated[float, Field(ge=0)] = 1.0    # seconds: with nothing measured yet
    zip_min_delay: Annotated[float, Field(ge=0)] = 0.025   # a zip's floor, ...
    zip_factor: Annotated[float, Field(ge=1)] = 2.0        # ... small kinds' delay times this
                                                           # until zips are measured, ...
    zip_cold_delay: Annotated[float, Field(ge=0)] = 2.0    # ... and with nothing measured at all
    max_in_flight: Annotated[int, Field(ge=1)] = 32    # no hedge to an upstream this busy


class Resume(_Strict):
    """A stalled zip body resumed from the byte reached (router/forwarding/resume.py).

    A stall is `stall_factor` times the seconds the next 64 KiB should take at the
    body's observed throughput, never less than `stall_floor` nor more than
    `timeouts.read`, which stays the longest silence a body is allowed.
    """

    enabled: bool = True
    max_resumes: Annotated[int, Field(ge=0, le=10)] = 2     # per body
    stall_floor: Annotated[float, Field(gt=0)] = 5.0         # seconds
    stall_factor: Annotated[float, Field(gt=0)] = 20.0


class Route(_Strict):
    name: str
    match: tuple[str, ...]
    upstreams: tuple[str, ...]
    sumdb: bool = True
    allow: Allow | None = None
    timeouts: TimeoutOverrides = TimeoutOverrides()
    retry: Retry | None = None       # replaces the top-level retry for this route
    hedge: Hedge | None = None       # replaces the top-level hedge for this route

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("route names are letters, digits, '.', '_' and '-'")
        return value

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: Any) -> tuple[str, ...]:
        """Accept a list and/or GOPRIVATE-style comma lists; validate each glob."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list of module path patterns")
        globs: list[str] = []
        for entry in value:
            for glob in str(entry).split(","):
                glob = glob.strip().rstrip("/")
                if glob:
                    try:
                        validate_glob(glob)
                    except PatternError as exc:
                        raise ValueError(str(exc)) from None
                    globs.append(glob)
        if not globs:
            raise ValueError("a route needs at least one pattern (use '*' for every module)")
        return tuple(globs)

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a route needs at least one upstream")
        if len(set(value)) != len(value):
            raise ValueError("an upstream is listed twice")
        return value


class SumDB(_Strict):
    name: str
    url: HttpURL
    mirrors: tuple[HttpURL, ...] = ()
    key: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        """host[/path], the go command's rule (see protocol.sumdb_name_problem)."""
        if (problem := sumdb_name_problem(value)) is not None:
            raise ValueError(f"{value!r} is not a checksum database name: {problem}")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+", value):
            raise ValueError("key must be a note verifier key: <name>+<hash>+<base64 key>")
        return value


class GeoIP(_Strict):
    database: str | None = None
    trusted_proxies: Networks = ()


PluginSpec = str | dict[str, dict[str, Any] | None]


class BreakerSettings(_Strict):
    threshold: Annotated[int, Field(ge=1)] = 5          # consecutive failures that eject
    ejection: Annotated[float, Field(gt=0)] = 30.0      # seconds x times ejected ...
    max_ejection: Annotated[float, Field(gt=0)] = 300.0  # ... up to this
    half_open_trials: Annotated[int, Field(ge=1)] = 1


class Scoring(_Strict):
    plugins: tuple[PluginSpec, ...] = ("geo_affinity", "latency", "breaker", "weights")
    plugin_dirs: tuple[str, ...] = ()
    decay: Annotated[float, Field(gt=0)] = 10.0         # seconds: latency EWMA time constant
    default_rtt: Annotated[float, Field(gt=0)] = 0.25   # seconds assumed before any sample
    penalty_rtt: Annotated[float, Field(gt=0)] = 1.0    # the least a failure counts as
    breaker: BreakerSettings = BreakerSettings()


class Probes(_Strict):
    """Active probes keep idle upstreams' latency fresh and notice dead ones early."""

    enabled: bool = True
    interval: Annotated[float, Field(gt=0)] = 10.0      # seconds, jittered +-20 %
    timeout: Annotated[float, Field(gt=0)] = 3.0
    startup_wait: Annotated[float, Field(ge=0)] = 2.0   # seconds serving waits for the first round


DEFAULT_CACHE_MAX_SIZE = 10 * 10**9     # 10GB: a disk cache is bounded unless asked otherwise
DEFAULT_CACHE_MIN_FREE = 10**9         # 1GB left free on the cache's filesystem


def _max_size(value: Any) -> int | None:
    """A size, or "unlimited" (None) said in so many words: an unbounded cache fills the disk."""
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    if value is None:
        raise ValueError("give a size such as 10GB, or 'unlimited' for no limit (not recommended)")
    return parse_size(value)


class Cache(_Strict):
    """Immutable artifacts on disk (Go's download-cache layout); metadata in memory.

    A relative `dir` is resolved against the directory of routes.yaml (see
    loader.read_config), not the process's working directory, so the cache does not
    move with wherever the service happened to be started.
    """

    dir: str = "./cache"
    max_size: Annotated[int | None, BeforeValidator(_max_size)] = DEFAULT_CACHE_MAX_SIZE
    memory: ByteSize = 64 * 2**20                           # small .info/.mod kept in memory
    # Cached files are copied through 1 MiB buffers (up to this much memory) while one is
    # free, as nginx's `sendfile off` does, else sent with sendfile: copying is faster per
    # stream here, sendfile cheaper per byte when many run at once (BENCHMARKS.md). 0: sendfile.
    send_buffers: ByteSize = 8 * 2**20
    metadata_ttl: Annotated[float, Field(ge=0)] = 60.0      # list, @latest, non-canonical .info
    negative_ttl: Annotated[float, Field(ge=0)] = 10.0      # remembered 404/410 answers
    stale_max_age: Annotated[float, Field(ge=0)] = 86400.0  # served when every upstream fails
    # A checksum database's `latest` and partial tiles (full tiles and lookups never
    # change: kept on disk for good); also served stale, up to stale_max_age.
    sumdb_ttl: Annotated[float, Field(ge=0)] = 60.0
    # Free space the cache leaves on its filesystem: below it, new fills are served
    # uncached (and /readyz, /metrics say the cache is degraded). 0: fill until ENOSPC.
    min_free: ByteSize = DEFAULT_CACHE_MIN_FREE


class Pool(_Strict):
    """The edge's own connections to upstreams: at most `per_upstream` open to one upstream
    host at once; a request beyond that waits (goproxy_upstream_pool_wait_seconds), and
    that wait is never charged to the upstream. Read at start-up."""

    per_upstream: Annotated[int, Field(ge=1, le=10000)] = 64


class Admin(_Strict):
    """Who may see /_router/* and /metrics: these networks, or a bearer of the token."""

    cidrs: Networks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    token_env: str | None = None


class Limits(_Strict):
    """What client connections may hold (nginx's worker_connections, client_header_timeout
    and keepalive_timeout), so silent or slow clients cannot use up the process's files.

    A connection has `header_timeout` seconds to send its first request head, and
    `keepalive_timeout` after each answer to send the whole next one. Over
    `max_connections` (per process), the longest-idle connection is closed to
    make room, or the new one is answered 503 when none is idle (router/serving/connections.py).
    """

    max_connections: Annotated[int, Field(ge=1)] = 10_000
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    keepalive_timeout: Annotated[float, Field(gt=0)] = 15.0

    @model_validator(mode="after")
    def _head_within_keepalive(self) -> Limits:
        # aiohttp also closes a connection that is silent for keepalive_timeout from its start.
        if self.header_timeout > self.keepalive_timeout:
            raise ValueError("header_timeout must not exceed keepalive_timeout")
        return self


class Config(_Strict):
    listen: str = "0.0.0.0:8080"
    upstreams: dict[str, Upstream]
    routes: tuple[Route, ...]
    sumdb: tuple[SumDB, ...] = ()
    geoip: GeoIP = GeoIP()
    scoring: Scoring = Scoring()
    cache: Cache = Cache()
    timeouts: Timeouts = Timeouts()
    retry: Retry = Retry()
    hedge: Hedge = Hedge()
    resume: Resume = Resume()
    probes: Probes = Probes()
    pool: Pool = Pool()
    admin: Admin = Admin()
    limits: Limits = Limits()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    def route_timeouts(self, route: Route) -> Timeouts:
        return route.timeouts.over(self.timeouts)
