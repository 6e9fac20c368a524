"""routes.yaml: load, expand ${VAR}, validate, and report errors by key and line.

The schema is a contract relied on by outside tests, so every
model forbids unknown keys: a typo must fail loudly at startup rather than
silently route a private module to the wrong place.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from goproxy_router.config.secrets import redact, secret_values
from goproxy_router.protocol.paths import sumdb_name_problem
from goproxy_router.protocol.patterns import PatternError, validate_glob

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Headers an operator must not set on upstream requests: the HTTP client owns them.
_RESERVED_HEADERS = frozenset({
    "host", "connection", "content-length", "transfer-encoding", "te", "trailer",
    "upgrade", "keep-alive", "proxy-connection", "accept-encoding",
})


class ConfigError(Exception):
    """routes.yaml is unusable; `errors` holds one "file:line: key: problem" per fault."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR string such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


def _networks(values: Any) -> tuple[IPNetwork, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ValueError("expected a list of CIDRs")
    return tuple(_network(v) for v in values)


Networks = Annotated[tuple[IPNetwork, ...], BeforeValidator(_networks)]


def _http_url(value: str) -> str:
    from yarl import URL

    shown = redact(value)           # an error quotes the URL back: never its user:password@
    if any(c.isspace() for c in value.strip()):
        raise ValueError(f"{shown!r} must not contain white space")
    url = URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{shown!r} is not an http(s) URL with a host")
    if url.query_string or url.fragment:
        raise ValueError(f"{shown!r} must not have a query or fragment")
    return str(url).rstrip("/")


HttpURL = Annotated[str, AfterValidator(_http_url)]


def _origin(value: Any) -> str:
    """An origin, scheme://host[:port], for an upstream's `redirects`."""
    from yarl import URL

    if not isinstance(value, str):
        raise ValueError("expected an origin such as https://cdn.example")
    try:
        url = URL(value.strip())
    except ValueError:
        raise ValueError(f"{redact(value)!r} is not an origin such as https://cdn.example") from None
    if (url.scheme not in ("http", "https") or not url.host or url.user is not None
            or url.password is not None or url.path not in ("", "/") or url.query_string
            or url.fragment):
        raise ValueError(f"{redact(value)!r} is not an origin such as https://cdn.example "
                         "(scheme and host, maybe a port; no path)")
    return str(url.origin())


def parse_size(value: Any) -> int:
    """Turn "20GB", "512MiB" or a plain byte count into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 20GB or 512MiB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "B").upper()])


ByteSize = Annotated[int, BeforeValidator(parse_size)]


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
    redirects: tuple[Annotated[str, BeforeValidator(_origin)], ...] = ()

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
    """A second request to the next upstream when the first is slower than its own p95."""

    enabled: bool = True
    kinds: tuple[RequestKindName, ...] = ("list", "info", "mod", "latest")
    percentile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    min_delay: Annotated[float, Field(ge=0)] = 0.05    # seconds: never hedge sooner
    min_samples: Annotated[int, Field(ge=1)] = 20      # of the upstream's recent latencies


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
        if not _NAME.match(value):
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
    read_config), not the process's working directory, so the cache does not
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


def parse_listen(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[v6]:PORT"."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen {value!r} must be HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# ---------------------------------------------------------------------------
# YAML with line numbers


class _Document:
    """The composed YAML tree, kept to point errors at their line.

    It also remembers what ${VAR} expansion put where: `from_env` holds the
    locations of values that came (at least partly) from the environment,
    `env_values` the values substituted. An error message may quote the value
    it refuses; the substituted ones are redacted from it, since a variable
    is where secrets live (a token in a URL, a header), and such a message
    reaches stderr, logs and a reload's ERROR line.
    """

    def __init__(self, source: str, root: Node | None) -> None:
        self.source = source
        self.root = root
        self.from_env: set[Loc] = set()
        self.env_values: tuple[str, ...] = ()

    def line_of(self, loc: Loc) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node else None
        for part in loc:
            if isinstance(node, MappingNode):
                for key, value in node.value:
                    if isinstance(key, ScalarNode) and key.value == str(part):
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, loc: Loc, message: str) -> str:
        if self.env_values:
            message = redact(message, self.env_values)
        line = self.line_of(loc)
        where = f"{self.source}:{line}" if line else self.source
        key = format_loc(loc)
        return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def format_loc(loc: Loc) -> str:
    """("routes", 0, "upstreams", 1) -> "routes[0].upstreams[1]"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _expand_env(node: Node | None, env: Mapping[str, str], doc: _Document) -> list[str]:
    """Replace ${VAR} in string scalars in place; "$$" is a literal "$".

    Records on `doc` where a value came from the environment and what was
    substituted (see _Document).
    """
    errors: list[str] = []
    substituted: list[str] = []

    def walk(n: Node, loc: Loc) -> None:
        if isinstance(n, ScalarNode):
            if n.tag == "tag:yaml.org,2002:str" and "$" in n.value:
                def sub(m: re.Match[str]) -> str:
                    if m.group(0) == "$$":
                        return "$"
                    name = m.group(1)
                    doc.from_env.add(loc)
                    if name not in env:
                        line = n.start_mark.line + 1
                        errors.append(
                            f"{doc.source}:{line}: {format_loc(loc)}: "
                            f"environment variable {name} is not set"
                        )
                        return ""
                    substituted.append(env[name])
                    return env[name]
                n.value = _ENV_REF.sub(sub, n.value)
        elif isinstance(n, MappingNode):
            seen: set[str] = set()
            for key, value in n.value:
                name = key.value if isinstance(key, ScalarNode) else "?"
                if name in seen and name != "<<":
                    errors.append(f"{doc.source}:{key.start_mark.line + 1}: "
                                  f"{format_loc(loc + (name,))}: key appears twice")
                seen.add(name)
                walk(value, loc + (name,))
        elif isinstance(n, SequenceNode):
            for index, item in enumerate(n.value):
                walk(item, loc + (index,))

    if node is not None:
        walk(node, ())
    doc.env_values = secret_values(substituted)
    return errors


def validation_problems(exc: ValidationError) -> list[tuple[Loc, str]]:
    """Each pydantic error as (location, short message), in routes.yaml's words."""
    problems = []
    for err in exc.errors(include_url=False):
        # Drop union-branch markers such as "str" or "dict[str,...]" from the location.
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or "[" not in str(p))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        problems.append((loc, message))
    return problems


