"""The access log's one schema: its ordered fields, the request metric's labels, the renderer.

The full flow (router/serving/middleware.py) and the thin path (router/serving/thin.py) both build
a request's fields with `fields` and its labels with `labels`; the thin
path keeps the fixed part rendered once by `prefix` and writes its line
with `line`, which renders exactly what JsonFormatter renders for the full
flow's `emit`. One schema, so the two paths cannot drift.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from goproxy_router.base.logs import log_event

log = logging.getLogger("router.access")

# Every line: request_id, client, then FIELDS, then elapsed.
FIELDS = ("country", "method", "path", "route", "module", "version", "kind", "upstream",
          "attempts", "cache", "status", "bytes")
LABELS = ("route", "kind", "status", "cache")     # goproxy_requests_total, in this order

Labels = tuple[str, str, str, str]


def fields(*, method: str, path: str, status: int, route: str | None = None,
           module: str | None = None, version: str | None = None, kind: str | None = None,
           country: str | None = None, upstream: str | None = None, attempts: int = 0,
           cache: str | None = None, bytes: int | None = None) -> dict[str, Any]:
    """A request's fields between `client` and `elapsed`, in the order of FIELDS."""
    values = {"country": country, "method": method, "path": path, "route": route,
              "module": module, "version": version, "kind": kind, "upstream": upstream,
              "attempts": attempts, "cache": cache, "status": status, "bytes": bytes}
    return {name: values[name] for name in FIELDS}


def labels(entry: dict[str, Any]) -> Labels:
    """The goproxy_requests_total labels of a request's fields."""
    return (entry["route"] or "-", entry["kind"] or "invalid", str(entry["status"]),
            entry["cache"] or "none")


def emit(request_id: str, client: str | None, entry: dict[str, Any], elapsed: float) -> None:
    """Log one request through the logging system (JsonFormatter renders it)."""
    log_event(log, logging.INFO, "request", request_id=request_id, client=client, **entry,
              elapsed=round(elapsed, 4))


def prefix(entry: dict[str, Any]) -> str:
    """The fields as the JSON text JsonFormatter writes for them, without the braces."""
    return json.dumps(entry, default=str, separators=(",", ":"))[1:-1]


def line(clock_now: str, pid: int, request_id: str, client_json: str, rendered: str,
         elapsed: float) -> str:
    """A whole line from a `prefix`, exactly as JsonFormatter renders `emit`'s record."""
    return (f'{{"ts":"{clock_now}","level":"info","logger":"router.access","pid":{pid},'
            f'"event":"request","request_id":"{request_id}","client":{client_json},'
            f'{rendered},"elapsed":{round(elapsed, 4)!r}}}\n')
