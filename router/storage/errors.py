"""Why a cache write did not publish anything.

``CacheError`` and its family: a caller that gets one knows nothing was
published under the artifact's name. ``CacheIntegrityError`` blames the
body (the upstream); ``CacheUnavailable`` and ``CacheWriteError`` blame the
cache itself (full or failing disk, a body that can never fit), so the
caller serves the body uncached.
"""

from __future__ import annotations

__all__ = ["CacheError", "CacheIntegrityError", "CacheUnavailable", "CacheWriteError"]


class CacheError(Exception):
    """A cache write failed (I/O error, misuse); nothing was published."""


class CacheIntegrityError(CacheError):
    """A body failed a check (size, .info version, zip structure); nothing was published."""


class CacheUnavailable(CacheError):
    """The cache cannot keep this body now (its disk is full or failing, or the body
    can never fit in ``max_size``): the cache's problem, not the body's, so the
    caller serves it uncached. Nothing was published."""


class CacheWriteError(CacheUnavailable):
    """Writing the cache file failed (ENOSPC, EDQUOT, EIO, EROFS...); ``errno`` names it."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno = errno_name
