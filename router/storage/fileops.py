"""The file-system primitives behind the cache's crash safety (blocking; I/O threads).

Writes go to a fresh ``.tmp-<random>-<name>.part`` that its writer holds an
exclusive ``flock`` on for its whole life (``create_locked_temp``); the
startup sweep removes only temp files whose lock it can take
(``remove_unlocked``), so it never deletes a live download of another
process, and the kernel drops a killed process's lock. An evicted file is
unlinked only if its name still holds the same inode (``unlink_same``), so a
re-commit since the eviction survives. Failures of the removals are logged
on ``router.cache``, never raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from goproxy_router.storage.layout import TEMP_PREFIX, TEMP_SUFFIX

__all__ = ["create_locked_temp", "fsync_dir", "makedirs", "remove_unlocked", "unlink_same",
           "write_all"]

log = logging.getLogger("router.cache")

_IOV_MAX = 1024


def unlink_same(path: Path, ino: int) -> None:
    """Unlink path if it is still the same file (a re-commit since the eviction survives)."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cache: could not evict %s: %s", path, e)


def remove_unlocked(path: str) -> bool:
    """Delete a temp file unless a live writer holds its lock; True if gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError as e:  # a symlink, FIFO or unreadable file: not ours, leave it
        log.warning("cache sweep: leaving %s: %s", path, e)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    """Write the chunks in order with writev: no joined copy of a batch is made."""
    views = [memoryview(c) for c in chunks if len(c)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n:
            size = views[i].nbytes
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def create_locked_temp(directory: Path, name: str) -> tuple[int, Path]:
    """Create and flock a fresh ``.tmp-<random>-<name>.part`` in ``directory``.

    The lock tells ``sweep()`` (of any process) that the file is live; a sweep
    may have removed the name between our create and our lock, so retry then.
    """
    while True:
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{name}{TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename or create in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> list[Path]:
    """mkdir -p, returning the directories this call created (outermost first)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
    return created
