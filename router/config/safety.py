"""What a valid routes.yaml may still get wrong about security.

Two questions a schema cannot answer:

- `weakenings(old, new)`: what protection the running config has that a
  new one would drop (a route's `allow`, `sumdb: false`, the admin token, a
  network list widened). A reload that loses any of it is refused unless
  the operator forces it (SIGUSR1): a half-written or mistaken file must not
  open a private route.
- `config_warnings(loaded, path, env)`: what `validate` (and `serve` at
  start-up) point out without refusing: short tokens, a literal credential
  in a file others can read, and a `host/*` pattern that leaves the bare
  `host` to a public route.

Which route takes a module is the edge's own rule, first match wins
(routes.RouteTable); a route's pattern stands for the modules it names.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterable, Mapping

from yarl import URL

from goproxy_router.config.loader import LoadedConfig, Loc
from goproxy_router.config.schema import Allow, Config, Route
from goproxy_router.protocol.pathmatch import match_prefix_patterns

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_TOKEN = 16      # characters; a shorter token is guessable at the rate a client can try


def first_route(routes: Iterable[Route], module: str) -> Route | None:
    """The route that serves `module` (or a pattern taken as a path): the first that matches."""
    for route in routes:
        if any(glob == module or match_prefix_patterns(glob, module) for glob in route.match):
            return route
    return None


def _outside(new: Iterable[IPNetwork], old: Iterable[IPNetwork]) -> list[str]:
    """The networks of `new` not inside one of `old`."""
    olds = tuple(old)
    return [str(net) for net in new
            if not any(net.version == o.version and net.subnet_of(o) for o in olds)]  # type: ignore[arg-type]


def _allow_lost(old: Allow, new: Allow | None) -> list[str]:
    """How `new` lets in someone `old` kept out, in words."""
    if new is None:
        return ["allow removed"]
    lost = []
    if old.tokens_env and not new.tokens_env:
        lost.append(f"allow.tokens_env removed (was {old.tokens_env})")
    both = old.cidrs and old.tokens_env and new.cidrs and new.tokens_env
    if both and old.require == "all" and new.require == "any":
        lost.append("allow.require weakened from all to any")
    adds_a_condition = not old.cidrs and new.require == "all" and bool(new.tokens_env)
    if new.cidrs and not adds_a_condition:
        if wider := _outside(new.cidrs, old.cidrs):
            lost.append(f"allow.cidrs widened by {', '.join(wider)}")
    return lost


def weakenings(old: Config, new: Config) -> list[str]:
    """Each protection of `old` that `new` would give up, as a line for the operator."""
    lost: list[str] = []
    for route in old.routes:
        if route.allow is None and route.sumdb:
            continue
        for glob in route.match:
            owner = first_route(new.routes, glob)
            if owner is None:
                continue                           # no route: 404, nothing is served
            where = f"route {route.name!r} pattern {glob!r}"
            if owner.name != route.name:
                where += f" (now served by route {owner.name!r})"
            if route.allow is not None:
                lost += [f"{where}: {what}" for what in _allow_lost(route.allow, owner.allow)]
            if not route.sumdb and owner.sumdb:
                lost.append(f"{where}: sumdb: false removed (its module paths would go to "
                            "the checksum database)")
    if old.admin.token_env and not new.admin.token_env:
        lost.append(f"admin.token_env removed (was {old.admin.token_env})")
    if wider := _outside(new.admin.cidrs, old.admin.cidrs):
        lost.append(f"admin.cidrs widened by {', '.join(wider)}")
    if wider := _outside(new.geoip.trusted_proxies, old.geoip.trusted_proxies):
        lost.append(f"geoip.trusted_proxies widened by {', '.join(wider)} (their X-Forwarded-For "
                    "decides a client's address)")
    return lost


def config_warnings(loaded: LoadedConfig, path: str | os.PathLike[str],
                    env: Mapping[str, str] | None = None) -> list[str]:
    """`file:line: key: warning: ...` for each risky but valid setting."""
    env = os.environ if env is None else env
    config, warnings = loaded.config, []

    def warn(loc: tuple[str | int, ...], message: str) -> None:
        warnings.append(loaded.error(loc, f"warning: {message}"))

    for index, route in enumerate(config.routes):
        if route.allow is not None and route.allow.tokens_env:
            tokens = [t.strip() for t in env.get(route.allow.tokens_env, "").split(",") if t.strip()]
            short = sum(len(t) < MIN_TOKEN for t in tokens)
            if short:
                warn(("routes", index, "allow", "tokens_env"),
                     f"{short} of the tokens in {route.allow.tokens_env} are shorter than "
                     f"{MIN_TOKEN} characters: easy to guess")
    if config.admin.token_env:
        token = env.get(config.admin.token_env, "").strip()
        if token and len(token) < MIN_TOKEN:
            warn(("admin", "token_env"), f"the token in {config.admin.token_env} is shorter than "
                                         f"{MIN_TOKEN} characters: easy to guess")
    warnings += _literal_secrets(loaded, path)
    for index, route in enumerate(config.routes):
        if route.allow is None and route.sumdb:
            continue
        for position, glob in enumerate(route.match):
            if not glob.endswith("/*"):
                continue
            bare = glob.removesuffix("/*")
            owner = first_route(config.routes, bare)
            open_to = []
            if route.allow is not None and (owner is None or owner.allow is None):
                open_to.append("served without allow")
            if not route.sumdb and (owner is None or owner.sumdb):
                open_to.append("looked up in the checksum database")
            if owner is not None and open_to:
                warn(("routes", index, "match", position),
                     f"{glob!r} does not cover {bare!r} itself: it goes to route {owner.name!r} "
                     f"({' and '.join(open_to)}); add {bare!r} to this route's match")
    return warnings


def _literal_secrets(loaded: LoadedConfig, path: str | os.PathLike[str]) -> list[str]:
    """Credentials written into a file any local user can read (rather than ${VAR})."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return []
    except OSError:
        return []
    found = []
    for name, upstream in loaded.config.upstreams.items():
        for header in upstream.headers:
            header_loc: Loc = ("upstreams", name, "headers", header)
            if header_loc not in loaded.document.from_env:
                found.append(loaded.error(header_loc, "warning: a literal credential in a world-readable "
                                               "file: use ${VAR}, or chmod o-r"))
        url = URL(upstream.url)
        loc = ("upstreams", name, "url")
        if (url.user or url.password) and loc not in loaded.document.from_env:
            found.append(loaded.error(loc, "warning: a literal user:password@ in a world-readable "
                                           "file: use ${VAR}, or chmod o-r"))
    return found
