"""routes.yaml loading: the ★ schema, ${VAR} expansion, errors by key and line."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from goproxy_router.config.loader import ConfigError, load_config, parse_config
from goproxy_router.config.schema import DEFAULT_CACHE_MAX_SIZE
from goproxy_router.config.values import parse_size

REPO = Path(__file__).resolve().parent.parent

DESIGN_EXAMPLE = """\
listen: "0.0.0.0:8080"
upstreams:
  goproxy-cn:     {url: "https://goproxy.cn",        countries: [CN, HK, MO]}
  proxy-golang:   {url: "https://proxy.golang.org",  countries: ["*"]}
  corp:
    url: "http://internal-proxy:7001"
    headers: {Authorization: "Bearer ${CORP_TOKEN}"}
routes:
  - name: corp
    match: ["git.corp.example", "github.com/corp/private-*"]
    upstreams: [corp]
    sumdb: false
    allow:
      cidrs: ["10.0.0.0/8"]
      tokens_env: CORP_CLIENT_TOKENS
  - name: public
    match: ["*"]
    upstreams: [goproxy-cn, proxy-golang]
sumdb:
  - name: sum.golang.org
    url: "https://sum.golang.org"
    mirrors: ["https://sum.golang.google.cn"]
    key: "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
geoip:
  database: "/var/lib/GeoIP/GeoLite2-Country.mmdb"
  trusted_proxies: ["10.0.0.0/8"]
scoring:
  plugins: [geo_affinity, latency, errors, weights]
cache:
  dir: "./cache"
"""

ENV = {"CORP_TOKEN": "s3cret", "CORP_CLIENT_TOKENS": "a,b"}


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "routes.yaml", ENV if env is None else env)
    return info.value.errors


def test_design_example_loads_with_every_field() -> None:
    config = parse_config(DESIGN_EXAMPLE, "routes.yaml", ENV)
    assert config.listen == "0.0.0.0:8080"
    assert config.upstreams["goproxy-cn"].countries == ("CN", "HK", "MO")
    assert config.upstreams["proxy-golang"].countries == ("*",)
    assert config.upstreams["corp"].headers["Authorization"].get_secret_value() == "Bearer s3cret"
    corp, public = config.routes
    assert corp.match == ("git.corp.example", "github.com/corp/private-*")
    assert corp.sumdb is False and public.sumdb is True
    assert corp.allow is not None
    assert corp.allow.cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert corp.allow.tokens_env == "CORP_CLIENT_TOKENS"
    assert config.sumdb[0].mirrors == ("https://sum.golang.google.cn",)
    assert config.geoip.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.cache.dir == "./cache"


def test_secrets_do_not_show_in_repr() -> None:
    config = parse_config(DESIGN_EXAMPLE, "routes.yaml", ENV)
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.model_dump())


def test_shipped_routes_yaml_is_valid() -> None:
    config = load_config(REPO / "routes.yaml", env={})
    urls = {u.url for u in config.upstreams.values()}
    assert {"https://proxy.golang.org", "https://goproxy.cn", "https://goproxy.io"} <= urls
    assert config.routes[-1].match == ("*",)


def test_missing_environment_variable_is_named_with_its_line() -> None:
    errors = errors_of(DESIGN_EXAMPLE, env={"CORP_CLIENT_TOKENS": "x"})
    assert errors == ["routes.yaml:7: upstreams.corp.headers.Authorization: "
                      "environment variable CORP_TOKEN is not set"]


def test_double_dollar_is_a_literal_dollar() -> None:
    config = parse_config(DESIGN_EXAMPLE.replace("Bearer ${CORP_TOKEN}", "a$$b${CORP_TOKEN}"),
                          "routes.yaml", ENV)
    assert config.upstreams["corp"].headers["Authorization"].get_secret_value() == "a$bs3cret"


def test_unknown_key_names_key_and_line() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
        routes:
          - name: r
            match: ["*"]
            upstreams: [a]
            sumbd: false
        """)
    assert errors == ["routes.yaml:7: routes[0].sumbd: unknown key"]


