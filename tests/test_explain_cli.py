"""`goproxy-router explain`: the route, the client's country, every factor, the order."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, RouterProcess
from tests.support.mmdb import write_country_db


def write_config(tmp_path: Path) -> Path:
    db = tmp_path / "country.mmdb"
    write_country_db(db, {"1.0.1.0/24": "CN", "2.16.0.0/16": "DE"})
    config = {
        "upstreams": {"us": {"url": "https://us.example", "countries": ["US"]},
                      "cn": {"url": "https://cn.example", "countries": ["CN", "HK"]},
                      "de": {"url": "https://de.example", "countries": ["DE"]},
                      "corp": {"url": "https://corp.example"}},
        "routes": [{"name": "corp", "match": ["git.corp.example"], "upstreams": ["corp"]},
                   {"name": "public", "match": ["*"], "upstreams": ["us", "cn", "de"]}],
        "geoip": {"database": str(db)},
        "scoring": {"plugins": ["geo_affinity", "latency", "breaker", "weights",
                               {"pin": {"rules": [{"match": ["golang.org/x"], "prefer": ["de"],
                                                   "forbid": ["us"]}]}}]},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def explain(*args: str, env: Mapping[str, str] | None = None,
            cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """`goproxy-router explain ARGS` with `env` added; run from `cwd` (the repo: its routes.yaml)."""
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env = dict(os.environ) | {"PYTHONPATH": path} | dict(env or {})
    return subprocess.run([sys.executable, "-m", "goproxy_router", "explain", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=full_env)


def test_explain_table_for_a_chinese_client(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = explain("--config", str(config), "example.com/lib", "--client-ip", "1.0.1.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route:   public" in out and "country CN, continent AS" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [row[1] for row in rows] == ["cn", "us", "de"]      # geo first, then config order
    header = next(line.split() for line in out.splitlines() if line.startswith("rank"))
    geo = header.index("geo_affinity")
    assert [row[geo] for row in rows] == ["1", "3", "3"]


def test_the_shipped_routes_yaml_ranks_each_region_its_own_proxy_first(tmp_path: Path) -> None:
    """The shipped file with a GeoIP database: China gets goproxy.cn, Germany and Brazil
    proxy.golang.org ("*"), and explain says why."""
    db = tmp_path / "country.mmdb"
    write_country_db(db, {"1.0.1.0/24": "CN", "2.16.0.0/16": "DE", "200.0.0.0/16": "BR"})
    shipped = yaml.safe_load((REPO_ROOT / "routes.yaml").read_text())
    shipped["geoip"]["database"] = str(db)
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(shipped))
    firsts = {}
    for client in ("1.0.1.7", "2.16.0.1", "200.0.3.4"):
        result = explain("--config", str(config), "golang.org/x/mod", "--client-ip", client, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        firsts[report["country"]] = report["order"]
        why = {u["name"]: u["reasons"]["geo_affinity"] for u in report["upstreams"]}
        if report["country"] == "CN":
            assert why["goproxy-cn"] == "lists CN, the client's country"
            assert why["proxy-golang"].startswith("'*' (near everyone)")
    assert firsts == {"CN": ["goproxy-cn", "goproxy-io", "proxy-golang"],
                      "DE": ["proxy-golang", "goproxy-cn", "goproxy-io"],
                      "BR": ["proxy-golang", "goproxy-cn", "goproxy-io"]}
    table = explain("--config", str(config), "golang.org/x/mod", "--client-ip", "1.0.1.7").stdout
    assert "why:" in table and "goproxy-cn    geo_affinity: lists CN, the client's country" in table


def test_explain_json_with_a_pin_rule_and_a_veto(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = explain("--config", str(config), "golang.org/x/mod", "--client-ip", "2.16.0.1",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["route"] == "public" and report["country"] == "DE"
    assert report["order"] == ["de", "cn"]
    rows = {u["name"]: u for u in report["upstreams"]}
    assert rows["de"]["factors"]["pin"] == 0.1
    assert rows["us"]["veto"] == "pin: pin rule golang.org/x forbids it"
    assert rows["us"]["rank"] is None


def test_explain_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    bad_module = explain("--config", str(config), "Example.com/x")
    assert bad_module.returncode == 2 and "invalid module path" in bad_module.stderr
    bad_ip = explain("--config", str(config), "example.com/x", "--client-ip", "nope")
    assert bad_ip.returncode == 2 and "not an IP address" in bad_ip.stderr
    assert "Traceback" not in bad_module.stderr + bad_ip.stderr


def test_explain_server_sends_the_admin_token(
        router_process: Callable[..., RouterProcess], refused_url: str, tmp_path: Path) -> None:
    token = "adm-" + secrets.token_hex(16)
    router = router_process({
        "upstreams": {"up": {"url": refused_url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
        "probes": {"enabled": False},
        "admin": {"cidrs": ["10.0.0.0/8"], "token_env": "EXPLAIN_ADMIN_TOKEN"},
    }, env={"EXPLAIN_ADMIN_TOKEN": token})
    config = str(router.config_path)
    nowhere = tmp_path / "empty"                 # no routes.yaml to read a token_env from
    nowhere.mkdir()

    def refused(result: subprocess.CompletedProcess[str], why: str) -> None:
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr       # one line, no traceback
        assert "HTTP 403: the server wants the admin token" in result.stderr
        assert why in result.stderr and "--token" in result.stderr
        assert token not in result.stderr

    def served(result: subprocess.CompletedProcess[str]) -> None:
        assert result.returncode == 0, result.stderr
        assert "route:   public" in result.stdout
        assert [line.split()[1] for line in result.stdout.splitlines()
                if line[:1].isdigit()] == ["up"]

    refused(explain("example.com/lib", "--server", router.url, cwd=nowhere),
            "no --token, and no routes.yaml here")
    refused(explain("example.com/lib", "--server", router.url, "--config", config),
            "$EXPLAIN_ADMIN_TOKEN (admin.token_env in")
    refused(explain("example.com/lib", "--server", router.url, "--config", str(nowhere / "x.yaml")),
            "x.yaml did not load: ")
    refused(explain("example.com/lib", "--server", router.url, "--token", "wrong", cwd=nowhere),
            "the token from --token was refused")
    served(explain("example.com/lib", "--server", router.url, "--config", config,
                   env={"EXPLAIN_ADMIN_TOKEN": token}))
    served(explain("example.com/lib", "--server", router.url, "--token", token, cwd=nowhere))


def test_a_config_naming_the_breaker_errors_still_explains_and_warns_once(tmp_path: Path) -> None:
    """`errors` is the breaker plugin's old name: it loads as `breaker`, with one warning."""
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["scoring"]["plugins"][2] = "errors"
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    result = explain("--config", str(path), "example.com/lib", "--client-ip", "1.0.1.5")
    assert result.returncode == 0, result.stderr
    header = next(line.split() for line in result.stdout.splitlines() if line.startswith("rank"))
    assert header == ["rank", "upstream", "cost", "geo_affinity", "latency", "breaker", "weights",
                      "pin", "state", "veto"]
    warnings = [json.loads(line) for line in result.stderr.splitlines()
                if '"deprecated plugin name' in line]
    assert [(w["plugin"], w["use"]) for w in warnings] == [("errors", "breaker")]
