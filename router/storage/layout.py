"""Where an artifact lives on disk: the layout of Go's own module download cache.

``.info``/``.mod``/``.zip`` of canonical versions, which never change, are
kept as ``$GOMODCACHE/cache/download`` keeps them:
``<root>/<case-escaped module>/@v/<case-escaped version>.<ext>``. An
operator can therefore point a client straight at the directory with
``GOPROXY=file:///<root>`` when every upstream is gone. In-progress files
are named ``.tmp-<random>-<name>.part`` beside their final name: a version
never starts with a dot, so the go command can never request one.

Checksum-database answers that never change (full tiles, lookups) live
under the path the go command asks a proxy for: ``<root>/sumdb/<name>/<tail>``
(``sumdb_relpath``; the go command's own cache keeps tiles alike). A module
path's first element has a dot, so no module's directory is ever ``sumdb``.
"""

from __future__ import annotations

import functools

from goproxy_router.protocol.paths import escape_path, escape_version, is_canonical

__all__ = ["ARTIFACT_EXTS", "SUMDB_DIR", "TEMP_PREFIX", "TEMP_SUFFIX", "artifact_relpath",
           "is_sumdb_relpath", "sumdb_relpath"]

ARTIFACT_EXTS = frozenset({"info", "mod", "zip"})
"""The immutable artifacts a DiskCache stores (for canonical versions only)."""

TEMP_PREFIX = ".tmp-"
"""Prefix of in-progress files; ``sweep()`` removes unlocked ones."""

TEMP_SUFFIX = ".part"

SUMDB_DIR = "sumdb"
"""The directory of checksum-database answers under the cache root."""
"""Suffix of in-progress files (``.tmp-<random>-<name>.part``)."""


@functools.lru_cache(maxsize=65536)
def artifact_relpath(module: str, version: str, ext: str) -> str:
    """``<escaped module>/@v/<escaped version>.<ext>``, Go's download-cache path.

    Raises ProtocolError for an invalid module path or version and ValueError
    for a non-canonical version or an extension other than info/mod/zip
    (those answers change over time and belong in MetadataCache). Memoised:
    escaping validates the path, which costs ~7 us, on every cache hit.
    """
    ext = str(ext)
    if ext not in ARTIFACT_EXTS:
        raise ValueError(f"not a cacheable artifact extension: {ext!r} (want info, mod or zip)")
    if not is_canonical(version):
        raise ValueError(f"{module}@{version}: only canonical versions name immutable artifacts")
    return f"{escape_path(module)}/@v/{escape_version(version)}.{ext}"


def sumdb_relpath(name: str, tail: str) -> str:
    """``sumdb/<name>/<tail>`` for a validated lookup or full-tile tail (SumdbRequest).

    Raises ValueError for anything else: a path that could leave its directory,
    or an answer that changes (``latest``, a partial tile ``.p/W``).
    """
    rel = f"{SUMDB_DIR}/{name}/{tail}"
    if not is_sumdb_relpath(rel):
        raise ValueError(f"not a cacheable checksum database path: {rel!r}")
    return rel


def is_sumdb_relpath(rel: str) -> bool:
    """Whether ``rel`` names a kept checksum-database answer (also for sweep's scan).

    A database name has no endpoint element (``sumdb_name_problem``), so the
    first ``lookup`` or ``tile`` element starts the tail.
    """
    elems = rel.split("/")
    if elems[0] != SUMDB_DIR or any(not e or e.startswith(".") for e in elems):
        return False
    for i in range(2, len(elems) - 1):
        if elems[i] == "lookup":
            return True
        if elems[i] == "tile":
            return not elems[-2].endswith(".p")       # a partial tile is not kept
    return False
