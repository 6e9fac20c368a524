"""What goes into the cache must be what was asked for.

Units: the go.mod module-line parser and the go command's major-version
rules (router/protocol/gomod.py), table-driven, with a hypothesis property and, where
Go and golang.org/x/mod are installed, a differential check against
``modfile.ParseLax`` itself; the version-list check; the x/mod/zip rules on
crafted zips (router/protocol/integrity.py).

Through the edge, with hostile fake upstreams: a captive portal's HTML or
another module's go.mod as a .mod, an HTML version list, and zips that climb
out of their directory, leave their prefix, declare 600 MiB or hold 100,000
entries. Each is a failed attempt: the good upstream answers (or the client
sees an aborted transfer, never a complete-looking 200), nothing is cached,
and an upstream that keeps doing it is ejected.
"""

from __future__ import annotations

import base64
import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from goproxy_router.protocol.gomod import GoModError, check_mod, module_path
from goproxy_router.protocol.integrity import (
    MAX_ZIP_ENTRIES,
    MAX_ZIP_FILE,
    list_problem,
    small_body_problem,
    zip_problem,
)
from tests.support import Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake, upstream_app
from tests.test_faults import config, fetch

LIB = Module("example.com/lib", "v1.2.3", files={"LICENSE": "MIT\n"})
WARM = [Module("example.com/warm", f"v1.0.{i}") for i in range(8)]
TREE = ModuleTree([LIB, *WARM])
PREFIX = "example.com/lib@v1.2.3/"

CAPTIVE_PORTAL = (b"<!DOCTYPE html>\n<html><head><title>Wi-Fi login</title></head>\n"
                  b"<body><form action=\"/login\">Accept the terms</form></body></html>\n")


# -- the go.mod module line ------------------------------------------------------------

@pytest.mark.parametrize("text, path", [
    ("module example.com/m\n", "example.com/m"),
    ("module example.com/m", "example.com/m"),                        # no final newline
    ('module "example.com/m"\n', "example.com/m"),                    # quoted
    ('module "example.com/\\x6d"\n', "example.com/m"),                # Go escapes
    ("// Deprecated: use v2.\nmodule example.com/m // the module\n\ngo 1.21\n", "example.com/m"),
    ("module (\n\t// one\n\texample.com/m\n)\n", "example.com/m"),   # a block
    ("module\texample.com/m//c\r\n\r\ngo 1.16\r\n", "example.com/m"),
    ("go 1.21\n\nrequire (\n\tgolang.org/x/mod v0.14.0\n)\n\nmodule example.com/m\n", "example.com/m"),
    ("module example.com/m\ntoolchain go1.21.0\ngodebug (\n\tdefault=go1.21\n)\n", "example.com/m"),
])
def test_module_path_reads_what_modfile_reads(text: str, path: str) -> None:
    assert module_path(text.encode()) == path


@pytest.mark.parametrize("text, problem", [
    (CAPTIVE_PORTAL.decode(), "missing module line"),
    ("", "missing module line"),
    ("go 1.21\n", "missing module line"),
    ("module ()\n", "missing module line"),
    ("module x (\n\texample.com/m\n)\n", "missing module line"),      # ParseLax skips that block
    ("module example.com/m\nmodule example.com/n\n", "repeated module statement"),
    ("module (\n\texample.com/m\n\texample.com/n\n)\n", "repeated module statement"),
    ("module a b\n", "usage: module module/path"),
    ("module\n", "usage: module module/path"),
    ("module `example.com/m`\n", "unquoted string cannot contain quote"),
    ("module example.com/'m'\n", "unquoted string cannot contain quote"),
    ('module "example.com/\\q"\n', "invalid quoted string"),
    ('module "example.com/m\n', "unexpected newline in string"),
    ("/* a */\nmodule example.com/m\n", "// comments"),
    ("\ufeffmodule example.com/m\n", "unexpected input character"),
    ("module example.com/m\x00\n", "unexpected input character"),
    ("module example.com/m\nrequire (\n\ta v1.0.0\n", "unterminated block"),
    ("module example.com/m\nrequire (\n\ta v1.0.0\n) x\n", "expected newline after closing paren"),
])
def test_module_path_refuses_what_modfile_refuses(text: str, problem: str) -> None:
    with pytest.raises(GoModError, match=problem):
        module_path(text.encode())


