"""Is this upstream answer a real one, for what was asked? Checks before a client or the cache.

An upstream that answers 200 with garbage is worse than one that fails: the
go command would trust it, and the cache would keep it for good. A captive
portal answers every URL with its login page; a compromised or confused
upstream answers another module's go.mod, or a zip built to escape the
directory it is unpacked in. Small answers are checked whole before a byte is
sent: a ``list`` is version lines, an ``.info`` names the version asked for,
a ``.mod`` is a go.mod for the module asked for (`goproxy_router.protocol.gomod`). A zip
streams: its end-of-central-directory record is looked for while its last
byte is held back, and before the cache commits it (and that last byte goes
out) its central directory must follow ``golang.org/x/mod/zip``'s rules
(`zip_problem`): every entry under ``<module>@<version>/``, clean file paths
(``module.CheckFilePath``), no case-folding collisions, go.mod only at the
root, the go command's size limits. One rule is the edge's own: at most
`MAX_ZIP_ENTRIES` entries (x/mod/zip sets no count, but a source tree of more
files than a zip holds without zip64 records is a bomb, not a module).
"""

from __future__ import annotations

import json
import posixpath
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from goproxy_router.protocol.gomod import MAX_GO_MOD, check_mod
from goproxy_router.protocol.paths import is_semver

# Small kinds are read whole (bounded) and validated before anything is sent.
SMALL_KINDS = frozenset({"list", "info", "mod", "latest"})
SMALL_BODY_LIMIT = 16 << 20            # the go command's own limit for go.mod and friends

_EOCD = b"PK\x05\x06"
ZIP_TAIL = 22 + 0xFFFF                 # EOCD record plus the longest comment

# golang.org/x/mod/zip's limits, which the go command applies to every download.
MAX_ZIP_FILE = 500 << 20               # the zip itself, and its declared uncompressed total
MAX_LICENSE = 16 << 20
# The edge's own: more files than a zip holds without zip64 records.
MAX_ZIP_ENTRIES = 0xFFFF
MAX_CENTRAL_DIRECTORY = 64 << 20       # read whole to check the entries: bounded


@dataclass(frozen=True, slots=True)
class BodyVerdict:
    """What the checks made of a small answer."""

    problem: str | None = None      # not a valid answer: a failed attempt
    doubt: str | None = None        # valid, but another upstream may have the better one


def judge_small_body(kind: str, data: bytes, expected_version: str | None,
                     module: str | None = None, version: str | None = None) -> BodyVerdict:
    """Check a list/.info/.mod/@latest body for `module` (and, for .mod, `version`).

    The body is as the upstream meant it: one it compressed anyway was decoded
    as it arrived (router/upstream/decoding.py).

    A .mod declaring another module path with a fitting major version is
    valid (a fork's go.mod, taken through ``replace``) but doubtful: it may
    also be an upstream answering for the wrong module, so the forwarder
    prefers an upstream whose go.mod declares the path asked for.
    """
    if kind in ("info", "latest"):
        return BodyVerdict(info_problem(data, expected_version))
    elif kind == "mod":
        if module is None:
            return BodyVerdict(None if data.strip() else "empty go.mod")
        checked = check_mod(data, module, version)
        if checked.problem is not None:
            return BodyVerdict(checked.problem)
        if checked.fork:
            return BodyVerdict(doubt=f"go.mod declares module path {checked.declared!r}, "
                                     f"not {module!r} (a fork's go.mod?)")
    elif kind == "list":
        return BodyVerdict(list_problem(data))
    return BodyVerdict()


def small_body_problem(kind: str, body: bytes, expected_version: str | None,
                       module: str | None = None, version: str | None = None) -> str | None:
    """Why a list/.info/.mod/@latest body is not a valid answer, or None if it is."""
    return judge_small_body(kind, body, expected_version, module, version).problem


def info_problem(data: bytes, expected_version: str | None) -> str | None:
    """Why a ``.info``/``@latest`` body is not JSON naming a version (`expected_version`
    when given), or None. The one check of an .info: the forwarder's and the cache's."""
    try:
        info = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    version_field = info.get("Version") if isinstance(info, dict) else None
    if not isinstance(version_field, str) or not version_field:
        return "no Version in the JSON"
    if expected_version is not None and version_field != expected_version:
        return f"Version {version_field!r} is not the requested {expected_version!r}"
    return None