def _pydantic_errors(exc: ValidationError, doc: _Document) -> list[str]:
    return [doc.error(loc, message) for loc, message in validation_problems(exc)]


def _cross_check(config: Config, doc: _Document) -> list[str]:
    errors = []
    names: set[str] = set()
    for index, route in enumerate(config.routes):
        if route.name in names:
            errors.append(doc.error(("routes", index, "name"), f"route {route.name!r} is defined twice"))
        names.add(route.name)
        for position, upstream in enumerate(route.upstreams):
            if upstream not in config.upstreams:
                errors.append(doc.error(
                    ("routes", index, "upstreams", position),
                    f"unknown upstream {upstream!r} (defined: {', '.join(sorted(config.upstreams))})",
                ))
    seen_db: set[str] = set()
    for index, db in enumerate(config.sumdb):
        if db.name in seen_db:
            errors.append(doc.error(("sumdb", index, "name"),
                                    f"checksum database {db.name!r} is listed twice"))
        seen_db.add(db.name)
    for name in config.upstreams:
        if not _NAME.match(name):
            errors.append(doc.error(("upstreams", name),
                                    "upstream names are letters, digits, '.', '_' and '-'"))
    return errors


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A valid config and the YAML it came from, so later checks (plugins) can name a line."""

    config: Config
    document: _Document

    def error(self, loc: Loc, message: str) -> str:
        """The "file:line: key: message" of the key at `loc`, as parse_config reports."""
        return self.document.error(loc, message)


def _parse(text: str, source: str, env: Mapping[str, str] | None,
           base_dir: Path | None) -> LoadedConfig:
    env = os.environ if env is None else env
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            doc = _Document(source, root)
            errors = _expand_env(root, env, doc)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if errors:
        raise ConfigError(errors)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the file must be a mapping with upstreams and routes"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_errors(exc, doc)) from None
    errors = _cross_check(config, doc)
    if errors:
        raise ConfigError(errors)
    if base_dir is not None:
        config = _paths_next_to(config, base_dir)
    return LoadedConfig(config, doc)


def _paths_next_to(config: Config, base_dir: Path) -> Config:
    """Resolve the relative file paths of a config (cache.dir, geoip.database,
    scoring.plugin_dirs) against the directory of routes.yaml, so that none of
    them moves with the directory the service happened to be started in."""
    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

    cache = config.cache.model_copy(update={"dir": resolve(config.cache.dir)})
    geoip = config.geoip
    if geoip.database is not None:
        geoip = geoip.model_copy(update={"database": resolve(geoip.database)})
    scoring = config.scoring.model_copy(
        update={"plugin_dirs": tuple(resolve(d) for d in config.scoring.plugin_dirs)})
    return config.model_copy(update={"cache": cache, "geoip": geoip, "scoring": scoring})


def parse_config(text: str, source: str = "routes.yaml",
                 env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Parse routes.yaml text; raise ConfigError listing every problem found.

    Relative paths (cache.dir, geoip.database, scoring.plugin_dirs) are
    resolved against `base_dir` when given, else left relative (to the
    working directory).
    """
    return _parse(text, source, env, base_dir).config


def read_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate a routes.yaml file, keeping its YAML for line numbers.

    Relative paths in it (cache.dir, geoip.database, scoring.plugin_dirs) are
    taken relative to the file's own directory.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read: {exc}"]) from None
    return _parse(text, str(file), env, file.absolute().parent)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a routes.yaml file."""
    return read_config(path, env).config
