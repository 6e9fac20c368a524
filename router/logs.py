"""JSON log lines: one object per event, fields an operator can grep for.

Lines go to stderr through a `LineSink`, which under load gathers the lines
of one event-loop iteration into one write(2): the access log has a line per
request, and a write per line was a large share of a cache hit's cost.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import select
import threading
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line; structured fields come from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class LineSink:
    """Text lines to a file descriptor, written in batches from the event loop.

    On the event loop's thread a line is gathered, and what has gathered goes
    out in one write(2) `FLUSH_DELAY` seconds after the first line of the
    batch, or at once when `FLUSH_BYTES` have gathered. A write per line (or
    per loop iteration, which under load handles only a request or two) was
    the largest single cost of a cache hit: a system call per request. So a
    line may be up to 20 ms late (nginx's `access_log ... buffer= flush=`
    makes the same trade, with seconds). Off the loop (threads, startup,
    shutdown) a line is written at once, after whatever is pending, so the
    order is kept; at exit, and when a worker ends, what is pending is
    written. A process killed with SIGKILL loses at most its last 20 ms.
    """

    FLUSH_DELAY = 0.02
    FLUSH_BYTES = 64 * 1024

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer_loop: asyncio.AbstractEventLoop | None = None   # where a flush is due
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def write(self, line: str) -> None:
        loop = asyncio._get_running_loop()
        with self._lock:
            self._pending.append(line)
            self._pending_bytes += len(line)
            if loop is None or self._pending_bytes >= self.FLUSH_BYTES:
                self._flush_locked()
                return
            if self._timer_loop is loop:
                return
            self._timer_loop = loop        # (a loop that ended with a flush due is replaced)
        loop.call_later(self.FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        with self._lock:
            self._timer_loop = None
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        self._pending.clear()
        self._pending_bytes = 0
        view = memoryview(data)
        waits = 0
        try:
            while view:
                try:
                    view = view[os.write(self._fd, view):]
                except BlockingIOError:       # a non-blocking stderr pipe that is full
                    waits += 1
                    if waits > 5:             # nobody reads it: drop rather than hang
                        return
                    select.select([], [self._fd], [], 1.0)
        except OSError:
            pass                 # stderr gone (closed pipe): logging must not take the server down


class JsonLinesHandler(logging.Handler):
    """A logging handler writing JsonFormatter lines into a LineSink."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.sink.flush()


def setup_logging(level: str = "info") -> None:
    """Send every log record to stderr as JSON."""
    handler = JsonLinesHandler(LineSink(2))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by ours (one line per request, with fields).
    logging.getLogger("aiohttp.access").disabled = True


def direct_sink(logger: logging.Logger, level: int) -> LineSink | None:
    """The sink a record of `logger` at `level` would end up in, when that is all it
    would do (setup_logging's handler alone): then a caller may write a ready-made
    JSON line there itself. None when the level is off or anything else listens
    (another handler, a filter, pytest's log capture)."""
    if not logger.isEnabledFor(level) or logger.filters:
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not logger.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent                  # type: ignore[assignment]
    handlers = logger.root.handlers
    if len(handlers) != 1 or logger.root.filters:
        return None
    handler = handlers[0]
    if type(handler) is not JsonLinesHandler or handler.filters or handler.level > level:
        return None
    return handler.sink


class Clock:
    """Log timestamps as JsonFormatter writes them, the date part formatted once a second."""

    def __init__(self) -> None:
        self._milli = -1
        self._second = -1
        self._date = ""
        self._text = ""

    def now(self) -> str:
        created = time.time()
        milli = int(created * 1000)
        if milli != self._milli:            # many lines share a millisecond under load
            second = milli // 1000
            if second != self._second:
                self._second = second
                self._date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._milli = milli
            self._text = f"{self._date}.{milli % 1000:03d}Z"
        return self._text


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log `event` with structured fields, skipping the work when the level is off."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