def test_unknown_upstream_reference() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
        routes:
          - name: r
            match: ["*"]
            upstreams: [a, b]
        """)
    assert len(errors) == 1
    assert errors[0].startswith("routes.yaml:6: routes[0].upstreams[1]: unknown upstream 'b'")


@pytest.mark.parametrize("field, value, message", [
    ("url", '"ftp://a.example"', "is not an http(s) URL"),
    ("url", '"https://a.example/?x=1"', "must not have a query"),
    ("countries", "[cn, ZZZ]", "not an ISO 3166-1 alpha-2"),
    ("weight", "0", "greater than 0"),
    ("headers", "{Host: x}", "managed by the router"),
])
def test_bad_upstream_fields(field: str, value: str, message: str) -> None:
    url = "" if field == "url" else 'url: "https://a.example", '
    errors = errors_of(f"""\
        upstreams:
          a: {{{url}{field}: {value}}}
        routes:
          - {{name: r, match: ["*"], upstreams: [a]}}
        """)
    assert len(errors) == 1 and message in errors[0], errors
    assert errors[0].startswith(f"routes.yaml:2: upstreams.a.{field}")


def test_bad_glob_is_reported_on_its_route() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
        routes:
          - name: r
            match: ["example.com/[a-"]
            upstreams: [a]
        """)
    assert len(errors) == 1 and errors[0].startswith("routes.yaml:5: routes[0].match:")


def test_comma_lists_in_match_like_goprivate() -> None:
    config = parse_config(textwrap.dedent("""\
        upstreams:
          a: {url: "https://a.example/base/"}
        routes:
          - name: r
            match: "*.corp.example,rsc.io/private/, ,"
            upstreams: [a]
        """), "routes.yaml", {})
    assert config.routes[0].match == ("*.corp.example", "rsc.io/private")
    assert config.upstreams["a"].url == "https://a.example/base"


def test_missing_required_keys_and_duplicates() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
          a: {url: "https://b.example"}
        routes: []
        """)
    assert errors == ["routes.yaml:3: upstreams.a: key appears twice"]
    errors = errors_of("""\
        routes:
          - {name: r, match: ["*"], upstreams: [a]}
        """)
    assert errors == ["routes.yaml:1: upstreams: required key is missing"]


def test_duplicate_route_names() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
        routes:
          - {name: r, match: ["x.example"], upstreams: [a]}
          - {name: r, match: ["*"], upstreams: [a]}
        """)
    assert errors == ["routes.yaml:5: routes[1].name: route 'r' is defined twice"]


def test_invalid_yaml_reports_line() -> None:
    errors = errors_of("upstreams:\n  a: {url: \n routes: [\n")
    assert len(errors) == 1 and "invalid YAML" in errors[0] and errors[0].startswith("routes.yaml:")


def test_allow_needs_a_rule_and_timeouts_override() -> None:
    errors = errors_of("""\
        upstreams:
          a: {url: "https://a.example"}
        routes:
          - {name: r, match: ["*"], upstreams: [a], allow: {}}
        """)
    assert any("allow needs cidrs, tokens_env, or both" in e for e in errors)
    config = parse_config(textwrap.dedent("""\
        upstreams:
          a: {url: "https://a.example"}
        timeouts: {connect: 2, headers: 10}
        routes:
          - {name: r, match: ["*"], upstreams: [a], timeouts: {headers: 3}}
        """), "routes.yaml", {})
    timeouts = config.route_timeouts(config.routes[0])
    assert (timeouts.connect, timeouts.headers, timeouts.read) == (2, 3, 30)


