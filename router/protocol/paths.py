"""Module paths, versions and checksum-database names: their checks and case-encoding.

Pure (no I/O, no aiohttp), so every rule is testable alone. The rules follow
``golang.org/x/mod/module`` (CheckPath, EscapePath, EscapeVersion) and
``golang.org/x/mod/semver``, written afresh here. Where this module is
stricter than Go, the docstring of the check says so and why: a name that
fails here is answered 400 at the edge and never reaches an upstream.
What a whole request path means is protocol/requests.py.
"""

from __future__ import annotations

import ipaddress
import json
import re

__all__ = [
    "SUMDB_ENDPOINTS",
    "ProtocolError",
    "case_decode",
    "case_encode",
    "check_path",
    "check_version_query",
    "escape_path",
    "escape_version",
    "go_quote",
    "is_canonical",
    "is_semver",
    "semver_canonical",
    "sumdb_name_problem",
    "unescape_path",
    "unescape_version",
]


class ProtocolError(Exception):
    """A request path the router refuses; ``reason`` is shown to the developer.

    ``status`` is 400 for a malformed module path, version or sumdb request
    and 404 for a path that is not part of the protocol at all.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- semantic versions -------------------------------------------------------

_NUM = r"(?:0|[1-9][0-9]*)"
# A pre-release identifier: alphanumerics and hyphens, no leading zero if numeric.
_PRE_ID = r"(?:[0-9A-Za-z-]*[A-Za-z-][0-9A-Za-z-]*|0|[1-9][0-9]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_PRE = rf"-{_PRE_ID}(?:\.{_PRE_ID})*"
_BUILD = rf"\+{_BUILD_ID}(?:\.{_BUILD_ID})*"
# vMAJOR[.MINOR[.PATCH[-PRE][+BUILD]]]: semver's shorthands are valid, not canonical.
_SEMVER_RE = re.compile(
    rf"v(?P<major>{_NUM})(?:\.(?P<minor>{_NUM})"
    rf"(?:\.(?P<patch>{_NUM})(?P<pre>{_PRE})?(?P<build>{_BUILD})?)?)?"
)
_CANONICAL_RE = re.compile(rf"v{_NUM}\.{_NUM}\.{_NUM}(?:{_PRE})?(?:\+incompatible)?")


def is_canonical(v: str) -> bool:
    """True for a canonical semver version (``+incompatible`` allowed).

    Only these name immutable artifacts: ``.mod``/``.zip`` need one, and their
    ``.info`` can be cached forever.
    """
    return _CANONICAL_RE.fullmatch(v) is not None


def is_semver(v: str) -> bool:
    """semver.IsValid: shorthands (``v1``, ``v1.2``) and build metadata included."""
    return _SEMVER_RE.fullmatch(v) is not None


def semver_canonical(v: str) -> str | None:
    """semver.Canonical plus ``+incompatible``, or None if v is not semver."""
    m = _SEMVER_RE.fullmatch(v)
    if m is None:
        return None
    build = "+incompatible" if m["build"] == "+incompatible" else ""
    return f"v{m['major']}.{m['minor'] or 0}.{m['patch'] or 0}{m['pre'] or ''}{build}"


# --- module paths --------------------------------------------------------------

_FIRST_ELEM_CHAR_RE = re.compile(r"[^a-z0-9.-]")  # an LDH domain name, lower case
_MOD_ELEM_CHAR_RE = re.compile(r"[^A-Za-z0-9._~-]")
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)
_TILDE_DIGITS_RE = re.compile(r"~[0-9]+")


def go_quote(s: str, limit: int = 120) -> str:
    """Quote s like Go's %q, on one line and short enough for go's output."""
    if len(s) > limit:
        s = s[:limit] + "..."
    return json.dumps(s)


def _windows_problem(elem: str) -> str | None:
    """Reserved device names cannot be files on Windows, whatever follows a dot."""
    short = elem.split(".", 1)[0]
    if short.lower() in _WINDOWS_RESERVED:
        return f"{go_quote(short)} disallowed as path element component on Windows"
    return None


def _elem_problem(elem: str) -> str | None:
    """Why one module path element is invalid (module.checkElem), or None."""
    if not elem:
        return "empty path element"
    if elem.strip(".") == "":
        return f"invalid path element {go_quote(elem)}"
    if elem[0] == ".":
        return "leading dot in path element"
    if elem[-1] == ".":
        return "trailing dot in path element"
    if bad := _MOD_ELEM_CHAR_RE.search(elem):
        return f"invalid char {go_quote(bad.group())} (module paths allow ASCII letters, digits and - . _ ~)"
    if why := _windows_problem(elem):
        return why
    short = elem.split(".", 1)[0]
    if (tilde := short.rfind("~")) >= 0 and _TILDE_DIGITS_RE.fullmatch(short[tilde:]):
        return "trailing tilde and digits in path element (looks like a Windows short name)"
    return None


def _major_suffix_problem(path: str) -> str | None:
    """Why the major version suffix is invalid (module.SplitPathVersion), or None.

    "/vN" must be N >= 2 without a leading zero or dots; gopkg.in paths
    instead always end in ".vN" (optionally "-unstable").
    """
    if path.startswith("gopkg.in/"):
        core = path.removesuffix("-unstable")
        stem = core.rstrip("0123456789")
        if not stem.endswith(".v"):
            return 'gopkg.in paths must end in a major version like ".v1"'
        major = path[len(stem) - 2 :]
        if len(major) == 2 or major[2] == "0" and major != ".v0":
            return f"invalid gopkg.in major version {go_quote(major)}"
        return None
    stem = path.rstrip("0123456789.")
    if stem == path or not stem.endswith("/v"):
        return None
    suffix = path[len(stem) - 2 :]
    if "." in suffix:
        return f"invalid major version suffix {go_quote(suffix)}: no dots allowed"
    if suffix in ("/v0", "/v1"):
        return f"invalid major version suffix {go_quote(suffix)}: v0 and v1 take no suffix"
    if suffix[2] == "0":
        return f"invalid major version suffix {go_quote(suffix)}: leading zero"
    return None


# The everyday module path, accepted by one regex: a lower-case domain with a
# dot, then elements of letters, digits, "-" and "_" joined by single dots.
# It admits nothing the full rules refuse except Windows device names and bad
# major-version suffixes, which are checked separately.
_COMMON_PATH_RE = re.compile(
    r"[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)+(?:/[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)*"
)
_WINDOWS_ELEM_RE = re.compile(
    r"(?:^|/)(?:con|prn|aux|nul|com[1-9]|lpt[1-9])(?:[./]|\Z)", re.IGNORECASE
)


def _path_problem(path: str) -> str | None:
    """Why path is not a valid module path (module.CheckPath), or None.

    Runs on every request, so the common case costs one regex match; any
    other path gets the full element-by-element diagnosis.
    """
    if _COMMON_PATH_RE.fullmatch(path) and not _WINDOWS_ELEM_RE.search(path):
        return _major_suffix_problem(path)
    return _diagnose_path(path)


def _diagnose_path(path: str) -> str | None:
    """Walk every CheckPath rule in Go's order and say which one path breaks.

    Stricter than current Go in one way: ``..`` anywhere is refused (older
    CheckPath did so too), as a path-traversal guard for file-backed upstreams.
    """
    if not path:
        return "empty string"
    if path[0] == "-":
        return "leading dash"
    if "//" in path:
        return "double slash"
    if path[-1] == "/":
        return "trailing slash"
    if ".." in path:
        return "double dot"
    for elem in path.split("/"):
        if why := _elem_problem(elem):
            return why
    first = path.split("/", 1)[0]
    if "." not in first:
        return "missing dot in first path element"
    if bad := _FIRST_ELEM_CHAR_RE.search(first):
        return f"invalid char {go_quote(bad.group())} in first path element (a lower-case domain name)"
    return _major_suffix_problem(path)


def check_path(path: str) -> None:
    """Raise ProtocolError(400) unless path is a valid, decoded module path."""
    if why := _path_problem(path):
        raise ProtocolError(400, f"invalid module path {go_quote(path)}: {why}")


# --- versions --------------------------------------------------------------------

# module.fileNameOK's ASCII set, minus "!" (reserved for case-encoding).
_VERSION_CHAR_RE = re.compile(r"[^A-Za-z0-9#$%&()+,\-.=@\[\]^_{}~ ]")


def _version_problem(v: str) -> str | None:
    """Why v is not a version query usable as ``@v/<v>.info``, or None.

    Mirrors module.EscapeVersion (a valid ASCII file-name element without
    "!"), and also refuses a leading dot or dash and ``..``: no real version,
    branch or tag looks like that, and a leading dash is a flag to the VCS
    tools behind some upstreams.
    """
    if not v:
        return "empty version"
    if bad := _VERSION_CHAR_RE.search(v):
        return f"invalid char {go_quote(bad.group())}"
    if v.strip(".") == "":
        return f"invalid path element {go_quote(v)}"
    if v[0] == ".":
        return "leading dot"
    if v[0] == "-":
        return "leading dash (reads as a command-line flag)"
    if v[-1] == ".":
        return "trailing dot"
    if ".." in v:
        return "double dot"
    return _windows_problem(v)


def check_version_query(v: str) -> None:
    """Raise ProtocolError(400) unless v is a valid, decoded version or query."""
    if why := _version_problem(v):
        raise ProtocolError(400, f"invalid version {go_quote(v)}: {why}")


# --- case-encoding ------------------------------------------------------------------

_UPPER_RE = re.compile(r"[A-Z]")
_BANG_RE = re.compile(r"!([a-z])")
_BAD_BANG_RE = re.compile(r"!(?![a-z])")


def case_encode(s: str) -> str:
    """Case-encode s ("A" -> "!a") without validating it: callers already have."""
    return _UPPER_RE.sub(lambda m: "!" + m.group().lower(), s)


def case_decode(escaped: str, noun: str) -> str:
    """Undo case-encoding; refuse anything that would not re-encode identically."""
    if "!" not in escaped and not _UPPER_RE.search(escaped):
        return escaped
    if _UPPER_RE.search(escaped):
        why = 'upper-case letters must be escaped as "!" + lower case'
    elif _BAD_BANG_RE.search(escaped):
        why = '"!" must be followed by a lower-case letter (case-encoding)'
    else:
        return _BANG_RE.sub(lambda m: m[1].upper(), escaped)
    raise ProtocolError(400, f"invalid {noun} {go_quote(escaped)}: {why}")


def escape_path(path: str) -> str:
    """Case-encode a module path (module.EscapePath); it must be valid."""
    check_path(path)
    return case_encode(path)


def unescape_path(escaped: str) -> str:
    """Decode a case-encoded module path (module.UnescapePath) and validate it."""
    path = case_decode(escaped, "module path")
    check_path(path)
    return path


def escape_version(v: str) -> str:
    """Case-encode a version or query (module.EscapeVersion); it must be valid."""
    check_version_query(v)
    return case_encode(v)


def unescape_version(escaped: str) -> str:
    """Decode a case-encoded version (module.UnescapeVersion) and validate it."""
    v = case_decode(escaped, "version")
    check_version_query(v)
    return v


# --- checksum database names ---------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_PORT_RE = re.compile(r"(?P<host>.*?)(?::(?P<port>[0-9]{1,5}))?")
_DB_PATH_ELEM_RE = re.compile(r"[A-Za-z0-9._~-]+")
# The first path element after /sumdb/<name>/ that is one of these ends the name.
SUMDB_ENDPOINTS = frozenset({"supported", "latest", "lookup", "tile"})


def sumdb_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a checksum database name, or None when it can.

    The go command's rule (cmd/go/internal/modfetch/sumdb.go, dbDial): a
    note name (no space, no "+") that parsed as ``https://<name>`` is only a
    host and an optional path, ``host[/path]``: ``sum.golang.org``,
    ``localhost``, ``localhost:8443``, ``sum.corp.example/go``. Stricter than
    Go where a name must also be one unambiguous piece of our URL paths: the
    host is a lower-case DNS name, an IP address or ``[IPv6]`` (Go takes any
    URL host), path elements are plain (letters, digits, ``.``, ``_``, ``~``,
    ``-``; not ``.`` or ``..``), and none is an endpoint (``supported``,
    ``latest``, ``lookup``, ``tile``), which is what lets ``/sumdb/<name>/...``
    be split without knowing the configured names.
    """
    if not name:
        return "empty; want host[/path] such as sum.golang.org"
    if "://" in name:
        return "a name, not a URL: drop the scheme (host[/path] such as sum.golang.org)"
    if any(c.isspace() for c in name) or "+" in name:
        return "must not contain spaces or '+'"
    if "?" in name or "#" in name:
        return "must not have a query or a fragment; want host[/path]"
    host, sep, path = name.partition("/")
    if "@" in host:
        return "must not have user info (user@); want host[/path]"
    if (hostname_problem := _db_host_problem(host)) is not None:
        return hostname_problem
    if not sep:
        return None
    for elem in path.split("/"):
        if not elem:
            return "path must not end in '/' or contain an empty element"
        if elem in (".", "..") or not _DB_PATH_ELEM_RE.fullmatch(elem):
            return f"path element {go_quote(elem)} must be letters, digits, '.', '_', '~' or '-'"
        if elem in SUMDB_ENDPOINTS:
            return (f"path element {go_quote(elem)} is a checksum database endpoint; "
                    f"/sumdb/<name>/{elem} would be ambiguous")
    return None


def _db_host_problem(host: str) -> str | None:
    """A host[:port] as the go command would send it: DNS name, IPv4 or [IPv6]."""
    m = _PORT_RE.fullmatch(host)
    assert m is not None  # the host group matches anything
    hostname, port = m["host"], m["port"]
    if port is not None and int(port) > 65535:
        return f"port {port} is out of range"
    if _HOSTNAME_RE.fullmatch(hostname) or _is_bracketed_ipv6(hostname):
        return None
    return (f"host {go_quote(host)} must be a lower-case host name, an IP address or [IPv6], "
            "with an optional :port")


def _is_bracketed_ipv6(hostname: str) -> bool:
    if not (hostname.startswith("[") and hostname.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(hostname[1:-1])
    except ValueError:
        return False
    return True
