"""The scalar values routes.yaml spells as text: sizes, listen addresses, CIDRs,
http(s) URLs and origins.

Each parser raises ValueError with a message fit for a "file:line: key: problem"
error, and never quotes a URL's user:password@ back. The Annotated types let the
schema's models apply them to a field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from goproxy_router.config.secrets import redact

__all__ = ["ByteSize", "HttpURL", "IPNetwork", "Networks", "Origin", "parse_listen", "parse_size"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR string such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


def _networks(values: Any) -> tuple[IPNetwork, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ValueError("expected a list of CIDRs")
    return tuple(_network(v) for v in values)


Networks = Annotated[tuple[IPNetwork, ...], BeforeValidator(_networks)]


def _http_url(value: str) -> str:
    from yarl import URL

    shown = redact(value)           # an error quotes the URL back: never its user:password@
    if any(c.isspace() for c in value.strip()):
        raise ValueError(f"{shown!r} must not contain white space")
    url = URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{shown!r} is not an http(s) URL with a host")
    if url.query_string or url.fragment:
        raise ValueError(f"{shown!r} must not have a query or fragment")
    return str(url).rstrip("/")


HttpURL = Annotated[str, AfterValidator(_http_url)]


def _origin(value: Any) -> str:
    """An origin, scheme://host[:port], for an upstream's `redirects`."""
    from yarl import URL

    if not isinstance(value, str):
        raise ValueError("expected an origin such as https://cdn.example")
    try:
        url = URL(value.strip())
    except ValueError:
        raise ValueError(f"{redact(value)!r} is not an origin such as https://cdn.example") from None
    if (url.scheme not in ("http", "https") or not url.host or url.user is not None
            or url.password is not None or url.path not in ("", "/") or url.query_string
            or url.fragment):
        raise ValueError(f"{redact(value)!r} is not an origin such as https://cdn.example "
                         "(scheme and host, maybe a port; no path)")
    return str(url.origin())


Origin = Annotated[str, BeforeValidator(_origin)]


def parse_size(value: Any) -> int:
    """Turn "20GB", "512MiB" or a plain byte count into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 20GB or 512MiB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "B").upper()])


ByteSize = Annotated[int, BeforeValidator(parse_size)]


def parse_listen(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[v6]:PORT"."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen {value!r} must be HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