def test_sizes() -> None:
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size(1024) == 1024
    with pytest.raises(ValueError):
        parse_size("lots")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "goproxy_router", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = run_cli("validate", "--config", str(REPO / "routes.yaml"))
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  a: {url: 'https://a.example'}\nroutes:\n"
                   "  - {name: r, match: ['*'], upstreams: [zz]}\n")
    result = run_cli("validate", "--config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:4: routes[0].upstreams[0]: unknown upstream 'zz'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("extra, variable", [
    ("routes:\n  - {name: r, match: ['*'], upstreams: [a], allow: {tokens_env: SURELY_UNSET_TOKENS_VAR}}\n",
     "SURELY_UNSET_TOKENS_VAR"),
    ("routes:\n  - {name: r, match: ['*'], upstreams: [a]}\nadmin: {token_env: SURELY_UNSET_ADMIN_VAR}\n",
     "SURELY_UNSET_ADMIN_VAR"),
])
def test_validate_reports_an_unset_token_variable(tmp_path: Path, extra: str, variable: str) -> None:
    """allow.tokens_env and admin.token_env: `validate` resolves them as `serve` would."""
    path = tmp_path / "r.yaml"
    path.write_text("upstreams:\n  a: {url: 'https://a.example'}\n" + extra)
    result = run_cli("validate", "--config", str(path), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert f"{variable} is not set" in result.stderr and "Traceback" not in result.stderr


def test_a_refused_upstream_url_is_quoted_without_its_credentials(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("upstreams:\n  a: {url: 'ftp://builder:hunter2-secret@mirror.example'}\n"
                    "routes:\n  - {name: r, match: ['*'], upstreams: [a]}\n")
    result = run_cli("validate", "--config", str(path))
    assert result.returncode == 1
    assert f"{path}:2: upstreams.a.url: 'ftp://[redacted]@mirror.example' is not an http(s) URL" \
        in result.stderr
    assert "hunter2-secret" not in result.stderr and "builder" not in result.stderr


# -- checksum database names: the go command's host[/path] ------------------------------

SUMDB_CONFIG = """\
upstreams:
  a: {url: "https://a.example"}
routes:
  - {name: r, match: ["*"], upstreams: [a]}
sumdb:
  - name: sum.golang.org
    url: "https://sum.golang.org"
  - name: NAME
    url: "http://127.0.0.1:9"
"""


@pytest.mark.parametrize("name", ["localhost", "localhost:8443", "sum.corp.example/go",
                                  "10.0.0.5:3000", "[::1]:8443"])
def test_sumdb_names_follow_the_go_commands_host_path_rule(name: str) -> None:
    config = parse_config(SUMDB_CONFIG.replace("NAME", f'"{name}"'), "routes.yaml", {})
    assert [db.name for db in config.sumdb] == ["sum.golang.org", name]


@pytest.mark.parametrize("name, problem", [
    ("https://x", "a name, not a URL"),
    ("a b", "must not contain spaces or '+'"),
    ("x?y", "must not have a query"),
    ("user@host", "must not have user info"),
    ("sum.corp.example/go/", "must not end in '/'"),
    ("sum.corp.example/tile", "would be ambiguous"),
    ("Sum.Corp.Example", "must be a lower-case host name"),
])
def test_invalid_sumdb_names_are_refused_with_file_and_line(name: str, problem: str) -> None:
    [error] = errors_of(SUMDB_CONFIG.replace("NAME", f'"{name}"'))
    assert error.startswith(f"routes.yaml:8: sumdb[1].name: {name!r} is not a checksum database "
                            "name: "), error
    assert problem in error


def test_validate_accepts_localhost_and_a_name_with_a_path(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(SUMDB_CONFIG.replace("NAME", "localhost")
                    + '  - {name: sum.corp.example/go, url: "http://127.0.0.1:9"}\n')
    result = run_cli("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "3 checksum databases" in result.stdout


# -- cache: bounded by default, next to routes.yaml ---------------------------------------

MINIMAL = """\
upstreams:
  a: {url: "https://a.example"}
routes:
  - {name: r, match: ["*"], upstreams: [a]}
"""


def test_the_disk_cache_is_bounded_by_default() -> None:
    assert parse_config(MINIMAL, "routes.yaml", {}).cache.max_size == DEFAULT_CACHE_MAX_SIZE == 10**10
    shipped = load_config(REPO / "routes.yaml", env={}).cache
    assert shipped.max_size is not None and shipped.max_size <= DEFAULT_CACHE_MAX_SIZE


def test_an_unbounded_cache_must_be_asked_for_by_name() -> None:
    config = parse_config(MINIMAL + "cache: {max_size: unlimited}\n", "routes.yaml", {})
    assert config.cache.max_size is None
    [error] = errors_of(MINIMAL + "cache:\n  max_size: null\n")
    assert error.startswith("routes.yaml:6: cache.max_size: give a size such as 10GB, "
                            "or 'unlimited'")


def test_a_relative_cache_dir_is_next_to_routes_yaml(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc" / "goproxy"
    etc.mkdir(parents=True)
    (etc / "routes.yaml").write_text(MINIMAL)
    (etc / "other.yaml").write_text(MINIMAL + "cache: {dir: ../var/cache}\n")
    (etc / "abs.yaml").write_text(MINIMAL + f"cache: {{dir: {tmp_path / 'abs'}}}\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    relative = Path("..", "..", "etc", "goproxy")
    assert load_config(relative / "routes.yaml", env={}).cache.dir == str(etc / "cache")
    assert load_config(relative / "other.yaml", env={}).cache.dir == str(etc.parent / "var" / "cache")
    assert load_config(relative / "abs.yaml", env={}).cache.dir == str(tmp_path / "abs")


def test_relative_geoip_database_and_plugin_dirs_are_next_to_routes_yaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "routes.yaml").write_text(
        MINIMAL + "geoip: {database: GeoLite2-Country.mmdb}\n"
        f"scoring: {{plugin_dirs: [plugins, {tmp_path / 'abs'}]}}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc", "routes.yaml"), env={})
    assert config.geoip.database == str(etc / "GeoLite2-Country.mmdb")
    assert config.scoring.plugin_dirs == (str(etc / "plugins"), str(tmp_path / "abs"))


# -- plugin options, checked by `validate` with file:line -----------------------------------

PLUGIN_CONFIG = """\
upstreams:
  goproxy-cn: {url: "https://goproxy.cn"}
  proxy-golang: {url: "https://proxy.golang.org"}
routes:
  - {name: r, match: ["*"], upstreams: [goproxy-cn, proxy-golang]}
scoring:
  plugin_dirs: [PLUGIN_DIR]
  plugins:
    - geo_affinity
    - latency
"""


def validate_plugins(tmp_path: Path, plugins: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "routes.yaml"
    path.write_text(PLUGIN_CONFIG.replace("PLUGIN_DIR", str(tmp_path / "plugins"))
                    + textwrap.indent(textwrap.dedent(plugins), "    "))
    return run_cli("validate", "--config", str(path))


def test_validate_refuses_a_plugin_option_typo_with_file_and_line(tmp_path: Path) -> None:
    result = validate_plugins(tmp_path, """\
        - weights: {priority_stepp: 10}
        """)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{tmp_path / 'routes.yaml'}:11: scoring.plugins[2].weights.priority_stepp: "
        "unknown option (weights takes priority_step)")


def test_validate_refuses_an_unknown_upstream_in_pin_with_file_and_line(tmp_path: Path) -> None:
    result = validate_plugins(tmp_path, """\
        - pin:
            rules:
              - match: ["golang.org/x/*"]
                prefer: [goproxy-cn]
              - match: ["github.com/bigcorp"]
                prefer: [proxy-golang,
                         nosuch]
        """)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{tmp_path / 'routes.yaml'}:17: scoring.plugins[2].pin.rules[1].prefer[1]: "
        "unknown upstream 'nosuch' (defined: goproxy-cn, proxy-golang)")


def test_validate_refuses_bad_options_of_a_plugin_dirs_plugin_with_file_and_line(
        tmp_path: Path) -> None:
    """Its Options is a plain BaseModel, which would ignore a typo: the loader does not."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "office_hours.py").write_text(textwrap.dedent('''\
        from pydantic import BaseModel
        from goproxy_router.scoring.api import Plugin

        class Options(BaseModel):
            days: int = 5
            batch_upstream: str

        class OfficeHours(Plugin):
            name = "office_hours"
            Options = Options
        '''))
    result = validate_plugins(tmp_path, """\
        - office_hours:
            batch_upstream: goproxy-cn
            dayz: 3
        - office_hours: {days: many, batch_upstream: proxy-golang}
        """)
    assert result.returncode == 1
    path = tmp_path / "routes.yaml"
    assert result.stderr.splitlines() == [
        f"{path}:13: scoring.plugins[2].office_hours.dayz: "
        "unknown option (office_hours takes batch_upstream, days)",
        f"{path}:14: scoring.plugins[3]: plugin 'office_hours' is listed twice",
    ]


# -- limits: client connections ---------------------------------------------------------

def test_connection_limits_default_to_seconds_not_an_hour() -> None:
    limits = parse_config(MINIMAL, "routes.yaml", {}).limits
    assert (limits.max_connections, limits.header_timeout, limits.keepalive_timeout) == (
        10_000, 10.0, 15.0)
    limits = parse_config(MINIMAL + "limits: {max_connections: 20, header_timeout: 0.5, "
                          "keepalive_timeout: 2}\n", "routes.yaml", {}).limits
    assert (limits.max_connections, limits.header_timeout, limits.keepalive_timeout) == (20, 0.5, 2)


@pytest.mark.parametrize(("limits", "message"), [
    ("{max_connections: 0}", "limits.max_connections: Input should be greater than or equal to 1"),
    ("{keepalive_timeout: 0}", "limits.keepalive_timeout: Input should be greater than 0"),
    ("{header_timeout: 20, keepalive_timeout: 15}",
     "limits: header_timeout must not exceed keepalive_timeout"),
    ("{max_conections: 5}", "limits.max_conections: unknown key"),
])
def test_bad_connection_limits_are_named_with_their_line(limits: str, message: str) -> None:
    [error] = errors_of(MINIMAL + f"limits: {limits}\n")
    assert error == f"routes.yaml:5: {message}"