def list_problem(data: bytes) -> str | None:
    """Why a ``@v/list`` body is not version lines, or None.

    The go command keeps the first field of each line when it is a valid
    semantic version and skips other lines; an upstream whose lines are not
    versions (an HTML page, an error text) is not answering the protocol, so
    every non-empty line's first field must be one.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "version list is not UTF-8 text"
    for number, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if fields and not is_semver(fields[0]):
            return f"line {number} of the version list is not a version: {line.strip()[:80]!r}"
    return None


def zip_tail_problem(tail: bytes, total: int) -> str | None:
    """Why the last bytes of a zip do not end a zip archive, or None if they do."""
    if total < 22:
        return f"zip of {total} bytes is too short to be a zip"
    position = tail.rfind(_EOCD)
    if position < 0:
        return "zip has no end-of-central-directory record (cut short?)"
    comment_length = int.from_bytes(tail[position + 20:position + 22], "little")
    if position + 22 + comment_length != len(tail):
        return "zip end-of-central-directory record does not end the body (cut short?)"
    return None


class ZipTail:
    """Keeps the last bytes of a streamed zip for `zip_tail_problem`."""

    __slots__ = ("_tail", "total")

    def __init__(self) -> None:
        self._tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._tail += chunk
        if len(self._tail) > 2 * ZIP_TAIL:
            del self._tail[:-ZIP_TAIL]

    def problem(self) -> str | None:
        return zip_tail_problem(bytes(self._tail[-ZIP_TAIL:]), self.total)


# --- the whole zip (golang.org/x/mod/zip checkZip) ---------------------------------

_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_WINDOWS_RESERVED = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                               *(f"lpt{i}" for i in range(1, 10))])
_FILE_NAME_ASCII = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                             "!#$%&()+,-.=@[]^_{}~ ")


def _directory_extent(f: BinaryIO, size: int) -> tuple[int, int] | str:
    """(entries, central directory bytes) from the end records, zip64 included; or a problem."""
    tail_len = min(size, ZIP_TAIL)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return "no end-of-central-directory record"
    entries, cd_size, cd_offset = struct.unpack("<HII", tail[at + 10:at + 20])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        locator = size - tail_len + at - 20
        if locator < 0:
            return "zip64 end records are missing"
        f.seek(locator)
        record = f.read(20)
        if record[:4] != _ZIP64_LOCATOR:
            return "zip64 end records are missing"
        (offset,) = struct.unpack("<Q", record[8:16])
        if offset > size - 56:
            return "zip64 end record is out of the file"
        f.seek(offset)
        record = f.read(56)
        if record[:4] != _ZIP64_EOCD:
            return "zip64 end record is missing"
        entries, cd_size = struct.unpack("<QQ", record[32:48])
    return entries, cd_size


def _entry_name(info: zipfile.ZipInfo) -> str | None:
    """The entry's name as the go command reads it (raw bytes as UTF-8), or None."""
    name = info.orig_filename
    if info.flag_bits & 0x800:
        return name
    try:
        return name.encode("cp437").decode("utf-8")   # zipfile read it as cp437
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None


def _file_path_problem(path: str) -> str | None:
    """module.CheckFilePath: why `path` cannot be a file in a module, or None."""
    if not path:
        return "empty path"
    if "//" in path:
        return "double slash"
    if path.endswith("/"):
        return "trailing slash"
    for elem in path.split("/"):
        if not elem:
            return "empty path element"
        if elem.strip(".") == "":
            return f"invalid path element {elem!r}"
        if elem.endswith("."):
            return "trailing dot in path element"
        bad = next((c for c in elem if not (c in _FILE_NAME_ASCII
                                            or (not c.isascii() and c.isalpha()))), None)
        if bad is not None:
            return f"invalid char {bad!r}"
        if elem.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
            return f"{elem.split('.', 1)[0]!r} disallowed as path element component on Windows"
    return None


def _fold(path: str) -> str:
    """zip's strToFold: each rune to the least of its simple case-folding orbit, then a-z."""
    if path.isascii():
        return path.lower()
    out = []
    for c in path:
        orbit = {c, c.lower(), c.upper(), c.lower().upper(), c.upper().lower()}
        least = min(o for o in orbit if len(o) == 1)
        out.append(least.lower() if "A" <= least <= "Z" else least)
    return "".join(out)