@pytest.mark.parametrize("mod, module, version, problem, fork", [
    ("module example.com/m\n", "example.com/m", "v1.0.0", None, False),
    ('module "example.com/m"\n', "example.com/m", "v1.0.0", None, False),
    # +incompatible: the proxy synthesizes `module <path>`, no suffix.
    ("module example.com/m\n", "example.com/m", "v2.0.0+incompatible", None, False),
    ("module example.com/m/v2\n", "example.com/m", "v2.0.0+incompatible", "not a v0/v1 path", False),
    ("module example.com/m/v2\n", "example.com/m/v2", "v2.0.0+incompatible", "+incompatible", False),
    # Major-version suffixes must match, /vN and gopkg.in .vN alike.
    ("module example.com/m/v2\n", "example.com/m/v2", "v2.1.0", None, False),
    ("module example.com/m\n", "example.com/m/v2", "v2.1.0", "not a /v2 suffix", False),
    ("module example.com/m/v3\n", "example.com/m/v2", "v2.1.0", "not a /v2 suffix", False),
    ("module example.com/m\n", "example.com/m", "v2.0.0", "should be v0 or v1, not v2", False),
    ("module example.com/m/v2\n", "example.com/m/v2", "v3.0.0", "should be v2, not v3", False),
    ("module gopkg.in/yaml.v2\n", "gopkg.in/yaml.v2", "v2.4.0", None, False),
    ("module gopkg.in/yaml.v3\n", "gopkg.in/yaml.v2", "v2.4.0", "not a .v2 suffix", False),
    # Another path with a fitting major: a fork's go.mod (taken through replace).
    ("module evil.example/other\n", "example.com/m", "v1.0.0", None, True),
    ("module github.com/orig/m/v2\n", "github.com/fork/m/v2", "v2.0.1", None, True),
    ("module gopkg.in/yaml.v2\n", "github.com/fork/yaml", "v1.0.0", None, True),   # cmd/go allows it
    ("module Evil..Example\n", "example.com/m", "v1.0.0", "invalid module path", False),
    (CAPTIVE_PORTAL.decode(), "example.com/m", "v1.0.0", "not a go.mod", False),
])
def test_check_mod_follows_the_go_command(mod: str, module: str, version: str,
                                          problem: str | None, fork: bool) -> None:
    checked = check_mod(mod.encode(), module, version)
    if problem is None:
        assert checked.problem is None, checked
    else:
        assert checked.problem is not None and problem in checked.problem, checked
    assert checked.fork is fork


_ELEM = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_PATHS = st.builds(lambda host, rest: "/".join([f"{host}.example", *rest]),
                   _ELEM, st.lists(_ELEM, max_size=3))
_GAP = st.sampled_from([" ", "\t", "  ", " \t"])
_COMMENT = st.sampled_from(["", " // c", "// x/*y", " //"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_PATHS, quoted=st.booleans(), block=st.booleans(), gap=_GAP, comment=_COMMENT,
       before=st.sampled_from(["", "// header\n", "\n\n", "go 1.21\n", "require x v1.0.0\n"]),
       after=st.sampled_from(["", "\n", "go 1.21\n", "require (\n\ta v1\n)\n", "// end"]),
       crlf=st.booleans())
def test_module_line_round_trips(path: str, quoted: bool, block: bool, gap: str, comment: str,
                                 before: str, after: str, crlf: bool) -> None:
    word = f'"{path}"' if quoted else path
    line = f"module (\n{gap}{word}{comment}\n)\n" if block else f"module{gap}{word}{comment}\n"
    text = before + line + after
    if crlf:
        text = text.replace("\n", "\r\n")
    assert module_path(text.encode()) == path
    assert check_mod(text.encode(), path, "v1.0.0").problem is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=120).map(str.encode))
def test_module_path_only_ever_answers_or_refuses(data: bytes) -> None:
    try:
        assert isinstance(module_path(data), str)
    except GoModError as exc:
        assert str(exc).startswith("go.mod:")


_GO_HELPER = """package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"os"

	"golang.org/x/mod/modfile"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for in.Scan() {
		data, _ := base64.StdEncoding.DecodeString(in.Text())
		f, err := modfile.ParseLax("go.mod", data, nil)
		if err != nil || f.Module == nil {
			fmt.Println("err")
		} else {
			fmt.Println("ok " + base64.StdEncoding.EncodeToString([]byte(f.Module.Mod.Path)))
		}
	}
}
"""
_GOCODE = Path("/usr/share/gocode")
_PIECES = ["module", "example.com/m", '"example.com/m"', '"a\\x62.c/d"', '"\\u00e9"', "`x`", "(",
           ")", "\n", "\n", " ", " ", "\t", "//c", "/*", '"', "'", "\r", "foo", "replace", "{",
           ",", "\\", "\x00", "\u00a0", "\v", "é", "a//b", "x/*", '"\\q"', '"\\377"', '"\\400"',
           '"unterminated', "\ufeff", "\x85"]


