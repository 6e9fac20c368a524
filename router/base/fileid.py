"""One version of a file on disk, as ``stat`` tells it.

The routes.yaml watcher (router/runtime/server.py) and the GeoIP reloader
(router/routing/geo.py) compare these to notice a file replaced (another inode or
device) or rewritten in place (another size or mtime).
"""

from __future__ import annotations

import os

FileId = tuple[int, int, int, int]                   # device, inode, size, mtime in ns


def file_id(st: os.stat_result) -> FileId:
    """The identity of the file `st` describes."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stat_id(path: str) -> FileId | None:
    """The identity of the file at `path` now, or None when it cannot be seen."""
    try:
        return file_id(os.stat(path))
    except OSError:
        return None