class _Collisions:
    """zip's collisionChecker: one spelling per case-folded path; a file is never a directory."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool]] = {}

    def check(self, path: str, is_dir: bool) -> str | None:
        while True:
            folded = _fold(path)
            other = self._seen.get(folded)
            if other is None:
                self._seen[folded] = (path, is_dir)
            elif other[0] != path:
                return f"case-insensitive file name collision: {other[0]!r} and {path!r}"
            elif other[1] != is_dir:
                return f"entry {path!r} is both a file and a directory"
            elif not is_dir:
                return f"multiple entries for file {path!r}"
            parent = posixpath.dirname(path)
            if not parent:
                return None
            path, is_dir = parent, True


def zip_problem(f: BinaryIO, size: int, module: str, version: str) -> str | None:
    """Why a whole module zip breaks golang.org/x/mod/zip's rules (or the edge's), or None.

    Reads the end records first, so that an entry count or a central
    directory over the limits is refused before it is parsed; then checks
    each entry as checkZip does, and the go.mod at the root as a .mod
    (`goproxy_router.protocol.gomod.check_mod`; a fork's go.mod is fine). Blocking: run it in
    a thread.
    """
    if size > MAX_ZIP_FILE:
        return f"zip of {size} bytes is over the go command's limit of {MAX_ZIP_FILE}"
    extent = _directory_extent(f, size)
    if isinstance(extent, str):
        return f"not a readable zip: {extent}"
    entries, cd_size = extent
    if entries > MAX_ZIP_ENTRIES:
        return f"zip declares {entries} entries, over the limit of {MAX_ZIP_ENTRIES}"
    if cd_size > MAX_CENTRAL_DIRECTORY:
        return f"zip central directory of {cd_size} bytes is over {MAX_CENTRAL_DIRECTORY}"
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        return f"not a readable zip: {exc}"
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            return f"zip has {len(infos)} entries, over the limit of {MAX_ZIP_ENTRIES}"
        problem, go_mod = _entries_problem(infos, f"{module}@{version}/")
        if problem is not None:
            return problem
        if go_mod is not None:
            try:
                with archive.open(go_mod) as member:
                    data = member.read(MAX_GO_MOD + 1)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                    zlib.error) as exc:
                return f"the zip's go.mod does not read: {exc}"
            checked = check_mod(data, module, version)
            if checked.problem is not None:
                return f"the zip's go.mod: {checked.problem}"
    return None


def _entries_problem(infos: list[zipfile.ZipInfo],
                     prefix: str) -> tuple[str | None, zipfile.ZipInfo | None]:
    """checkZip's walk over the entries: (the first problem, the root go.mod entry)."""
    collisions = _Collisions()
    total = 0
    go_mod = None
    for info in infos:
        name = _entry_name(info)
        if name is None:
            return f"zip entry {info.orig_filename!r} is not UTF-8", None
        shown = name[:200]
        if not name.startswith(prefix):
            return f"zip entry {shown!r} is outside {prefix!r}", None
        rel = name[len(prefix):]
        if rel == "":
            continue
        is_dir = rel.endswith("/")
        if is_dir:
            rel = rel[:-1]
        if posixpath.normpath(rel) != rel or rel.startswith("/"):
            return f"zip entry {shown!r}: file path is not clean", None
        if why := _file_path_problem(rel):
            return f"zip entry {shown!r}: {why}", None
        if why := collisions.check(rel, is_dir):
            return f"zip entry {shown!r}: {why}", None
        if is_dir:
            continue
        base = posixpath.basename(rel)
        if base.lower() == "go.mod":
            if base != rel:
                return f"zip entry {shown!r}: go.mod file not in module root directory", None
            if rel != "go.mod":
                return f"zip entry {shown!r}: go.mod files must have lowercase names", None
        total += info.file_size
        if total > MAX_ZIP_FILE:
            return (f"total uncompressed size of the zip's files is over {MAX_ZIP_FILE} bytes"
                    f" (the go command's limit)"), None
        if rel == "go.mod":
            if info.file_size > MAX_GO_MOD:
                return f"go.mod of {info.file_size} bytes is over {MAX_GO_MOD}", None
            go_mod = info
        if rel == "LICENSE" and info.file_size > MAX_LICENSE:
            return f"LICENSE of {info.file_size} bytes is over {MAX_LICENSE}", None
    return None, go_mod