@pytest.mark.skipif(shutil.which("go") is None or not (_GOCODE / "src/golang.org/x/mod/modfile").is_dir(),
                    reason="needs go and golang.org/x/mod sources (Debian golang-golang-x-mod-dev)")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join), min_size=200,
                max_size=200))
def test_module_path_agrees_with_modfile_parselax(tmp_path_factory: pytest.TempPathFactory,
                                                  texts: list[str]) -> None:
    """Differential: the same verdict and path as Go's own parser (valid UTF-8 inputs)."""
    helper = _go_helper(tmp_path_factory)
    lines = b"\n".join(base64.b64encode(t.encode()) for t in texts) + b"\n"
    answers = subprocess.run([str(helper)], input=lines, capture_output=True, check=True,
                             timeout=60).stdout.decode().splitlines()
    assert len(answers) == len(texts)
    for text, answer in zip(texts, answers, strict=True):
        try:
            # Bytes a quoted escape made (`"\377"`) come back surrogate-escaped: as Go's raw bytes.
            path = module_path(text.encode()).encode("utf-8", "surrogateescape")
            mine = "ok " + base64.b64encode(path).decode()
        except GoModError:
            mine = "err"
        assert mine == answer, repr(text)


_HELPER_BINARY: list[Path] = []


def _go_helper(factory: pytest.TempPathFactory) -> Path:
    if not _HELPER_BINARY:
        src = factory.mktemp("parselax")
        (src / "main.go").write_text(_GO_HELPER)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(src), "GOPATH": str(_GOCODE),
               "GO111MODULE": "off", "GOCACHE": str(src / "cache"), "GOFLAGS": ""}
        subprocess.run(["go", "build", "-o", str(src / "parselax"), "."], cwd=src, env=env,
                       check=True, capture_output=True, timeout=300)
        _HELPER_BINARY.append(src / "parselax")
    return _HELPER_BINARY[0]


# -- version lists -----------------------------------------------------------------------

@pytest.mark.parametrize("body, ok", [
    (b"", True),
    (b"v1.0.0\nv1.2.3\n", True),
    (b"v1.0.0 2021-01-01T00:00:00Z\r\nv2.0.0+incompatible\n\n", True),
    (CAPTIVE_PORTAL, False),
    (b"v1.0.0\nnot found\n", False),
    (b"\xff\xfe", False),
])
def test_list_must_be_version_lines(body: bytes, ok: bool) -> None:
    assert (list_problem(body) is None) is ok
    assert (small_body_problem("list", body, None) is None) is ok


# -- zips ------------------------------------------------------------------------------------

def make_zip(entries: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2021, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def declare_size(data: bytes, name: str, size: int) -> bytes:
    """Patch the uncompressed size a zip's central directory declares for `name`."""
    raw = bytearray(data)
    at = raw.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len] == name.encode():
            struct.pack_into("<I", raw, at + 24, size)
            return bytes(raw)
        extra, comment = struct.unpack_from("<HH", raw, at + 30)
        at += 46 + name_len + extra + comment


def many_entries_zip(prefix: str, count: int) -> bytes:
    """`count` empty stored files, written with struct (zipfile takes seconds for 100,000)."""
    local, central = bytearray(), bytearray()
    crc = zlib.crc32(b"")
    for i in range(count):
        name = f"{prefix}f{i}.txt".encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, crc, 0, 0,
                               len(name), 0, 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, 0, 0,
                             len(name), 0) + name
    cd_offset, cd_size = len(local), len(central)
    zip64_at = cd_offset + cd_size
    zip64 = struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                        cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1)
    eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                       0xFFFFFFFF, 0)
    return bytes(local + central + zip64 + locator + eocd)


HOSTILE_ZIPS = {
    "dot-dot": make_zip({PREFIX + "go.mod": LIB.mod, PREFIX + "../../../../etc/x": b"owned"}),
    "outside-prefix": make_zip({PREFIX + "go.mod": LIB.mod, "example.com/other@v1.0.0/x.go": b"x"}),
    "600MiB": declare_size(make_zip({PREFIX + "go.mod": LIB.mod, PREFIX + "big.bin": bytes(4096)}),
                           PREFIX + "big.bin", 600 << 20),
    "100k-entries": many_entries_zip(PREFIX, 100_000),
}


