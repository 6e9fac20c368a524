"""``<module>/@v/list`` in the cache directory: the versions the cache can resolve.

Those whose ``.info`` and ``.mod`` are both on disk, one per line in semver
order (pseudo-versions included), as Go's own download cache writes it; so
``go get m@latest`` works against ``GOPROXY=file://<root>``, not only pinned
downloads. It describes the cache, not an upstream: an upstream's list names
versions the cache may lack, and once every upstream is gone the go command
would pick one of those and fail on its missing ``.info``. DiskCache rewrites
it (``rewrite_list``: temp file, rename) after every commit of a
``.info``/``.mod``, after evictions, and in ``sweep()``; each rewrite
rebuilds it from a directory listing while holding an exclusive ``flock`` on
the ``@v`` directory, so the last rewrite always saw every rename and unlink
that preceded it, in any process. It is not an artifact (not indexed, not
counted against ``max_size``) and no ``@latest`` file is written: the go
command falls back to the list's pseudo-versions itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from goproxy_router.protocol.paths import ProtocolError, is_canonical, unescape_version
from goproxy_router.storage import fileops

__all__ = ["LISTED_EXTS", "LIST_NAME", "list_body", "read_list", "rewrite_list"]

log = logging.getLogger("router.cache")

LIST_NAME = "list"
"""``<module>/@v/list``: the versions whose ``.info`` and ``.mod`` are both cached."""

LISTED_EXTS = frozenset({"info", "mod"})
"""The artifacts a version needs to be listed: ``.info`` to resolve it, ``.mod`` to build with it."""


def list_body(names: Iterable[str]) -> bytes:
    """The ``@v/list`` for an ``@v`` directory holding ``names``: every canonical
    version with both a ``.info`` (to resolve it) and a ``.mod`` (to build with
    it), one per line in semver order, as Go's download cache lists them."""
    found: dict[str, set[str]] = {}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if dot and ext in LISTED_EXTS and not name.startswith("."):
            found.setdefault(stem, set()).add(ext)
    versions = []
    for stem, exts in found.items():
        if exts != LISTED_EXTS:
            continue
        try:
            version = unescape_version(stem)
        except ProtocolError:
            continue
        if is_canonical(version):
            versions.append(version)
    versions.sort(key=_semver_key)
    return "".join(f"{v}\n" for v in versions).encode()


def _semver_key(version: str) -> tuple[Any, ...]:
    """Sort key for a canonical version: semver precedence (a release after its
    pre-releases, numeric identifiers before alphanumeric ones)."""
    core, _, pre = version[1:].partition("+")[0].partition("-")
    major, minor, patch = (int(n) for n in core.split("."))
    if not pre:
        return (major, minor, patch, 1, ())
    ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split("."))
    return (major, minor, patch, 0, ids)


def rewrite_list(version_dir: Path) -> bool:
    """Make ``<version_dir>/list`` match the directory (``list_body``); True if
    it was rewritten or removed. Blocking (the cache's namespace thread, or its sweep).

    Under an exclusive flock on the directory itself, so rewrites by every
    process sharing the cache are serialised and the last one listed the
    directory after every change that preceded it. The new list is a
    locked temp file renamed into place: a reader sees the old list or the
    new one, never a part. An empty list is removed. Not fsynced: a list is
    derived data, and the next start's ``sweep()`` rewrites any list (one a
    power loss left empty, say) that does not match its directory. A
    failure is logged, never raised: the artifact is committed all the same.
    """
    try:
        dir_fd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        log.warning("cache: could not update %s/%s: %s", version_dir, LIST_NAME, e)
        return False
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        body = list_body(os.listdir(dir_fd))
        path = version_dir / LIST_NAME
        try:
            current: bytes | None = path.read_bytes()
        except FileNotFoundError:
            current = None
        if current == body or (current is None and not body):
            return False
        if not body:
            os.unlink(path)
        else:
            fd, tmp = fileops.create_locked_temp(version_dir, LIST_NAME)
            try:
                fileops.write_all(fd, [body])
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            finally:
                os.close(fd)
        return True
    except OSError as e:
        log.warning("cache: could not update %s/%s: %s", version_dir, LIST_NAME, e)
        return False
    finally:
        os.close(dir_fd)   # drops the lock


def read_list(path: Path) -> tuple[bytes, float] | None:
    """(body, mtime) of a non-empty list file, or None (thread)."""
    try:
        with open(path, "rb") as f:
            body = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return None
    return (body, mtime) if body else None
