"""The README's examples that show output are what the commands print.

Each example says what it assumes; these tests set up exactly that (the
README's own routes.yaml example, a file the example `cat`s, the shipped
routes.yaml with a test GeoIP database) and compare line for line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.support.mmdb import write_country_db

README = (REPO_ROOT / "README.md").read_text()


def console_blocks() -> list[str]:
    return re.findall(r"```console\n(.*?)```", README, re.S)


def block_running(command: str) -> list[str]:
    """The lines of the console block with `$ <command>`, from that line on."""
    for block in console_blocks():
        lines = block.splitlines()
        for index, line in enumerate(lines):
            if line == f"$ {command}":
                return lines[index:]
    raise AssertionError(f"no console block runs {command!r}")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "goproxy_router", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                                                    **(env or {})})


def output(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What a terminal shows, less the JSON log lines (stderr)."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if not line.startswith('{"ts":')]


def test_the_validate_example_on_the_readmes_routes_yaml(tmp_path: Path) -> None:
    section = README[README.index("## routes.yaml"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    assert example.group(1).count("upstreams: [corp]") == 1
    (tmp_path / "routes.yaml").write_text(
        example.group(1).replace("upstreams: [corp]", "upstreams: [corp, corpp]"))
    [command, *expected] = block_running("goproxy-router validate --config routes.yaml")
    result = run(command.split()[2:], tmp_path, {"CORP_TOKEN": "t0ken-for-the-example",
                                                  "CORP_CLIENT_TOKENS": "a,b",
                                                  "GOPROXY_ADMIN_TOKEN": "admin-t0ken"})
    assert result.returncode == 1
    assert output(result) == expected


def test_the_plugin_options_example_as_catted(tmp_path: Path) -> None:
    lines = block_running("cat typo.yaml")
    command_at = next(i for i, line in enumerate(lines) if line.startswith("$ goproxy-router"))
    (tmp_path / "typo.yaml").write_text("\n".join(lines[1:command_at]) + "\n")
    result = run(lines[command_at].split()[2:], tmp_path)
    assert result.returncode == 1
    assert output(result) == lines[command_at + 1:]


def test_the_explain_example_with_the_shipped_routes_yaml_and_a_geoip_database(tmp_path: Path) -> None:
    """The README: the shipped file with `geoip.database` set, for a client in Germany."""
    [command, *expected] = block_running(
        "goproxy-router explain --config routes.yaml golang.org/x/mod --client-ip 2.16.0.1")
    db = tmp_path / "GeoLite2-Country.mmdb"
    write_country_db(db, {"2.16.0.0/16": "DE"})
    shipped = (REPO_ROOT / "routes.yaml").read_text()
    commented = '  # database: "/var/lib/GeoIP/GeoLite2-Country.mmdb"'
    assert commented in shipped
    config = shipped.replace(commented, f'  database: "{db}"')
    assert yaml.safe_load(config)["geoip"]["database"] == str(db)
    (tmp_path / "routes.yaml").write_text(config)
    result = run(command.split()[2:], tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result) == expected