@pytest.mark.parametrize("entries, problem", [
    ({PREFIX + "../../../../etc/x": b"x"}, "invalid path element"),
    ({PREFIX + "a/../b.go": b"x"}, "not clean"),
    ({PREFIX + "./a.go": b"x"}, "not clean"),
    ({"/etc/passwd": b"x"}, "outside"),
    ({PREFIX + "/etc/passwd": b"x"}, "not clean"),
    ({"example.com/other@v1.2.3/a.go": b"x"}, "outside"),
    ({"Example.com/lib@v1.2.3/a.go": b"x"}, "outside"),
    ({PREFIX + "a\\..\\..\\x": b"x"}, "invalid char"),
    ({PREFIX + "a.go": b"x", PREFIX + "A.go": b"y"}, "case-insensitive file name collision"),
    ({PREFIX + "a.go": b"x", PREFIX + "a.go/b.go": b"y"}, "both a file and a directory"),
    ({PREFIX + "sub/go.mod": b"module example.com/lib/sub\n"}, "not in module root"),
    ({PREFIX + "GO.MOD": b"module example.com/lib\n"}, "lowercase"),
    ({PREFIX + "con.go": b"x"}, "Windows"),
    ({PREFIX + "go.mod": b"module example.com/lib/v2\n"}, "the zip's go.mod"),
    ({PREFIX + "go.mod": CAPTIVE_PORTAL}, "the zip's go.mod"),
])
def test_zip_rules_of_x_mod_zip(entries: dict[str, bytes], problem: str) -> None:
    data = make_zip(entries)
    found = zip_problem(io.BytesIO(data), len(data), LIB.path, LIB.version)
    assert found is not None and problem in found, found


@pytest.mark.parametrize("name", sorted(HOSTILE_ZIPS))
def test_hostile_zips_are_refused(name: str) -> None:
    data = HOSTILE_ZIPS[name]
    assert zip_problem(io.BytesIO(data), len(data), LIB.path, LIB.version) is not None


def test_module_zips_pass() -> None:
    """The harness's zips (what the go command downloads in the e2e tests) are fine,
    and so is a fork's zip, whose go.mod names the original module."""
    fork = Module("example.com/fork", "v1.0.0", files={"go.mod": "module example.com/lib\n"})
    for m in (LIB, *WARM, fork, Module("example.com/lib/v2", "v2.0.0"),
              Module("example.com/dirs", "v0.1.0", files={"a/b/c.go": "package b\n", "a/d.txt": ""})):
        assert zip_problem(io.BytesIO(m.zip), len(m.zip), m.path, m.version) is None, m.key
    assert MAX_ZIP_ENTRIES >= 50_000


# -- through the edge ---------------------------------------------------------------------

def cached_files(cache_dir: Path) -> dict[str, bytes]:
    """Committed artifacts under the cache dir, by path relative to it."""
    if not cache_dir.exists():
        return {}
    return {p.relative_to(cache_dir).as_posix(): p.read_bytes() for p in cache_dir.rglob("*")
            if p.is_file() and p.suffix in (".mod", ".zip", ".info")
            and not p.name.startswith(".")}


def cached(cache_dir: Path, suffix: str) -> list[bytes]:
    return [data for rel, data in cached_files(cache_dir).items() if rel.endswith(suffix)]


MOD_PATH = f"/{LIB.path}/@v/{LIB.version}.mod"
ZIP_PATH = f"/{LIB.path}/@v/{LIB.version}.zip"


@pytest.mark.parametrize("bad", [CAPTIVE_PORTAL, b"module evil.example/other\n",
                                 b"module example.com/lib/v2\n"],
                         ids=["captive-portal", "another-module", "wrong-major"])
async def test_a_bad_mod_is_not_cached_and_the_good_upstream_answers(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path, bad: bytes) -> None:
    a = await fake_proxy(TREE, name="a", faults=Faults(corrupt=bad, paths=r"\.mod$"))
    b = await fake_proxy(TREE, name="b")
    client = await edge(config([("a", a.url), ("b", b.url)], tmp_path))
    got = await fetch(client, MOD_PATH)
    assert got.status == 200 and got.body == LIB.mod, got.body
    assert got.headers["X-Goproxy-Upstream"] == "b"
    assert cached(tmp_path / "cache", ".mod") == [LIB.mod]
    # The cache answers from then on; a is never trusted for it.
    again = await fetch(client, MOD_PATH)
    assert again.body == LIB.mod and again.headers["X-Goproxy-Cache"] == "hit"


