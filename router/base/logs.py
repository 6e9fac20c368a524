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
import weakref
from collections import deque
from typing import Any

from goproxy_router.base.compat import running_loop_or_none


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
    """Text lines to a file descriptor: gathered on the event loop, written by a thread.

    On the event loop's thread a line is gathered, and what has gathered is
    handed to the writer `FLUSH_DELAY` seconds after the first line of the
    batch, or at once when `FLUSH_BYTES` have gathered. A write per line (or
    per loop iteration, which under load handles only a request or two) was
    the largest single cost of a cache hit: a system call per request. So a
    line may be up to 20 ms late (nginx's `access_log ... buffer= flush=`
    makes the same trade, with seconds). Off the loop (threads, startup,
    shutdown) a line is handed over at once, after whatever is pending, so
    the order is kept; at exit, and when a worker ends, what is pending is
    written (waiting at most `EXIT_WAIT`). A process killed with SIGKILL
    loses at most its last 20 ms.

    The write(2) itself happens on a writer thread, never on the caller's:
    stderr is usually a pipe, and when its reader stalls a write blocks until
    it reads again. Making the fd non-blocking would change the open file
    description shared with the parent, sibling workers and the terminal
    (a shell left with a non-blocking tty gets EAGAIN), and a logging
    handler blocked in any thread blocks every other thread's logging too,
    the loop's included, through the handler's lock. So the writer alone
    waits; batches queue behind it up to `MAX_BACKLOG` bytes, and past that
    lines are dropped and counted (`dropped`, and `dropped_lines()` for the
    process, the `goproxy_log_lines_dropped_total` metric). Once the writer
    gets through again, one line says how many were dropped.
    """

    FLUSH_DELAY = 0.02
    FLUSH_BYTES = 64 * 1024
    MAX_BACKLOG = 1024 * 1024
    EXIT_WAIT = 2.0

    def __init__(self, fd: int = 2, *, max_backlog: int | None = None) -> None:
        self._fd = fd
        self._max_backlog = self.MAX_BACKLOG if max_backlog is None else max_backlog
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer_loop: asyncio.AbstractEventLoop | None = None   # where a flush is due
        self._reset()
        self.dropped = 0                    # lines this sink dropped, since it was made
        _SINKS.add(self)
        atexit.register(self.flush)

    def _reset(self) -> None:
        """The writer's state, new (also in a forked child, which has no writer thread)."""
        self._lock = threading.Condition(threading.Lock())
        self._backlog: deque[tuple[bytes, int]] = deque()           # (data, lines) in order
        self._queued = 0                    # bytes handed over and not yet written
        self._unreported = 0                # lines dropped since the last notice
        self._writer: threading.Thread | None = None
        self._closing = False
        self._stuck = False                 # a flush waited in vain: the next ones do not wait

    def write(self, line: str) -> None:
        loop = running_loop_or_none()
        with self._lock:
            self._pending.append(line)
            self._pending_bytes += len(line)
            if loop is None or self._pending_bytes >= self.FLUSH_BYTES:
                self._hand_over_locked()
                return
            if self._timer_loop is loop:
                return
            self._timer_loop = loop        # (a loop that ended with a flush due is replaced)
        loop.call_later(self.FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Hand what is pending to the writer; off the loop, also wait (at most
        EXIT_WAIT) until it is written, as exits need."""
        with self._lock:
            self._timer_loop = None
            self._hand_over_locked()
            if running_loop_or_none() is None and not self._stuck:
                self._stuck = not self._lock.wait_for(
                    lambda: not self._queued or self._writer is None, self.EXIT_WAIT)

    def close(self) -> None:
        """Write what is pending (bounded wait) and end the writer thread; the fd stays open."""
        self.flush()
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(self.EXIT_WAIT)

    def _hand_over_locked(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        lines = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if (self._queued + len(data) > self._max_backlog
                or self._unreported and self._queued > self._max_backlog // 2):
            self._drop_locked(lines)       # (once dropping, until the writer is half through:
            return                         # one gap, one notice, not a line here and there)
        self._notice_locked()              # where the dropped lines would have been
        self._backlog.append((data, lines))
        self._queued += len(data)
        if self._writer is None and not self._closing:
            self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._writer.start()
        self._lock.notify_all()

    def _drop_locked(self, lines: int) -> None:
        global _dropped_total
        self.dropped += lines
        self._unreported += lines
        with _TOTAL_LOCK:
            _dropped_total += lines

    def _notice_locked(self) -> None:
        if self._unreported:
            notice = _dropped_notice(self._unreported).encode()
            self._unreported = 0
            self._backlog.append((notice, 0))
            self._queued += len(notice)

    def _run(self) -> None:
        """The writer thread: write whatever is handed over, in order."""
        lock = self._lock
        while True:
            with lock:
                lock.wait_for(lambda: self._backlog or self._closing)
                if not self._backlog:
                    self._writer = None
                    lock.notify_all()
                    return
                chunks = list(self._backlog)
                self._backlog.clear()
            data = b"".join(data for data, _ in chunks)
            written = self._write_all(data)
            with lock:
                self._queued -= len(data)
                self._stuck = False
                if not written:            # stderr is gone: those lines are lost too
                    self._drop_locked(sum(lines for _, lines in chunks))
                    self._unreported = 0   # nowhere to say so
                elif not self._backlog:
                    self._notice_locked()  # the reader caught up: say what it missed
                lock.notify_all()

    def _write_all(self, data: bytes) -> bool:
        """Write all of data, waiting as long as it takes; False when the fd is unusable."""
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(self._fd, view):]
                except BlockingIOError:   # somebody made the fd non-blocking: wait here
                    select.select([], [self._fd], [], 1.0)
        except (OSError, ValueError):
            return False                  # stderr gone (closed pipe): logging must not take the server down
        return True


_SINKS: weakref.WeakSet[LineSink] = weakref.WeakSet()
_TOTAL_LOCK = threading.Lock()
_dropped_total = 0


def dropped_lines() -> int:
    """Log lines every LineSink of this process dropped because their fd was not read."""
    return _dropped_total


def _dropped_notice(lines: int) -> str:
    record = logging.makeLogRecord({
        "name": "router.logs", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "log lines dropped: nobody read the log fast enough", "fields": {"dropped": lines}})
    return JsonFormatter().format(record) + "\n"


def _before_fork() -> None:
    for sink in list(_SINKS):
        sink._lock.acquire()


def _after_fork_in_parent() -> None:
    for sink in list(_SINKS):
        sink._lock.release()


def _after_fork_in_child() -> None:
    """The parent's writer threads do not exist here, and the lines queued for them are
    the parent's to write: start afresh."""
    for sink in list(_SINKS):
        sink._reset()
        sink._pending.clear()
        sink._pending_bytes = 0
        sink._timer_loop = None


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


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
        node = node.parent
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
