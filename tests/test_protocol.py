"""Tests for router.protocol: the GOPROXY path grammar, escaping and validation.

Tables pin each rule of golang.org/x/mod (CheckPath, EscapePath,
EscapeVersion, semver) and of the sumdb/tlog paths; hypothesis properties
check round trips and that no invalid path can reach an upstream.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goproxy_router.protocol import paths as protocol
from goproxy_router.protocol.paths import (
    ProtocolError,
    check_path,
    check_version_query,
    escape_path,
    escape_version,
    is_canonical,
    unescape_path,
    unescape_version,
)
from goproxy_router.protocol.requests import Kind, ModuleRequest, SumdbRequest, parse

FAST = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _reject(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    return info.value


# --- valid proxy paths ---------------------------------------------------------------------

# fmt: off
VALID = [
    # raw path, kind, decoded module, decoded version
    ("/golang.org/x/text/@v/list", Kind.LIST, "golang.org/x/text", None),
    ("/golang.org/x/text/@latest", Kind.LATEST, "golang.org/x/text", None),
    ("/golang.org/x/text/@v/v0.3.2.info", Kind.INFO, "golang.org/x/text", "v0.3.2"),
    ("/golang.org/x/text/@v/v0.3.2.mod", Kind.MOD, "golang.org/x/text", "v0.3.2"),
    ("/golang.org/x/text/@v/v0.3.2.zip", Kind.ZIP, "golang.org/x/text", "v0.3.2"),
    # case-encoding: raw "!", and "%21" as the go command sends it
    ("/github.com/!azure/azure-sdk-for-go/@v/list", Kind.LIST, "github.com/Azure/azure-sdk-for-go", None),
    ("/github.com/%21azure/azure-sdk-for-go/@v/v1.0.0.info", Kind.INFO,
     "github.com/Azure/azure-sdk-for-go", "v1.0.0"),
    ("/github.com/!google!cloud!platform/cloudsql-proxy/@latest", Kind.LATEST,
     "github.com/GoogleCloudPlatform/cloudsql-proxy", None),
    ("/github.com/!sirupsen/logrus/@v/v1.9.3.mod", Kind.MOD, "github.com/Sirupsen/logrus", "v1.9.3"),
    ("/example.com/m/@v/v1.0.0-!r!c.1.mod", Kind.MOD, "example.com/m", "v1.0.0-RC.1"),
    ("/example.com/m/@v/!feature-!x.info", Kind.INFO, "example.com/m", "Feature-X"),
    # +incompatible: raw plus, or %2B; never a space
    ("/github.com/docker/docker/@v/v20.10.0+incompatible.zip", Kind.ZIP,
     "github.com/docker/docker", "v20.10.0+incompatible"),
    ("/github.com/docker/docker/@v/v20.10.0%2Bincompatible.mod", Kind.MOD,
     "github.com/docker/docker", "v20.10.0+incompatible"),
    # pseudo-versions, all three forms; toolchain versions
    ("/golang.org/x/net/@v/v0.0.0-20191109021931-daa7c04131f5.zip", Kind.ZIP,
     "golang.org/x/net", "v0.0.0-20191109021931-daa7c04131f5"),
    ("/example.com/m/@v/v1.2.4-0.20191109021931-daa7c04131f5.mod", Kind.MOD,
     "example.com/m", "v1.2.4-0.20191109021931-daa7c04131f5"),
    ("/example.com/m/@v/v1.2.3-pre.0.20191109021931-daa7c04131f5.info", Kind.INFO,
     "example.com/m", "v1.2.3-pre.0.20191109021931-daa7c04131f5"),
    ("/golang.org/toolchain/@v/v0.0.1-go1.21.0.linux-amd64.zip", Kind.ZIP,
     "golang.org/toolchain", "v0.0.1-go1.21.0.linux-amd64"),
    # .info takes any query: branch, commit prefix, semver prefix, "latest"
    ("/example.com/m/@v/master.info", Kind.INFO, "example.com/m", "master"),
    ("/example.com/m/@v/daa7c041.info", Kind.INFO, "example.com/m", "daa7c041"),
    ("/example.com/m/@v/v1.info", Kind.INFO, "example.com/m", "v1"),
    ("/example.com/m/@v/v1.2.info", Kind.INFO, "example.com/m", "v1.2"),
    ("/example.com/m/@v/latest.info", Kind.INFO, "example.com/m", "latest"),
    ("/example.com/m/@v/my%20branch.info", Kind.INFO, "example.com/m", "my branch"),
    ("/example.com/m/@v/a%23b%2Cc(d).info", Kind.INFO, "example.com/m", "a#b,c(d)"),
    ("/example.com/m/@v/100%25.info", Kind.INFO, "example.com/m", "100%"),
    # major version suffixes
    ("/example.com/m/v2/@v/list", Kind.LIST, "example.com/m/v2", None),
    ("/example.com/m/v10/@v/v10.0.0.mod", Kind.MOD, "example.com/m/v10", "v10.0.0"),
    ("/example.com/m/v1.x/@v/list", Kind.LIST, "example.com/m/v1.x", None),
    ("/gopkg.in/yaml.v3/@v/list", Kind.LIST, "gopkg.in/yaml.v3", None),
    ("/gopkg.in/check.v1/@v/v0.0.0-20161208181325-20d25e280405.mod", Kind.MOD,
     "gopkg.in/check.v1", "v0.0.0-20161208181325-20d25e280405"),
    ("/gopkg.in/src-d/go-git.v4/@latest", Kind.LATEST, "gopkg.in/src-d/go-git.v4", None),
    ("/gopkg.in/yaml.v0/@v/list", Kind.LIST, "gopkg.in/yaml.v0", None),
    ("/gopkg.in/foo.v2-unstable/@v/list", Kind.LIST, "gopkg.in/foo.v2-unstable", None),
    # percent-decoding happens before the path is split
    ("/example.com%2Fm/@v/list", Kind.LIST, "example.com/m", None),
    ("/example.com/%6d/@v/list", Kind.LIST, "example.com/m", None),
    # punctuation and tilde forms that are allowed
    ("/example.com/a_b-c~d.e/@v/list", Kind.LIST, "example.com/a_b-c~d.e", None),
    ("/example.com/~glenda/@v/list", Kind.LIST, "example.com/~glenda", None),
    ("/example.com/x~/@v/list", Kind.LIST, "example.com/x~", None),
    ("/example.com/console/@v/list", Kind.LIST, "example.com/console", None),
    ("/1.2.3.4/m/@v/list", Kind.LIST, "1.2.3.4/m", None),
]

# Spellings that upstream_path() normalises: "!" raw, "+" raw, lower-case hex.
NORMALISED = [
    ("/github.com/%21azure/azure-sdk-for-go/@v/v1.0.0.info",
     "/github.com/!azure/azure-sdk-for-go/@v/v1.0.0.info"),
    ("/github.com/docker/docker/@v/v20.10.0%2Bincompatible.mod",
     "/github.com/docker/docker/@v/v20.10.0+incompatible.mod"),
    ("/example.com/m/@v/a%23b%2Cc(d).info", "/example.com/m/@v/a%23b%2cc%28d%29.info"),
    ("/example.com%2Fm/@v/list", "/example.com/m/@v/list"),
    ("/example.com/%6d/@v/list", "/example.com/m/@v/list"),
]
# fmt: on


@pytest.mark.parametrize(("raw", "kind", "module", "version"), VALID)
def test_parse_valid(raw: str, kind: Kind, module: str, version: str | None) -> None:
    req = parse(raw)
    assert req == ModuleRequest(kind, module, version)
    upstream = req.upstream_path()
    assert parse(upstream) == req
    if raw not in dict(NORMALISED):
        assert upstream == raw  # an already-canonical spelling is kept as is


@pytest.mark.parametrize(("raw", "upstream"), NORMALISED)
def test_upstream_path_normalises_spelling(raw: str, upstream: str) -> None:
    req = parse(raw)
    assert isinstance(req, ModuleRequest)
    assert req.upstream_path() == upstream


# fmt: off
IMMUTABLE = [
    ("/example.com/m/@v/v1.0.0.info", True),
    ("/example.com/m/@v/v1.0.0.mod", True),
    ("/example.com/m/@v/v1.0.0.zip", True),
    ("/example.com/m/@v/v2.0.0+incompatible.info", True),
    ("/example.com/m/@v/v0.0.0-20191109021931-daa7c04131f5.info", True),
    ("/example.com/m/@v/master.info", False),
    ("/example.com/m/@v/v1.info", False),
    ("/example.com/m/@v/v1.0.0+meta.info", False),
    ("/example.com/m/@v/latest.info", False),
    ("/example.com/m/@v/list", False),
    ("/example.com/m/@latest", False),
]
# fmt: on


@pytest.mark.parametrize(("raw", "immutable"), IMMUTABLE)
def test_immutable(raw: str, immutable: bool) -> None:
    req = parse(raw)
    assert isinstance(req, ModuleRequest)
    assert req.immutable is immutable


# --- invalid proxy paths -------------------------------------------------------------------

# fmt: off
INVALID = [
    # raw path, status, a fragment of the reason
    # case-encoding
    ("/github.com/Azure/x/@v/list", 400, 'upper-case letters must be escaped as "!" + lower case'),
    ("/Example.com/x/@v/list", 400, 'invalid module path "Example.com/x": upper-case letters'),
    ("/github.com/%41zure/x/@v/list", 400, "upper-case letters must be escaped"),
    ("/github.com/!Azure/x/@v/list", 400, "upper-case letters must be escaped"),
    ("/github.com/!/x/@v/list", 400, '"!" must be followed by a lower-case letter'),
    ("/github.com/x!/@v/list", 400, '"!" must be followed by a lower-case letter'),
    ("/github.com/!1x/@v/list", 400, '"!" must be followed by a lower-case letter'),
    ("/github.com/!!x/@v/list", 400, '"!" must be followed by a lower-case letter'),
    ("/example.com/m/@v/V1.0.0.info", 400, "upper-case letters must be escaped"),
    ("/example.com/m/@v/v1.0.0!.info", 400, '"!" must be followed by a lower-case letter'),
    ("/!example.com/x/@v/list", 400, 'invalid char "E" in first path element'),
    # percent-encoding, UTF-8, NUL, backslash
    ("/example.com/%zz/@v/list", 400, 'invalid percent-encoding "%zz"'),
    ("/example.com/x%2/@v/list", 400, "invalid percent-encoding"),
    ("/example.com/x/@v/list%", 400, "invalid percent-encoding"),
    ("/example.com/%ff/@v/list", 400, "not valid UTF-8"),
    ("/example.com/%c3%28/@v/list", 400, "not valid UTF-8"),
    ("/example.com/\udcff/@v/list", 400, "not valid UTF-8"),
    ("/example.com/a%00b/@v/list", 400, "NUL byte"),
    ("/example.com/m/@v/v1%00.info", 400, "NUL byte"),
    ("/example.com/a%5Cb/@v/list", 400, "backslash"),
    ("/example.com/a\\b/@v/list", 400, "backslash"),
    # CheckPath: structure
    ("//example.com/x/@v/list", 400, "empty path element"),
    ("/example.com//x/@v/list", 400, "double slash"),
    ("/example.com/x%2F/@v/list", 400, "trailing slash"),
    ("/example.com/../x/@v/list", 400, "double dot"),
    ("/example.com/a..b/@v/list", 400, "double dot"),
    ("/example.com/./x/@v/list", 400, 'invalid path element "."'),
    ("/example.com/.x/@v/list", 400, "leading dot in path element"),
    ("/example.com/x./@v/list", 400, "trailing dot in path element"),
    ("/-example.com/x/@v/list", 400, "leading dash"),
    # CheckPath: characters
    ("/example.com/a+b/@v/list", 400, 'invalid char "+"'),
    ("/example.com/a%20b/@v/list", 400, 'invalid char " "'),
    ("/example.com/a%23b/@v/list", 400, 'invalid char "#"'),
    ("/example.com/caf%C3%A9/@v/list", 400, 'invalid char "\\u00e9"'),
    ("/example.com/a:b/@v/list", 400, 'invalid char ":"'),
    ("/example.com/a%40b/@latest", 400, 'invalid char "@"'),
    # CheckPath: first element
    ("/example/x/@v/list", 400, "missing dot in first path element"),
    ("/localhost/@v/list", 400, "missing dot in first path element"),
    ("/ex_ample.com/x/@v/list", 400, 'invalid char "_" in first path element'),
    ("/ex~ample.com/x/@v/list", 400, 'invalid char "~" in first path element'),
    # Windows reserved names and short names
    ("/example.com/con/@v/list", 400, '"con" disallowed as path element component on Windows'),
    ("/con.example.com/x/@v/list", 400, '"con" disallowed'),
    ("/example.com/aux.go/@v/list", 400, '"aux" disallowed'),
    ("/example.com/!n!u!l/@v/list", 400, '"NUL" disallowed'),
    ("/example.com/com1/@v/list", 400, '"com1" disallowed'),
    ("/example.com/lpt9.x/@v/list", 400, '"lpt9" disallowed'),
    ("/example.com/prn/@v/list", 400, '"prn" disallowed'),
    ("/example.com/longna~1/@v/list", 400, "trailing tilde and digits"),
    ("/example.com/longna~1.dir/@v/list", 400, "trailing tilde and digits"),
    ("/example.com/~9999999/@v/list", 400, "trailing tilde and digits"),
    # major version suffixes
    ("/example.com/m/v1/@v/list", 400, 'invalid major version suffix "/v1"'),
    ("/example.com/m/v0/@v/list", 400, 'invalid major version suffix "/v0"'),
    ("/example.com/m/v02/@v/list", 400, "leading zero"),
    ("/example.com/m/v2.0/@v/list", 400, "no dots allowed"),
    ("/example.com/v2/m/v1/@v/list", 400, 'invalid major version suffix "/v1"'),
    ("/gopkg.in/yaml/@v/list", 400, "gopkg.in paths must end in a major version"),
    ("/gopkg.in/yaml/v2/@v/list", 400, "gopkg.in paths must end in a major version"),
    ("/gopkg.in/yaml.v/@v/list", 400, 'invalid gopkg.in major version ".v"'),
    ("/gopkg.in/yaml.v01/@v/list", 400, 'invalid gopkg.in major version ".v01"'),
    ("/gopkg.in/yaml.v0-unstable/@v/list", 400, "invalid gopkg.in major version"),
    # .mod and .zip need canonical versions
    ("/example.com/m/@v/master.mod", 400, "need a canonical semantic version like v1.2.3"),
    ("/example.com/m/@v/latest.zip", 400, "need a canonical semantic version"),
    ("/example.com/m/@v/v1.2.zip", 400, "canonical semantic version (v1.2.0)"),
    ("/example.com/m/@v/v1.mod", 400, "(v1.0.0)"),
    ("/example.com/m/@v/v1.0.0+meta.mod", 400, "(v1.0.0)"),
    ("/example.com/m/@v/v01.0.0.zip", 400, "need a canonical semantic version"),
    ("/example.com/m/@v/v1.0.0-01.zip", 400, "need a canonical semantic version"),
    ("/example.com/m/@v/1.0.0.zip", 400, "need a canonical semantic version"),
    # versions that are not valid file-name elements
    ("/example.com/m/@v/.info", 400, "empty version"),
    ("/example.com/m/@v/..info", 400, 'invalid path element "."'),
    ("/example.com/m/@v/...info", 400, 'invalid path element ".."'),
    ("/example.com/m/@v/.hidden.info", 400, "leading dot"),
    ("/example.com/m/@v/-x.info", 400, "leading dash"),
    ("/example.com/m/@v/x..info", 400, "trailing dot"),
    ("/example.com/m/@v/a..b.info", 400, "double dot"),
    ("/example.com/m/@v/%3Cv1.2.3.info", 400, 'invalid char "<"'),
    ("/example.com/m/@v/a*b.info", 400, 'invalid char "*"'),
    ("/example.com/m/@v/a%22b.info", 400, 'invalid char "\\""'),
    ("/example.com/m/@v/a|b.info", 400, 'invalid char "|"'),
    ("/example.com/m/@v/a:b.info", 400, 'invalid char ":"'),
    ("/example.com/m/@v/caf%C3%A9.info", 400, "invalid char"),
    ("/example.com/m/@v/con.info", 400, '"con" disallowed'),
    # not the protocol at all
    ("", 404, "not a Go module proxy path"),
    ("/", 404, "not a Go module proxy path"),
    ("/favicon.ico", 404, "not a Go module proxy path"),
    ("example.com/m/@v/list", 404, "not a Go module proxy path"),
    ("/example.com/m", 404, "not a Go module proxy path"),
    ("/example.com/m/@v", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/list/", 404, "not a Go module proxy path"),
    ("/example.com/m/@latest/", 404, "not a Go module proxy path"),
    ("/example.com/m/@V/list", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/LIST", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/v1.0.0.tar", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/v1.0.0.INFO", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/feature/x.info", 404, "not a Go module proxy path"),
    ("/example.com/m/@v/feature%2Fx.info", 404, "not a Go module proxy path"),
    ("/example.com/m/@other", 404, "not a Go module proxy path"),
]
# fmt: on


@pytest.mark.parametrize(("raw", "status", "fragment"), INVALID)
def test_parse_invalid(raw: str, status: int, fragment: str) -> None:
    err = _reject(raw)
    assert err.status == status
    assert fragment in err.reason
    assert str(err) == err.reason
    assert "\n" not in err.reason and "\r" not in err.reason


def test_long_paths_parse_like_short_ones() -> None:
    module = "example.com/" + "/".join(["segment"] * 60)
    req = parse(f"/{module}/@v/v1.0.0.zip")
    assert req == ModuleRequest(Kind.ZIP, module, "v1.0.0")
    assert parse(req.upstream_path()) == req


def test_reason_is_short_for_huge_paths() -> None:
    err = _reject("/example.com/" + "a+" * 5000 + "/@v/list")
    assert err.status == 400
    assert len(err.reason) < 400


# --- checksum database ---------------------------------------------------------------------

# fmt: off
SUMDB_VALID = [
    # raw path, name, endpoint, tail, module, version
    ("/sumdb/sum.golang.org/supported", "sum.golang.org", "supported", "supported", None, None),
    ("/sumdb/sum.golang.org/latest", "sum.golang.org", "latest", "latest", None, None),
    ("/sumdb/sum.golang.google.cn/supported", "sum.golang.google.cn", "supported", "supported", None, None),
    ("/sumdb/localhost/latest", "localhost", "latest", "latest", None, None),
    ("/sumdb/localhost:8443/supported", "localhost:8443", "supported", "supported", None, None),
    ("/sumdb/sum.corp.example/go/supported", "sum.corp.example/go", "supported", "supported", None, None),
    ("/sumdb/sum.corp.example/go/v2/lookup/example.com/tile/latest@v1.0.0", "sum.corp.example/go/v2",
     "lookup", "lookup/example.com/tile/latest@v1.0.0", "example.com/tile/latest", "v1.0.0"),
    ("/sumdb/sum.corp.example/go/tile/8/0/000", "sum.corp.example/go", "tile", "tile/8/0/000", None, None),
    ("/sumdb/sum.golang.org/lookup/golang.org/x/text@v0.3.2", "sum.golang.org", "lookup",
     "lookup/golang.org/x/text@v0.3.2", "golang.org/x/text", "v0.3.2"),
    ("/sumdb/sum.golang.org/lookup/github.com/!azure/azure-sdk-for-go@v1.0.0", "sum.golang.org", "lookup",
     "lookup/github.com/!azure/azure-sdk-for-go@v1.0.0", "github.com/Azure/azure-sdk-for-go", "v1.0.0"),
    ("/sumdb/sum.golang.org/lookup/github.com/%21azure/azure-sdk-for-go@v1.0.0", "sum.golang.org", "lookup",
     "lookup/github.com/!azure/azure-sdk-for-go@v1.0.0", "github.com/Azure/azure-sdk-for-go", "v1.0.0"),
    ("/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0-!r!c1", "sum.golang.org", "lookup",
     "lookup/example.com/m@v1.0.0-!r!c1", "example.com/m", "v1.0.0-RC1"),
    ("/sumdb/sum.golang.org/lookup/github.com/docker/docker@v20.10.0+incompatible", "sum.golang.org",
     "lookup", "lookup/github.com/docker/docker@v20.10.0+incompatible", "github.com/docker/docker",
     "v20.10.0+incompatible"),
    ("/sumdb/sum.golang.org/tile/8/0/000", "sum.golang.org", "tile", "tile/8/0/000", None, None),
    ("/sumdb/sum.golang.org/tile/8/0/x001/234", "sum.golang.org", "tile", "tile/8/0/x001/234", None, None),
    ("/sumdb/sum.golang.org/tile/8/0/x001/234.p/5", "sum.golang.org", "tile", "tile/8/0/x001/234.p/5",
     None, None),
    ("/sumdb/sum.golang.org/tile/8/1/x001/x002/003.p/255", "sum.golang.org", "tile",
     "tile/8/1/x001/x002/003.p/255", None, None),
    ("/sumdb/sum.golang.org/tile/8/data/000.p/1", "sum.golang.org", "tile", "tile/8/data/000.p/1",
     None, None),
    ("/sumdb/sum.golang.org/tile/8/data/x123/456", "sum.golang.org", "tile", "tile/8/data/x123/456",
     None, None),
    ("/sumdb/sum.golang.org/tile/3/4/x001/x234/067.p/1", "sum.golang.org", "tile",
     "tile/3/4/x001/x234/067.p/1", None, None),
    ("/sumdb/sum.golang.org/tile/30/63/999", "sum.golang.org", "tile", "tile/30/63/999", None, None),
    ("/sumdb/sum.golang.org/tile/1/0/000.p/1", "sum.golang.org", "tile", "tile/1/0/000.p/1", None, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("raw", "name", "endpoint", "tail", "module", "version"), SUMDB_VALID
)
def test_parse_sumdb_valid(
    raw: str,
    name: str,
    endpoint: str,
    tail: str,
    module: str | None,
    version: str | None,
) -> None:
    req = parse(raw)
    assert req == SumdbRequest(name, endpoint, tail, module, version)
    assert parse(f"/sumdb/{name}/{tail}") == req


# fmt: off
SUMDB_INVALID = [
    ("/sumdb/Sum.golang.org/supported", 400, "invalid checksum database name"),
    ("/sumdb/sum_golang.org/supported", 400, "must be a lower-case host name"),
    ("/sumdb/user@sum.golang.org/supported", 400, "must not have user info"),
    ("/sumdb/sum.golang.org:99999/supported", 400, "port 99999 is out of range"),
    ("/sumdb/sum.corp.example//go/supported", 400, "must not end in '/' or contain an empty element"),
    ("/sumdb/sum.corp.example/../supported", 400, 'path element ".." must be'),
    ("/sumdb/-sum.golang.org/latest", 400, "invalid checksum database name"),
    ("/sumdb/sum..golang.org/latest", 400, "invalid checksum database name"),
    ("/sumdb/sum.golang.org./latest", 400, "invalid checksum database name"),
    ("/sumdb//supported", 400, "invalid checksum database name"),
    ("/sumdb/" + "a" * 64 + ".org/supported", 400, "invalid checksum database name"),
    ("/sumdb/sum.golang.org", 404, "not a Go module proxy path"),
    ("/sumdb/sum.golang.org/", 404, "not a Go module proxy path"),
    ("/sumdb/sum.golang.org/supported/", 404, "not a Go module proxy path"),
    ("/sumdb/sum.golang.org/latest/x", 404, "not a Go module proxy path"),
    ("/sumdb/sum.golang.org/foo", 404, "not a Go module proxy path"),
    ("/sumdb/sum.golang.org/LOOKUP/x.com/m@v1.0.0", 404, "not a Go module proxy path"),
    # lookups
    ("/sumdb/sum.golang.org/lookup", 400, "want lookup/<module>@<version>"),
    ("/sumdb/sum.golang.org/lookup/golang.org/x/text", 400, "want lookup/<module>@<version>"),
    ("/sumdb/sum.golang.org/lookup/github.com/Azure/x@v1.0.0", 400, "upper-case letters must be escaped"),
    ("/sumdb/sum.golang.org/lookup/github.com/!/x@v1.0.0", 400, '"!" must be followed'),
    ("/sumdb/sum.golang.org/lookup/example.com/m@V1.0.0", 400, "upper-case letters must be escaped"),
    ("/sumdb/sum.golang.org/lookup/example.com/m@master", 400, "need a canonical semantic version"),
    ("/sumdb/sum.golang.org/lookup/example.com/m@v1.2", 400, "need a canonical semantic version"),
    ("/sumdb/sum.golang.org/lookup/example.com/m@", 400, "empty version"),
    ("/sumdb/sum.golang.org/lookup/@v1.0.0", 400, "empty string"),
    ("/sumdb/sum.golang.org/lookup/example/m@v1.0.0", 400, "missing dot in first path element"),
    ("/sumdb/sum.golang.org/lookup/example.com/m/v1@v1.0.0", 400, 'invalid major version suffix "/v1"'),
    ("/sumdb/sum.golang.org/lookup/example.com/../m@v1.0.0", 400, "double dot"),
    # tiles
    ("/sumdb/sum.golang.org/tile", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/0/0/000", 400, "height must be 1 to 30"),
    ("/sumdb/sum.golang.org/tile/31/0/000", 400, "height must be 1 to 30"),
    ("/sumdb/sum.golang.org/tile/08/0/000", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/00/000", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/-1/000", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/64/000", 400, "level must be 0 to 63"),
    ("/sumdb/sum.golang.org/tile/8/foo/000", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/1", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/0001", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/x1/000", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/001/234", 400, "all but the last x-prefixed"),
    ("/sumdb/sum.golang.org/tile/8/0/x001", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/x000/001", 400, "leading x000 element"),
    ("/sumdb/sum.golang.org/tile/8/0/x009/x999/x999/x999/x999/x999/x999/999", 400, "tile number too large"),
    ("/sumdb/sum.golang.org/tile/8/0/000.p/0", 400, "partial width must be 1 to 255"),
    ("/sumdb/sum.golang.org/tile/8/0/000.p/256", 400, "partial width must be 1 to 255"),
    ("/sumdb/sum.golang.org/tile/1/0/000.p/2", 400, "partial width must be 1 to 1"),
    ("/sumdb/sum.golang.org/tile/8/0/000.p/08", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/000.p/", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/000.p", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/000/", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/000.q/5", 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/8/0/" + "9" * 5000, 400, "invalid tile path"),
    ("/sumdb/sum.golang.org/tile/" + "9" * 5000 + "/0/000", 400, "height must be 1 to 30"),
]
# fmt: on


@pytest.mark.parametrize(("raw", "status", "fragment"), SUMDB_INVALID)
def test_parse_sumdb_invalid(raw: str, status: int, fragment: str) -> None:
    err = _reject(raw)
    assert err.status == status
    assert fragment in err.reason


def test_sumdb_request_validates_its_fields() -> None:
    with pytest.raises(ProtocolError, match="does not match"):
        SumdbRequest(
            "sum.golang.org",
            "lookup",
            "lookup/example.com/x@v1.0.0",
            "example.com/m",
            "v1.0.0",
        )
    with pytest.raises(ProtocolError, match="needs a module and a version"):
        SumdbRequest(
            "sum.golang.org", "lookup", "lookup/example.com/m@v1.0.0", None, None
        )
    with pytest.raises(ProtocolError, match="takes no arguments"):
        SumdbRequest("sum.golang.org", "latest", "latest/x", None, None)
    with pytest.raises(ProtocolError, match="takes no module or version"):
        SumdbRequest("sum.golang.org", "tile", "tile/8/0/000", "example.com/m", None)
    with pytest.raises(ProtocolError) as info:
        SumdbRequest("sum.golang.org", "other", "other", None, None)
    assert info.value.status == 404


def test_module_request_validates_its_fields() -> None:
    with pytest.raises(ProtocolError, match="missing dot"):
        ModuleRequest(Kind.LIST, "example/m", None)
    with pytest.raises(ProtocolError, match="takes no version"):
        ModuleRequest(Kind.LATEST, "example.com/m", "v1.0.0")
    with pytest.raises(ProtocolError, match="needs a version"):
        ModuleRequest(Kind.ZIP, "example.com/m", None)
    with pytest.raises(ProtocolError, match="canonical"):
        ModuleRequest(Kind.MOD, "example.com/m", "master")
    req = ModuleRequest(Kind.INFO, "example.com/m", "master")
    assert req.upstream_path() == "/example.com/m/@v/master.info"


# --- check_path, escaping, versions --------------------------------------------------------

# fmt: off
VALID_MODULE_PATHS = [
    "golang.org/x/text", "github.com/Azure/azure-sdk-for-go", "github.com/GoogleCloudPlatform/cloudsql-proxy",
    "example.com/m/v2", "example.com/m/v1.x", "example.com/v2", "gopkg.in/yaml.v2", "gopkg.in/check.v1",
    "gopkg.in/yaml.v0", "gopkg.in/foo.v3-unstable", "example.com/a_b/c~d/e-f/G.H", "x.y",
    "example.com/~glenda", "example.com/a~b1c", "example.com/conx", "example.com/comm1", "example.com/-x",
]
# fmt: on


@pytest.mark.parametrize("path", VALID_MODULE_PATHS)
def test_check_path_valid(path: str) -> None:
    check_path(path)


# fmt: off
INVALID_MODULE_PATHS = [
    ("", "empty string"),
    ("-x.com/m", "leading dash"),
    ("/x.com/m", "empty path element"),
    ("x.com//m", "double slash"),
    ("x.com/m/", "trailing slash"),
    ("x.com/../m", "double dot"),
    ("x.com/a..b", "double dot"),
    ("x.com/.m", "leading dot in path element"),
    ("x.com/m.", "trailing dot in path element"),
    (".x.com/m", "leading dot in path element"),
    ("x.com/a!b", 'invalid char "!"'),
    ("x.com/a+b", 'invalid char "+"'),
    ("x.com/a@b", 'invalid char "@"'),
    ("x.com/a b", 'invalid char " "'),
    ("x.com/a\x00b", 'invalid char "\\u0000"'),
    ("x.com/a\\b", 'invalid char "\\\\"'),
    ("x.com/\u00e9", "invalid char"),
    ("xcom/m", "missing dot in first path element"),
    ("X.com/m", 'invalid char "X" in first path element'),
    ("x_y.com/m", 'invalid char "_" in first path element'),
    ("x.com/CON", "disallowed as path element component on Windows"),
    ("x.com/Lpt1.txt", "disallowed as path element component on Windows"),
    ("x.com/aux", "disallowed as path element component on Windows"),
    ("x.com/a~1", "trailing tilde and digits"),
    ("x.com/a~12.b", "trailing tilde and digits"),
    ("x.com/m/v1", 'invalid major version suffix "/v1"'),
    ("x.com/m/v0", 'invalid major version suffix "/v0"'),
    ("x.com/m/v03", "leading zero"),
    ("x.com/m/v2.1", "no dots allowed"),
    ("gopkg.in/yaml", "gopkg.in paths must end in a major version"),
    ("gopkg.in/yaml.v02", "invalid gopkg.in major version"),
]
# fmt: on


@pytest.mark.parametrize(("path", "why"), INVALID_MODULE_PATHS)
def test_check_path_invalid(path: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_path(path)
    assert info.value.status == 400
    assert info.value.reason.startswith("invalid module path ")
    assert why in info.value.reason


# fmt: off
PATH_ESCAPES = [
    ("github.com/Azure/azure-sdk-for-go", "github.com/!azure/azure-sdk-for-go"),
    ("github.com/GoogleCloudPlatform/cloudsql-proxy", "github.com/!google!cloud!platform/cloudsql-proxy"),
    ("github.com/Sirupsen/logrus", "github.com/!sirupsen/logrus"),
    ("rsc.io/QUOTE", "rsc.io/!q!u!o!t!e"),
    ("golang.org/x/text", "golang.org/x/text"),
]
# fmt: on


@pytest.mark.parametrize(("path", "escaped"), PATH_ESCAPES)
def test_escape_path_round_trip(path: str, escaped: str) -> None:
    assert escape_path(path) == escaped
    assert unescape_path(escaped) == path


# fmt: off
VERSION_ESCAPES = [
    ("v1.0.0", "v1.0.0"),
    ("v1.0.0-RC1", "v1.0.0-!r!c1"),
    ("v2.0.0+incompatible", "v2.0.0+incompatible"),
    ("Master", "!master"),
    ("latest", "latest"),
    ("my branch", "my branch"),
]
# fmt: on


@pytest.mark.parametrize(("version", "escaped"), VERSION_ESCAPES)
def test_escape_version_round_trip(version: str, escaped: str) -> None:
    assert escape_version(version) == escaped
    assert unescape_version(escaped) == version


# fmt: off
INVALID_QUERIES = [
    "", "v1!", "a/b", "a:b", "a<b", "a>b", "a?b", "a*b", "a|b", "a'b", "a`b", 'a"b', "a\\b", "a\x00b",
    "caf\u00e9", ".", "..", ".x", "-x", "x.", "a..b", "con", "NUL.txt",
]
# fmt: on


@pytest.mark.parametrize("bad", INVALID_QUERIES)
def test_check_version_query_invalid(bad: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_version_query(bad)
    assert info.value.status == 400
    assert info.value.reason.startswith("invalid version ")


# fmt: off
VALID_QUERIES = [
    "v1.0.0", "master", "latest", "daa7c041", "v1", "v1.2", "release-1.0", "a#b", "a(b)", "a,b", "a=b",
    "a@b", "a[b]", "a^b", "a{b}", "a~1", "a b", "100%", "$x", "a&b", "a+b", "a_b", "x-",
]
# fmt: on


@pytest.mark.parametrize("good", VALID_QUERIES)
def test_check_version_query_valid(good: str) -> None:
    check_version_query(good)


@pytest.mark.parametrize(
    "bad", ["Github.com/!x", "github.com/!", "github.com/!!x", "github.com/!7"]
)
def test_unescape_path_rejects_non_canonical_case_encoding(bad: str) -> None:
    with pytest.raises(ProtocolError):
        unescape_path(bad)


# fmt: off
CANONICAL = [
    ("v1.0.0", True), ("v0.0.0", True), ("v1.2.3-pre", True), ("v1.2.3-pre.1", True),
    ("v1.2.3-0", True), ("v1.2.3-0a", True), ("v1.2.3-rc.01a", True), ("v2.0.0+incompatible", True),
    ("v2.0.0-pre+incompatible", True), ("v0.0.0-20191109021931-daa7c04131f5", True), ("v1.0.0-RC1", True),
    ("v1", False), ("v1.2", False), ("v1.0.0+meta", False), ("v1.0.0+incompatible.x", False),
    ("v1.0.0+Incompatible", False), ("v01.0.0", False), ("v1.00.0", False), ("v1.0.00", False),
    ("v1.0.0-01", False), ("v1.0.0-", False), ("v1.0.0-a..b", False), ("v1.0.0-a_b", False),
    ("1.0.0", False), ("V1.0.0", False), ("", False), ("latest", False), ("v1.0.0\n", False),
]
# fmt: on


@pytest.mark.parametrize(("version", "canonical"), CANONICAL)
def test_is_canonical(version: str, canonical: bool) -> None:
    assert is_canonical(version) is canonical


# --- properties ----------------------------------------------------------------------------

_LABEL = st.text(
    alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=8
)
_DOMAIN = st.lists(_LABEL, min_size=2, max_size=3).map(".".join)
_ELEM = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~", min_size=1, max_size=10
)


def _valid_path(path: str) -> bool:
    try:
        check_path(path)
    except ProtocolError:
        return False
    return True


def _valid_version(v: str) -> bool:
    try:
        check_version_query(v)
    except ProtocolError:
        return False
    return True


module_paths = st.one_of(
    st.builds(lambda d, es: "/".join([d, *es]), _DOMAIN, st.lists(_ELEM, max_size=4)),
    st.builds(
        lambda d, es, n: "/".join([d, *es, f"v{n}"]),
        _DOMAIN,
        st.lists(_ELEM, max_size=2),
        st.integers(2, 99),
    ),
    st.builds(
        lambda es, n: "gopkg.in/" + "/".join(es) + f".v{n}",
        st.lists(_ELEM, min_size=1, max_size=2),
        st.integers(0, 9),
    ),
).filter(_valid_path)

_PRE_ID = st.one_of(
    st.integers(0, 9999).map(str),
    st.text(
        alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=6
    ).filter(lambda s: not s.isdigit()),
)
canonical_versions = st.one_of(
    st.builds(
        lambda nums, pre, incompatible: (
            "v{}.{}.{}".format(*nums)
            + ("-" + ".".join(pre) if pre else "")
            + ("+incompatible" if incompatible else "")
        ),
        st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)),
        st.lists(_PRE_ID, max_size=3),
        st.booleans(),
    ),
    st.builds(
        lambda major, stamp, rev: f"v{major}.0.0-{stamp}-{rev}",
        st.integers(0, 9),
        st.integers(10**13, 10**14 - 1),
        st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
    ),
)
version_queries = st.one_of(
    canonical_versions,
    st.text(
        alphabet=string.ascii_letters + string.digits + "#$%&()+,-.=@[]^_{}~ ",
        min_size=1,
        max_size=16,
    ),
).filter(_valid_version)

module_requests = st.one_of(
    st.builds(
        ModuleRequest,
        st.sampled_from([Kind.LIST, Kind.LATEST]),
        module_paths,
        st.none(),
    ),
    st.builds(ModuleRequest, st.just(Kind.INFO), module_paths, version_queries),
    st.builds(
        ModuleRequest,
        st.sampled_from([Kind.MOD, Kind.ZIP]),
        module_paths,
        canonical_versions,
    ),
)


@FAST
@given(
    st.one_of(
        module_paths,
        _ELEM,
        st.text(max_size=20),
        st.lists(_ELEM, max_size=4).map("/".join),
    )
)
def test_fast_path_check_agrees_with_full_diagnosis(path: str) -> None:
    assert (protocol._path_problem(path) is None) == (
        protocol._diagnose_path(path) is None
    )


@FAST
@given(module_paths)
def test_escape_path_property(path: str) -> None:
    escaped = escape_path(path)
    assert escaped == escaped.lower()
    assert unescape_path(escaped) == path


@FAST
@given(version_queries)
def test_escape_version_property(version: str) -> None:
    escaped = escape_version(version)
    assert escaped == escaped.lower()
    assert unescape_version(escaped) == version


@FAST
@given(canonical_versions)
def test_generated_canonical_versions_are_canonical(version: str) -> None:
    assert is_canonical(version)


@FAST
@given(module_requests)
def test_upstream_path_round_trip(req: ModuleRequest) -> None:
    assert parse(req.upstream_path()) == req


def _assert_safe_upstream(req: ModuleRequest | SumdbRequest) -> None:
    """The "no invalid path reaches an upstream" property for one parsed request."""
    if isinstance(req, SumdbRequest):
        up = f"/sumdb/{req.name}/{req.tail}"
        if req.module is not None:
            check_path(req.module)
    else:
        check_path(req.module)
        up = req.upstream_path()
    assert up == up.lower()
    for bad in ("..", "//", "\x00", "\\", " ", "\n"):
        assert bad not in up
    assert parse(up) == req


# fmt: off
_FRAGMENTS = st.sampled_from([
    "/", "/", "@v/", "/@v/", "list", "@latest", ".info", ".mod", ".zip", "v1.0.0", "v2", "+incompatible",
    "-pre", "!", "%21", "%2F", "%2B", "%", "%zz", "%ff", "%00", "%20", "\\", " ", ".", "..", "~1", "-",
    "github.com", "example.com", "gopkg.in/", "yaml.v3", "!azure", "Azure", "x", "con", "sumdb/",
    "/sumdb/sum.golang.org/", "lookup/", "tile/8/", "0/", "data/", "x001/", "234", ".p/", "5", "@", "#",
])
# fmt: on
_FUZZ_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=2)), max_size=14).map("".join),
    st.lists(_FRAGMENTS, max_size=14).map(lambda parts: "/" + "".join(parts)),
    module_requests.map(lambda r: r.upstream_path()),
)


@FAST
@given(_FUZZ_TEXT)
def test_parse_arbitrary_text_never_lets_an_invalid_path_through(raw: str) -> None:
    try:
        req = parse(raw)
    except ProtocolError as err:
        assert err.status in (400, 404)
        assert err.reason and "\n" not in err.reason and "\r" not in err.reason
        return
    _assert_safe_upstream(req)
