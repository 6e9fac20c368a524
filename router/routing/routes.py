"""Routes: which scope a module belongs to, and who may fetch it.

Matching uses Go's GOPRIVATE pattern semantics (router.patterns), compiled
once into a table; the first route whose pattern matches wins, exactly as
routes.yaml lists them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from goproxy_router.config.loader import ConfigError
from goproxy_router.config.schema import Allow, Config, Hedge, Retry, Route, Timeouts
from goproxy_router.protocol.patterns import PatternTable
from goproxy_router.routing.gate import in_networks, token_accepted
from goproxy_router.routing.throttle import AuthThrottle, retry_after
from goproxy_router.upstream.targets import UpstreamTarget

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AccessDenied(Exception):
    """The client may not have this: 400 (unreadable credentials), 401 (none), 403, or
    429 (too many wrong credentials from its address lately; `retry_after` seconds)."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after

    def headers(self, realm: str) -> dict[str, str] | None:
        """The headers its answer needs: a challenge for 401, Retry-After for 429."""
        if self.status == 401:
            return {"WWW-Authenticate": f'Basic realm="{realm}"'}
        if self.status == 429 and self.retry_after is not None:
            return {"Retry-After": retry_after(self.retry_after)}
        return None


def authorization_text(authorization: str | None, what: str) -> str | None:
    """The Authorization header, or AccessDenied(400) when it is not UTF-8 text.

    aiohttp hands header bytes that are not UTF-8 over as lone surrogates
    (surrogateescape); encoding them again would raise, a 500. No token can
    be such a value, so say what is wrong instead.
    """
    if authorization is not None:
        try:
            authorization.encode()
        except UnicodeEncodeError:
            raise AccessDenied(400, f"{what}: the Authorization header is not UTF-8 text") from None
    return authorization


def admit(throttle: AuthThrottle | None, client: IPAddress | None, surface: str,
          what: str) -> None:
    """AccessDenied(429) while `client` has made too many wrong guesses lately."""
    if throttle is None:
        return
    wait = throttle.wait(client, surface)
    if wait > 0:
        raise AccessDenied(429, f"{what}: too many wrong credentials from {client}; "
                                f"try again in {retry_after(wait)}s", wait)


PRIVATE_NO_STORE = "private, no-store"


def make_private(headers: MutableMapping[str, str], status: int) -> None:
    """Mark an answer of a route with `allow` as one client's own.

    A shared cache or CDN in front must never keep it for others: `public`
    becomes `private` (max-age and immutable stay, for the client's own
    cache), anything not declared cacheable, and every error, becomes
    `private, no-store`, and `Vary: Authorization` says the answer depends on
    the credentials.
    """
    cache_control = headers.get("Cache-Control")
    if status >= 400 or not cache_control:
        headers["Cache-Control"] = PRIVATE_NO_STORE
    else:
        directives = [d.strip() for d in cache_control.split(",")]
        kept = [d for d in directives if d.lower() not in ("public", "private")]
        headers["Cache-Control"] = ", ".join(["private", *kept])
    vary = headers.get("Vary")
    if vary is None:
        headers["Vary"] = "Authorization"
    elif "authorization" not in {v.strip().lower() for v in vary.split(",")}:
        headers["Vary"] = f"{vary}, Authorization"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """A route's `allow`: client networks and/or tokens (Bearer, or a Basic password)."""

    route: str
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    tokens: tuple[bytes, ...]
    require_all: bool

    @classmethod
    def from_config(cls, route: str, allow: Allow, env: Mapping[str, str]) -> AccessPolicy:
        tokens: tuple[bytes, ...] = ()
        if allow.tokens_env:
            raw = env.get(allow.tokens_env)
            if raw is None:
                raise ConfigError([f"route {route}: allow.tokens_env: environment variable "
                                   f"{allow.tokens_env} is not set"])
            tokens = tuple(t.strip().encode() for t in raw.split(",") if t.strip())
            if not tokens:
                raise ConfigError([f"route {route}: allow.tokens_env: {allow.tokens_env} "
                                   "holds no tokens"])
        return cls(route, allow.cidrs, tokens, allow.require == "all")

    def check(self, client_ip: IPAddress | None, authorization: str | None,
              throttle: AuthThrottle | None = None) -> None:
        """Return if the client is allowed; raise AccessDenied with a reason otherwise.

        The token is looked at only when it decides: not for a client its
        network already lets in, nor (with `require: all`) for one outside the
        networks, which would otherwise learn whether a guess was right. With
        a `throttle`, an address with too many wrong tokens lately gets 429
        before its token is compared, and every wrong token is counted.
        """
        route = f"route {self.route}"
        by_address = in_networks(client_ip, self.cidrs)
        if self.cidrs and (by_address != self.require_all or not self.tokens):
            if by_address:
                return                           # the network is enough (require any)
            raise AccessDenied(403, f"{route}: client {client_ip} is not in an allowed network")
        if authorization:
            admit(throttle, client_ip, "route", route)
        token = _presented_token(authorization_text(authorization, route))
        if token is None:
            raise AccessDenied(401, f"{route} needs credentials: send a token as "
                                    "the password of HTTP Basic auth (.netrc) or as a Bearer token")
        if not token_accepted(token, self.tokens):
            if throttle is not None:
                throttle.failed(client_ip, "route")
            raise AccessDenied(403, f"{route}: the token presented is not accepted")


def _presented_token(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, sep, password = decoded.partition(b":")
        return password if sep and password else None
    return None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route ready for requests: its upstream targets, timeouts and access policy."""

    name: str
    targets: tuple[UpstreamTarget, ...]
    sumdb: bool
    timeouts: Timeouts
    retry: Retry
    hedge: Hedge
    access: AccessPolicy | None
    config: Route


class RouteTable:
    """Module path -> route, first match wins; built once per config."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        targets = {name: UpstreamTarget.from_config(name, up) for name, up in config.upstreams.items()}
        self.routes: tuple[CompiledRoute, ...] = tuple(
            CompiledRoute(
                name=route.name,
                targets=tuple(targets[name] for name in route.upstreams),
                sumdb=route.sumdb,
                timeouts=config.route_timeouts(route),
                retry=route.retry or config.retry,
                hedge=route.hedge or config.hedge,
                access=AccessPolicy.from_config(route.name, route.allow, env) if route.allow else None,
                config=route,
            )
            for route in config.routes
        )
        self._table: PatternTable[CompiledRoute] = PatternTable(
            (glob, compiled) for compiled in self.routes for glob in compiled.config.match
        )

    def match(self, module: str) -> CompiledRoute | None:
        return self._table.lookup(module)

    def by_name(self, name: str) -> CompiledRoute | None:
        return next((r for r in self.routes if r.name == name), None)
