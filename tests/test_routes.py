"""Route selection (first match wins) and route access (cidrs, tokens)."""

from __future__ import annotations

import base64
import ipaddress
import textwrap

import pytest

from goproxy_router.config.loader import ConfigError, parse_config
from goproxy_router.routing.geo import client_address
from goproxy_router.routing.routes import AccessDenied, RouteTable

CONFIG = textwrap.dedent("""\
    upstreams:
      corp: {url: "http://corp.example:7001", headers: {Authorization: "Bearer up"}}
      pub: {url: "https://proxy.example"}
    routes:
      - name: corp
        match: ["git.corp.example", "github.com/corp/private-*"]
        upstreams: [corp]
        sumdb: false
        allow: {cidrs: ["10.0.0.0/8"], tokens_env: TOKENS}
      - name: strict
        match: ["strict.example"]
        upstreams: [corp]
        allow: {cidrs: ["10.0.0.0/8"], tokens_env: TOKENS, require: all}
      - name: office
        match: ["office.example"]
        upstreams: [corp]
        allow: {cidrs: ["192.168.0.0/16", "fd00::/8"]}
      - name: public
        match: ["*"]
        upstreams: [pub]
    """)


@pytest.fixture
def table() -> RouteTable:
    env = {"TOKENS": "tok-1, tok-2"}
    return RouteTable(parse_config(CONFIG, "routes.yaml", env), env)


@pytest.mark.parametrize("module, route", [
    ("git.corp.example", "corp"),
    ("git.corp.example/team/lib", "corp"),
    ("github.com/corp/private-tools", "corp"),
    ("github.com/corp/private-tools/v2", "corp"),
    ("github.com/corp/public-tools", "public"),
    ("github.com/corporation/private-x", "public"),
    ("git.corp.example.evil.com/x", "public"),
    ("strict.example/a", "strict"),
    ("golang.org/x/mod", "public"),
])
def test_first_matching_route_wins(table: RouteTable, module: str, route: str) -> None:
    matched = table.match(module)
    assert matched is not None and matched.name == route


def test_route_targets_carry_only_their_own_headers(table: RouteTable) -> None:
    corp = table.match("git.corp.example/x")
    public = table.match("example.com/x")
    assert corp is not None and public is not None
    assert [t.name for t in corp.targets] == ["corp"]
    assert dict(corp.targets[0].headers) == {"Authorization": "Bearer up"}
    assert dict(public.targets[0].headers) == {}
    assert "Bearer up" not in repr(corp.targets[0])


def test_no_route_means_none() -> None:
    config = parse_config(textwrap.dedent("""\
        upstreams: {a: {url: "https://a.example"}}
        routes: [{name: only, match: ["only.example"], upstreams: [a]}]
        """), "r", {})
    assert RouteTable(config, {}).match("other.example/x") is None


def basic(password: str, user: str = "anyone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


IP = ipaddress.ip_address


@pytest.mark.parametrize("route, ip, auth, status", [
    ("corp", "10.1.2.3", None, None),                  # in network: enough for require any
    ("corp", "8.8.8.8", "Bearer tok-2", None),          # token: enough
    ("corp", "8.8.8.8", basic("tok-1"), None),          # .netrc style Basic password
    ("corp", "8.8.8.8", None, 401),                     # no credentials: ask for them
    ("corp", "8.8.8.8", "Bearer nope", 403),
    ("corp", "8.8.8.8", basic("nope"), 403),
    ("corp", "8.8.8.8", "Basic !!!notbase64", 401),
    ("corp", None, None, 401),
    ("strict", "10.1.2.3", None, 401),                  # require all: network alone is not enough
    ("strict", "8.8.8.8", "Bearer tok-1", 403),         # nor the token alone
    ("strict", "10.1.2.3", "Bearer tok-1", None),
    ("office", "192.168.1.1", None, None),
    ("office", "fd00::1", None, None),
    ("office", "10.1.1.1", "Bearer tok-1", 403),
])
def test_access(table: RouteTable, route: str, ip: str | None, auth: str | None,
                status: int | None) -> None:
    policy = next(r for r in table.routes if r.name == route).access
    assert policy is not None
    address = IP(ip) if ip else None
    if status is None:
        policy.check(address, auth)
        return
    with pytest.raises(AccessDenied) as info:
        policy.check(address, auth)
    assert info.value.status == status
    assert route in info.value.reason
    assert "tok-" not in info.value.reason


def test_public_route_has_no_access_policy(table: RouteTable) -> None:
    public = table.match("example.com/x")
    assert public is not None and public.access is None


def test_unset_tokens_env_is_a_config_error() -> None:
    config = parse_config(CONFIG, "routes.yaml", {"TOKENS": "x"})
    with pytest.raises(ConfigError, match="TOKENS is not set"):
        RouteTable(config, {})
    with pytest.raises(ConfigError, match="holds no tokens"):
        RouteTable(config, {"TOKENS": " , "})


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize("peer, xff, expected", [
    ("203.0.113.5", None, "203.0.113.5"),
    ("203.0.113.5", "1.2.3.4", "203.0.113.5"),              # untrusted peer: header ignored
    ("10.0.0.2", "1.2.3.4", "1.2.3.4"),
    ("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),  # rightmost untrusted hop
    ("10.0.0.2", "10.0.0.7, 10.0.0.9", "10.0.0.7"),         # all trusted: the furthest one
    ("10.0.0.2", "garbage, 10.0.0.9", None),                # a proxy could not say: unknown
    ("10.0.0.2", "", "10.0.0.2"),
    ("::1", "2001:db8::1", "2001:db8::1"),
    ("::ffff:10.0.0.2", "1.2.3.4", "1.2.3.4"),              # v4-mapped peer
    ("10.0.0.2", "[2001:db8::2]:443", "2001:db8::2"),
    ("10.0.0.2", "1.2.3.4:5678", "1.2.3.4"),
    (None, "1.2.3.4", None),
])
def test_client_address(peer: str | None, xff: str | None, expected: str | None) -> None:
    address = client_address(peer, [xff] if xff is not None else [], TRUSTED)
    assert address == (IP(expected) if expected else None)