async def test_a_bad_mod_everywhere_is_a_502_and_nothing_cached(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a", faults=Faults(corrupt=CAPTIVE_PORTAL))
    client = await edge(config([("a", a.url)], tmp_path))
    got = await fetch(client, MOD_PATH)
    assert got.status == 502 and b"not a go.mod" in (got.body or b""), got.body
    assert cached(tmp_path / "cache", ".mod") == []


async def test_a_forks_mod_is_served_when_no_upstream_has_better(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    """`replace orig => fork v1.0.0` makes the go command fetch a go.mod naming orig."""
    fork = Module("example.com/fork", "v1.0.0", files={"go.mod": "module example.com/lib\n"})
    tree = ModuleTree([fork])
    a = await fake_proxy(tree, name="a")
    b = await fake_proxy(tree, name="b")
    client = await edge(config([("a", a.url), ("b", b.url)], tmp_path))
    got = await fetch(client, f"/{fork.path}/@v/{fork.version}.mod")
    assert got.status == 200 and got.body == fork.mod, got.body
    assert len(b.requests) == 1, "the other upstream was not asked for a better answer"


async def test_a_list_that_is_html_is_refused(edge: MakeEdge, fake_proxy: MakeFake,
                                              tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a", faults=Faults(corrupt=CAPTIVE_PORTAL))
    b = await fake_proxy(TREE, name="b")
    client = await edge(config([("a", a.url), ("b", b.url)], tmp_path))
    path = f"/{LIB.path}/@v/list"
    got = await fetch(client, path)
    assert got.status == 200 and got.body == b"v1.2.3\n" and got.headers["X-Goproxy-Upstream"] == "b"
    b.set_faults(corrupt=CAPTIVE_PORTAL)
    got = await fetch(client, "/example.com/warm/@v/list")
    assert got.status == 502 and b"not a version" in (got.body or b""), got.body


@pytest.mark.parametrize("name", sorted(HOSTILE_ZIPS))
async def test_a_hostile_zip_never_completes_and_is_not_cached(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path, name: str) -> None:
    a = await fake_proxy(TREE, name="a", faults=Faults(corrupt=HOSTILE_ZIPS[name], paths=r"\.zip$"))
    b = await fake_proxy(TREE, name="b")
    client = await edge(config([("a", a.url), ("b", b.url)], tmp_path))
    got = await fetch(client, ZIP_PATH, timeout=60)
    if got.status == 200:
        assert got.aborted, "a hostile zip was delivered as a complete 200"
    else:
        assert got.status == 502, got.status
    assert cached(tmp_path / "cache", ".zip") == []
    # With the fault gone, the next request fetches (nothing was kept) and gets the real zip.
    a.clear_faults()
    got = await fetch(client, ZIP_PATH)
    assert got.status == 200 and got.body == LIB.zip
    assert cached(tmp_path / "cache", ".zip") == [LIB.zip]


async def test_a_zip_declaring_more_than_the_limit_fails_over_before_streaming(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    """A Content-Length over 500 MiB is refused at the headers: the next upstream answers."""
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = MAX_ZIP_FILE + 1
        await response.prepare(request)
        return response

    server = await upstream_app(huge)
    try:
        b = await fake_proxy(TREE, name="b")
        client = await edge(config([("a", str(server.make_url(""))), ("b", b.url)], tmp_path))
        got = await fetch(client, ZIP_PATH)
        assert got.status == 200 and got.body == LIB.zip
        assert got.headers["X-Goproxy-Upstream"] == "b"
    finally:
        await server.close()


def breaker_states(text: str) -> dict[str, float]:
    return {s.labels["upstream"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "goproxy_upstream_breaker_state"}


async def test_an_upstream_that_keeps_serving_bad_zips_is_ejected(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    bad = {m.key: make_zip({f"{m.path}@{m.version}/../escape": b"x"}) for m in WARM}
    a = await fake_proxy(TREE, name="a")
    b = await fake_proxy(TREE, name="b")
    cfg: dict[str, Any] = config([("a", a.url), ("b", b.url)], tmp_path,
                                 scoring={"plugins": ["breaker"],
                                          "breaker": {"threshold": 5, "ejection": 60}})
    client = await edge(cfg)
    for m in WARM[:5]:
        a.set_faults(corrupt=bad[m.key], paths=r"\.zip$")
        got = await fetch(client, f"/{m.path}/@v/{m.version}.zip")
        assert got.status != 200 or got.aborted
    async with client.get("/metrics") as resp:
        states = breaker_states(await resp.text())
    assert states["a"] == 2 and states["b"] == 0, states      # 2 = open (ejected)
    # Ejected: the next zip comes from b, whole.
    m = WARM[5]
    got = await fetch(client, f"/{m.path}/@v/{m.version}.zip")
    assert got.status == 200 and got.body == m.zip and got.headers["X-Goproxy-Upstream"] == "b"
