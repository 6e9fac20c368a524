"""A real checksum database for the tests: the Go program in tests/support/sumdb/.

It is built once per session from the Go team's golang.org/x/mod sources
(Debian's golang-golang-x-mod-dev) in GOPATH mode, offline, and serves a signed
database for the modules written by `write_modules` (the GOPROXY file layout),
with a key generated at start. `SumdbServer` runs it on a free loopback port and
reads its request log (which module names reached it); `go_vectors` has it emit
h1 hashes, a signed tree note, tiles and proofs as JSON for unit tests. Without
go or the sources the tests skip, unless GOPROXY_ROUTER_REQUIRE_GO is set.
Nothing here imports the router.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support.modtree import Module

SOURCE_DIR = Path(__file__).resolve().parent / "sumdb"
GOCODE = Path("/usr/share/gocode")
X_MOD = GOCODE / "src" / "golang.org" / "x" / "mod" / "sumdb"
REQUIRE_GO_ENV = "GOPROXY_ROUTER_REQUIRE_GO"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_GO_ENV):
        pytest.fail(f"{reason} but {REQUIRE_GO_ENV} is set")
    pytest.skip(f"{reason}; checksum-database tests skipped (CI installs golang-go and "
                f"golang-golang-x-mod-dev)")


def build_sumdbtest(workdir: Path) -> Path:
    """Build the Go program into `workdir` (GOPATH mode, no network); skip if it cannot be."""
    if shutil.which("go") is None:
        _unavailable("go command not on PATH")
    if not X_MOD.is_dir():
        _unavailable(f"golang.org/x/mod sources not found under {GOCODE}")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update({"GO111MODULE": "off", "GOPATH": f"{workdir / 'gopath'}{os.pathsep}{GOCODE}",
                "GOCACHE": str(workdir / "gocache"), "GOPROXY": "off", "GOTOOLCHAIN": "local",
                "CGO_ENABLED": "0", "HOME": str(workdir)})
    binary = workdir / "sumdbtest"
    done = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=SOURCE_DIR, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"building {SOURCE_DIR} failed:\n{done.stderr}")
    return binary


def write_modules(directory: Path, modules: Iterable[Module]) -> Path:
    """Write each module's .zip and .mod in the GOPROXY layout the Go program reads."""
    for m in modules:
        base = directory / m.escaped_path / "@v"
        base.mkdir(parents=True, exist_ok=True)
        (base / f"{m.escaped_version}.zip").write_bytes(m.zip)
        (base / f"{m.escaped_version}.mod").write_bytes(m.mod)
    return directory


def go_vectors(binary: Path, directory: Path, name: str = "sumdb.test") -> dict[str, Any]:
    """The Go tools' values for the modules in `directory` (see tests/support/sumdb/main.go)."""
    done = subprocess.run([str(binary), "vectors", "-dir", str(directory), "-name", name],
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class SumdbServer:
    """The Go checksum database on 127.0.0.1, stopped by its own process handle."""

    def __init__(self, binary: Path, directory: Path, workdir: Path, name: str = "sumdb.test") -> None:
        self.binary, self.directory, self.name = binary, directory, name
        self.log_path = workdir / f"{name}.requests.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.vkey = ""
        self.addr = ""

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def gosumdb(self) -> str:
        """The GOSUMDB value that points the go command straight at this server."""
        return f"{self.vkey} {self.url}"

    def start(self, timeout: float = 15.0) -> SumdbServer:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "-dir", str(self.directory), "-name", self.name,
                 "-listen", "127.0.0.1:0", "-log", str(self.log_path)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"sumdbtest did not start: {self.stderr_path.read_text()}")
        info = json.loads(line)
        self.vkey, self.addr = info["vkey"], info["addr"]
        return self

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET a path (``/latest``, ``/lookup/...``, ``/tile/...``) from the server."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body

    def requests(self) -> list[str]:
        """Every request path the server has seen, in order."""
        deadline = time.monotonic() + 1.0
        while not self.log_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SumdbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
