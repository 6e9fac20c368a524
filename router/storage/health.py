"""The disk cache's watch over its own disk: free space and failed writes.

``DiskHealth`` is the part of DiskCache (which inherits it) that decides
whether a new fill may be cached: not while the filesystem has less than
``min_free`` free (``admits()``, one statvfs at most every
``free_check_interval`` seconds), and it counts failed writes by errno
(``write_errors``). Either makes the cache ``degraded`` (a reason, for
/readyz and metrics) until free space is back, respectively until a commit
succeeds. ``warn_about_size`` is the startup warning about a bound the disk
cannot hold. Logs on ``router.cache``; event-loop thread only.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from goproxy_router.base.logs import log_event
from goproxy_router.storage.errors import CacheWriteError

if TYPE_CHECKING:
    from goproxy_router.storage.disk import DiskCache

__all__ = ["DiskHealth", "warn_about_size"]

log = logging.getLogger("router.cache")


class DiskHealth:
    """Free space and write errors of a cache directory (DiskCache's base class).

    Counters for metrics: ``write_errors`` (a Counter by errno name).
    """

    root: Path

    def __init__(self, min_free: int, free_check_interval: float) -> None:
        if min_free < 0:
            raise ValueError("min_free must be >= 0")
        self.min_free = min_free
        self.free_check_interval = free_check_interval
        self._free_checked = -math.inf     # monotonic time of the last statvfs
        self._low_space: str | None = None       # why free space is too low, if it is
        self._write_failure: str | None = None   # the last write error, until a commit works
        self.write_errors: Counter[str] = Counter()   # failed cache writes, by errno name

    def admits(self) -> bool:
        """Whether a new fill may be cached: not while the filesystem's free space is
        below ``min_free`` (one statvfs at most every ``free_check_interval`` s)."""
        if time.monotonic() - self._free_checked >= self.free_check_interval:
            self.check_free()
        return self._low_space is None

    def check_free(self) -> None:
        """Look at the filesystem's free space now (one statvfs, cheap); log changes."""
        self._free_checked = time.monotonic()
        low = None
        if self.min_free:
            try:
                st = os.statvfs(self.root)
            except OSError:
                return      # a missing or unreadable directory is /readyz's to report
            free = st.f_bavail * st.f_frsize
            if free < self.min_free:
                low = (f"{free} bytes free on the cache's filesystem, "
                       f"below cache.min_free ({self.min_free})")
        if low is not None and self._low_space is None:
            log_event(log, logging.WARNING, "cache degraded: low disk space, new fills are "
                      "served uncached", dir=str(self.root), reason=low)
        elif low is None and self._low_space is not None:
            log_event(log, logging.INFO, "cache free space is back above cache.min_free",
                      dir=str(self.root))
        self._low_space = low

    @property
    def degraded(self) -> str | None:
        """Why the cache is degraded (low free space, a failed write), or None."""
        reasons = [r for r in (self._low_space, self._write_failure) if r is not None]
        return "; ".join(reasons) or None

    def _write_failed(self, key: str, exc: OSError) -> CacheWriteError:
        """Count and log a failed write (loop thread); the caller serves the body uncached."""
        name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        self.write_errors[name] += 1
        self._write_failure = f"the last cache write failed: {name} ({exc.strerror or exc})"
        self._free_checked = -math.inf          # look at the free space before the next fill
        log_event(log, logging.ERROR, "cache write failed; the body is served uncached",
                  key=key, errno=name, error=str(exc))
        return CacheWriteError(f"{key}: writing the cache file failed: {exc}", name)


def warn_about_size(disk: DiskCache) -> None:
    """At startup: say loudly when the cache may fill its disk (unbounded, or bound > free)."""
    if disk.max_size is None:
        log_event(log, logging.WARNING,
                  "cache.max_size is unlimited: the disk cache grows until its disk is full",
                  dir=str(disk.root), advice="set cache.max_size, e.g. 10GB")
        return
    try:
        free = shutil.disk_usage(disk.root).free
    except OSError:
        return
    if free < disk.max_size - disk.size:
        log_event(log, logging.WARNING,
                  "cache.max_size is more than the cache's disk has free",
                  dir=str(disk.root), max_size=disk.max_size, size=disk.size, free=free)
