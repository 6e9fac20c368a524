"""Background tasks the storage starts and shields: their callers may leave.

A commit and a coalesced fetch run as their own task, shielded from any
one caller's cancellation; ``retrieve`` is their done-callback, so an
exception nobody awaited anymore is logged (debug, ``router.cache``)
instead of warned about by asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["retrieve"]

log = logging.getLogger("router.cache")


def retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's exception as retrieved (its callers may have left)."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.debug("cache background task failed: %r", e)
