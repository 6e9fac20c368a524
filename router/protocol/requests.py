"""What a Go module proxy request is: a raw URL path parsed into a validated request.

`parse` turns a path as the go command sends it, percent-encoded (``!`` may
come as ``%21``; ``+`` is raw and never means space) and case-encoded
(``github.com/Azure/x`` travels as ``github.com/!azure/x``), into a
ModuleRequest (list, info, mod, zip, latest) or a SumdbRequest, or raises
ProtocolError: 404 off the protocol, 400 for an invalid module, version or
checksum-database object. Constructing a request validates it, so an invalid
one never exists and never reaches an upstream. Pure, like protocol/paths.py.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from goproxy_router.protocol.paths import (
    SUMDB_ENDPOINTS,
    ProtocolError,
    case_decode,
    case_encode,
    check_path,
    check_version_query,
    go_quote,
    is_canonical,
    semver_canonical,
    sumdb_name_problem,
)

__all__ = ["Kind", "ModuleRequest", "SumdbRequest", "parse"]


class Kind(enum.StrEnum):
    """What a module proxy request asks for."""

    LIST = "list"
    INFO = "info"
    MOD = "mod"
    ZIP = "zip"
    LATEST = "latest"


# --- requests ---------------------------------------------------------------------

# Raw in an upstream path: RFC 3986 unreserved, "/" and the sub-delims the go
# command leaves raw, plus "!" (case-encoding). Upper case never survives
# escaping, so the whole upstream path is lower case: one spelling per file.
_URL_UNSAFE_RE = re.compile(r"[^a-z0-9\-._~!$&+=@/]")


def _url_quote(s: str) -> str:
    """Percent-encode (lower-case hex) what may not appear raw in a URL path."""
    return _URL_UNSAFE_RE.sub(lambda m: f"%{ord(m.group()):02x}", s)


@dataclass(frozen=True, slots=True)
class ModuleRequest:
    """A validated GOPROXY request; constructing one validates it."""

    kind: Kind
    module: str
    version: str | None

    def __post_init__(self) -> None:
        check_path(self.module)
        if self.kind in (Kind.LIST, Kind.LATEST):
            if self.version is not None:
                raise ProtocolError(400, f"a {self.kind} request takes no version")
            return
        if self.version is None:
            raise ProtocolError(400, f"a .{self.kind} request needs a version")
        check_version_query(self.version)
        if self.kind != Kind.INFO and not is_canonical(self.version):
            raise ProtocolError(400, _not_canonical_reason(self.version, self.kind))

    @property
    def immutable(self) -> bool:
        """True when the answer never changes, so it may be cached forever."""
        return self.kind in (Kind.INFO, Kind.MOD, Kind.ZIP) and is_canonical(
            self.version or ""
        )

    def upstream_path(self) -> str:
        """The canonical escaped path to request from an upstream proxy."""
        base = "/" + case_encode(self.module)
        if self.kind == Kind.LIST:
            return base + "/@v/list"
        if self.kind == Kind.LATEST:
            return base + "/@latest"
        return f"{base}/@v/{_url_quote(case_encode(self.version or ''))}.{self.kind}"


def _not_canonical_reason(v: str, kind: Kind) -> str:
    """Explain why .mod/.zip refuse v, suggesting the canonical form if there is one."""
    head = f"invalid version {go_quote(v)} for .{kind}: .mod and .zip need a canonical semantic version"
    if (canonical := semver_canonical(v)) is not None:
        return f"{head} ({canonical})"
    return f"{head} like v1.2.3; resolve {go_quote(v)} with .info first"


@dataclass(frozen=True, slots=True)
class SumdbRequest:
    """A validated checksum-database request proxied under ``/sumdb/<name>/``.

    ``tail`` is the escaped path after ``/sumdb/<name>/``, in its one
    canonical spelling (raw "!"), ready to append to the database's URL.
    """

    name: str
    endpoint: str
    tail: str
    module: str | None
    version: str | None

    def __post_init__(self) -> None:
        if (problem := sumdb_name_problem(self.name)) is not None:
            raise ProtocolError(
                400, f"invalid checksum database name {go_quote(self.name)}: {problem}"
            )
        if self.endpoint == "lookup":
            _check_lookup(self)
        elif self.endpoint == "tile":
            if self.module is not None or self.version is not None:
                raise ProtocolError(400, "a tile request takes no module or version")
            _check_tile(self.tail)
        elif self.endpoint in ("supported", "latest"):
            if (
                self.tail != self.endpoint
                or self.module is not None
                or self.version is not None
            ):
                raise ProtocolError(
                    400, f"a {self.endpoint} request takes no arguments"
                )
        else:
            raise _not_found()


def _check_lookup(req: SumdbRequest) -> None:
    """A lookup names one canonical module version, spelled in tail."""
    if req.module is None or req.version is None:
        raise ProtocolError(400, "a lookup needs a module and a version")
    check_path(req.module)
    check_version_query(req.version)
    if not is_canonical(req.version):
        raise ProtocolError(
            400,
            f"invalid version {go_quote(req.version)} for a checksum database lookup: "
            "need a canonical semantic version like v1.2.3",
        )
    if req.tail != f"lookup/{case_encode(req.module)}@{case_encode(req.version)}":
        raise ProtocolError(
            400, f"lookup path {go_quote(req.tail)} does not match its module and version"
        )


_DEC = r"(?:0|[1-9][0-9]*)"
_TILE_RE = re.compile(
    rf"tile/(?P<h>{_DEC})/(?P<l>{_DEC}|data)/(?P<n>(?:x[0-9]{{3}}/)*[0-9]{{3}})(?:\.p/(?P<w>{_DEC}))?"
)
_TILE_SHAPE = "tile/<H>/<L>|data/<NNN>[.p/<W>], NNN as 3-digit elements, all but the last x-prefixed"


def _check_tile(tail: str) -> None:
    """Validate a transparency-log tile path strictly (tlog.ParseTilePath).

    Only the one spelling tlog.Tile.Path produces is accepted, so a cached
    tile has exactly one name. Lengths are checked before int() so a
    hostile path cannot make the conversion expensive.
    """
    m = _TILE_RE.fullmatch(tail)
    if m is None:
        raise ProtocolError(400, f"invalid tile path {go_quote(tail)}: want {_TILE_SHAPE}")
    if len(m["h"]) > 2 or not 1 <= int(m["h"]) <= 30:
        raise ProtocolError(
            400, f"invalid tile path {go_quote(tail)}: height must be 1 to 30"
        )
    if m["l"] != "data" and (len(m["l"]) > 2 or int(m["l"]) > 63):
        raise ProtocolError(
            400, f"invalid tile path {go_quote(tail)}: level must be 0 to 63 or data"
        )
    if m["n"].startswith("x000/"):
        raise ProtocolError(400, f"invalid tile path {go_quote(tail)}: leading x000 element")
    digits = m["n"].replace("x", "").replace("/", "")
    if len(digits) > 21 or int(digits) >= 2**63:
        raise ProtocolError(400, f"invalid tile path {go_quote(tail)}: tile number too large")
    width = 1 << int(m["h"])
    if m["w"] is not None and (len(m["w"]) > 10 or not 1 <= int(m["w"]) < width):
        raise ProtocolError(
            400, f"invalid tile path {go_quote(tail)}: partial width must be 1 to {width - 1}"
        )


# --- parsing ----------------------------------------------------------------------

_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VERSION_FILE_RE = re.compile(r"v/([^/]*)\.(info|mod|zip)")


def _not_found() -> ProtocolError:
    return ProtocolError(
        404,
        "not a Go module proxy path: want /<module>/@v/list, "
        "/<module>/@v/<version>.info|.mod|.zip, /<module>/@latest or /sumdb/<name>/...",
    )


def _percent_decode(raw_path: str) -> str:
    """Decode %XX escapes exactly once; "+" stays "+" (this is a path, not a form)."""
    if bad := _BAD_PERCENT_RE.search(raw_path):
        raise ProtocolError(
            400,
            f"invalid percent-encoding {go_quote(raw_path[bad.start() : bad.start() + 3])} in request path",
        )
    path = raw_path
    if "%" in raw_path or not raw_path.isascii():
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeError:
            raise ProtocolError(400, "request path is not valid UTF-8") from None
    if "\x00" in path:
        raise ProtocolError(400, "NUL byte in request path")
    if "\\" in path:
        raise ProtocolError(400, "backslash in request path")
    return path


def _parse(raw_path: str) -> ModuleRequest | SumdbRequest:
    """The uncached parser behind parse()."""
    path = _percent_decode(raw_path)
    if path.startswith("/sumdb/"):
        return _parse_sumdb(path[len("/sumdb/") :])
    if not path.startswith("/"):
        raise _not_found()
    # Module paths never contain "@", so the first "/@" ends the module.
    escaped_module, sep, rest = path[1:].partition("/@")
    if not sep:
        raise _not_found()
    if rest == "v/list":
        kind, escaped_version = Kind.LIST, None
    elif rest == "latest":
        kind, escaped_version = Kind.LATEST, None
    elif m := _VERSION_FILE_RE.fullmatch(rest):
        kind, escaped_version = Kind(m[2]), m[1]
    else:
        raise _not_found()
    module = case_decode(escaped_module, "module path")
    version = (
        None if escaped_version is None else case_decode(escaped_version, "version")
    )
    return ModuleRequest(kind, module, version)  # validates


def _split_sumdb(rest: str) -> tuple[str, str]:
    """``<name>/<tail>``: the name ends before its first endpoint element.

    A name may have path elements (``sum.corp.example/go``) but none is an
    endpoint (sumdb_name_problem), so the first endpoint element after the
    host starts the tail, and a configured name and a longer one it prefixes
    (``sum.example`` and ``sum.example/go``) are each found exactly.
    """
    elems = rest.split("/")
    for i in range(1, len(elems)):
        if elems[i] in SUMDB_ENDPOINTS:
            return "/".join(elems[:i]), "/".join(elems[i:])
    name, _, tail = rest.partition("/")
    return name, tail


def _parse_sumdb(rest: str) -> SumdbRequest:
    """Parse what follows ``/sumdb/``: ``<name>/<endpoint>[/<args>]``."""
    name, tail = _split_sumdb(rest)
    endpoint, _, args = tail.partition("/")
    if tail in ("supported", "latest") or endpoint == "tile":
        return SumdbRequest(name, endpoint, tail, None, None)
    if endpoint != "lookup":
        raise _not_found()
    # Module paths never contain "@", so the first "@" ends the module.
    escaped_module, sep, escaped_version = args.partition("@")
    if not sep:
        raise ProtocolError(
            400,
            f"invalid checksum database lookup {go_quote(tail)}: want lookup/<module>@<version>",
        )
    module = case_decode(escaped_module, "module path")
    version = case_decode(escaped_version, "version")
    return SumdbRequest(name, endpoint, tail, module, version)  # validates


# A proxy sees the same paths over and over and results are immutable, so
# successful parses are memoized; the length bound caps the memo's memory.
_MEMO_MAX_PATH = 256
_parse_memo = functools.lru_cache(maxsize=4096)(_parse)


def parse(raw_path: str) -> ModuleRequest | SumdbRequest:
    """Parse a raw URL path (no query string) into a validated request.

    Raises ProtocolError: 404 if the path is not part of the protocol, 400 if
    it is but names an invalid module, version or checksum-database object.
    """
    if len(raw_path) <= _MEMO_MAX_PATH:
        return _parse_memo(raw_path)
    return _parse(raw_path)
