"""Who the client is: its address (X-Forwarded-For only via trusted proxies) and where it is (GeoIP)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import geoip2.database
import geoip2.errors
import geoip2.models
from cachetools import LRUCache
from maxminddb import MODE_MEMORY

from goproxy_router.base.fileid import FileId, stat_id
from goproxy_router.routing.countries import continent_of

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a peer name or a header entry; None if it is not one.

    Takes `v4`, `v4:port`, `v6`, `[v6]` and `[v6]:port` (a port must be digits);
    anything else (`unknown`, an obfuscated id, a name) is not an address.
    """
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):                            # "[v6]" or "[v6]:port"
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:                          # "v4:port"
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    """True when the address belongs to one of our own proxies."""
    return address is not None and any(address in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The peer address, or the client our trusted proxies report (see `forwarded_client`)."""
    address = parse_ip(peer)
    if address is None or not is_trusted(address, trusted):
        return address
    return forwarded_client(address, forwarded_for, trusted)


def forwarded_client(peer: IPAddress, forwarded_for: Sequence[str],
                     trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The client behind a trusted peer: the rightmost untrusted X-Forwarded-For hop.

    `forwarded_for` is every X-Forwarded-For line of the request, in order:
    a proxy may add its own line rather than extend the last one (HAProxy's
    `option forwardfor`), and the lines together are one comma list (RFC 9110
    5.3), so reading only the first would read the client's own. Hops are read
    from the right, as nginx's realip does with `real_ip_recursive on`: each
    was written by the hop to its right, and we walk while that writer is one
    of our proxies; entries a client wrote itself sit to the left of the ones
    our proxies appended. Empty entries are skipped.

    A hop that is not an address (`unknown`, `_hidden`, a name) where the walk
    stands means a trusted proxy could not say who its client was: the client
    is unknown (None), so it gets no network's access (`allow.cidrs`,
    `admin.cidrs`) and a neutral country. nginx would take the proxy's own
    address instead, which opens whatever the proxy's network opens to anyone
    behind it. All hops trusted: the leftmost one is the client.

    Only X-Forwarded-For is read; `Forwarded` (RFC 7239) is ignored, as nginx
    does. Reading both is only safe when one knows which one the proxies
    write: whichever they do not write is the client's alone, and preferring
    it would let a client name any address.
    """
    address = peer
    for line in reversed(forwarded_for):
        for hop in reversed(line.split(",")):
            if not hop or hop.isspace():
                continue
            hop_address = parse_ip(hop)
            if hop_address is None:
                return None
            address = hop_address
            if not is_trusted(address, trusted):
                return address
    return address


log = logging.getLogger("router.geo")

CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is: ISO 3166-1 alpha-2 country and continent code (AF AN AS EU NA OC SA).

    None means unknown, which scoring must treat as neutral, never as far away.
    """

    country: str | None
    continent: str | None


UNKNOWN = Location(None, None)

_NO_FILE_YET: FileId = (-1, -1, -1, -1)            # matches no real file: the first check acts
_Query = Callable[[IPAddress], geoip2.models.Country]

CHECK_INTERVAL = 5.0                                # seconds between looks at the file


@dataclass(frozen=True, slots=True)
class _Found:
    """What one look at the file found (made off the loop, applied on it)."""

    file_id: FileId | None                          # None: missing or unreadable
    reader: geoip2.database.Reader | None = None
    query: _Query | None = None
    error: Exception | None = None


class GeoDatabase:
    """Client address → Location from a MaxMind Country or City database, re-read when the file changes.

    The file is read into memory (MODE_MEMORY) rather than mmap-ed: an update
    that rewrites it in place would truncate the mapping under the reader and
    kill the process with SIGBUS. MODE_MMAP would make opening cheap, but that
    crash is worse than the cost, which no longer matters to requests: on the
    event loop the file is looked at (stat, and when it changed, read whole
    and parsed) in a thread, at most every `check_interval` seconds, and the
    new reader is swapped in once it is ready; lookups use the old one until
    then, and keep it when the new file cannot be opened. The pure-Python
    reader costs ~60 µs a lookup instead of ~10 µs (measured here), which the
    per-address LRU hides from the hot path; a swap briefly holds both files
    in memory. Without a running loop (the `explain` command, at start-up)
    the check runs inline. Use it from one thread.
    """

    def __init__(self, path: str | None, *, check_interval: float | None = None) -> None:
        self._path = path
        self._check_interval = CHECK_INTERVAL if check_interval is None else check_interval
        self._reader: geoip2.database.Reader | None = None
        self._query: _Query | None = None
        self._file_id: FileId | None = _NO_FILE_YET     # as last seen on disk; None: missing
        self._next_check = 0.0
        self._checking: asyncio.Task[None] | None = None
        self._cache: LRUCache[IPAddress, Location] = LRUCache(CACHE_SIZE)
        self._lookup_warned = False
        if path is not None:
            self._next_check = time.monotonic() + self._check_interval
            self._apply(path, _look(path, self._file_id))

    def lookup(self, ip: IPAddress | None) -> Location:
        """The client's location, UNKNOWN for private or unlisted addresses or without a database.

        Never raises: this runs for every request, and an unknown country only
        makes geo scoring neutral.
        """
        if ip is None or self._path is None:
            return UNKNOWN
        if time.monotonic() >= self._next_check:
            self._check(self._path)
        location = self._cache.get(ip)
        if location is None:
            location = self._cache[ip] = self._locate(ip)
        return location

    def close(self) -> None:
        """Release the database; later lookups answer UNKNOWN and nothing is re-opened."""
        self._path = None
        self._cache.clear()
        if self._checking is not None:
            self._checking.cancel()                  # its thread finishes; what it opened is dropped
            self._checking = None
        if self._reader is not None:
            self._reader.close()
            self._reader = self._query = None

    def _check(self, path: str) -> None:
        """Look at the file again: in a thread when a loop runs (one look at a time), else inline."""
        self._next_check = time.monotonic() + self._check_interval
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._apply(path, _look(path, self._file_id))
            return
        if self._checking is None:
            self._checking = loop.create_task(self._check_off_loop(path))

    async def _check_off_loop(self, path: str) -> None:
        try:
            found = await asyncio.to_thread(_look, path, self._file_id)
        finally:
            self._checking = None
        if self._path != path:                       # closed meanwhile
            if found is not None and found.reader is not None:
                found.reader.close()
            return
        self._apply(path, found)

    def _apply(self, path: str, found: _Found | None) -> None:
        """Swap in what a look found; a missing or bad file keeps the last good one."""
        if found is None:                            # unchanged
            return
        self._file_id = found.file_id                # so each bad state is reported once
        keeping = "keeping the previous data" if self._reader else "client countries are unknown"
        if found.file_id is None:
            log.warning("GeoIP database %s is missing or unreadable; %s", path, keeping)
            return
        if found.reader is None:
            log.warning("GeoIP database %s cannot be opened (%s); %s", path, found.error, keeping)
            return
        old = self._reader
        self._reader, self._query = found.reader, found.query
        self._cache.clear()
        self._lookup_warned = False
        if old is not None:
            old.close()
        metadata = found.reader.metadata()
        log.info("GeoIP database %s loaded: %s, built %s", path, metadata.database_type,
                 time.strftime("%Y-%m-%d", time.gmtime(metadata.build_epoch)))

    def _locate(self, ip: IPAddress) -> Location:
        """Uncached lookup."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if self._query is None or not ip.is_global:  # private, loopback, link-local, reserved, CGNAT...
            return UNKNOWN
        try:
            record = self._query(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return UNKNOWN                           # not listed, or IPv6 asked of an IPv4-only file
        except Exception as exc:                     # a damaged data section: answer, say so once
            if not self._lookup_warned:
                log.warning("GeoIP lookup of %s failed (%s); answering unknown", ip, exc)
                self._lookup_warned = True
            return UNKNOWN
        country = record.country.iso_code
        country = country.upper() if country else None
        continent = record.continent.code
        return Location(country, continent.upper() if continent else continent_of(country))


def _look(path: str, known: FileId | None) -> _Found | None:
    """The file's identity and, when it differs from `known`, the file opened; None when
    unchanged. Blocking (stat, read): runs in a thread on a live edge. Never raises."""
    file_id = stat_id(path)
    if file_id == known:
        return None
    if file_id is None:
        return _Found(None)
    try:
        reader, query = _open(path)
    except Exception as exc:                         # whatever a bad file trips, the edge must not fall
        return _Found(file_id, error=exc)
    return _Found(file_id, reader, query)


def _open(path: str) -> tuple[geoip2.database.Reader, _Query]:
    """A reader and the query its database type answers (City records include the country)."""
    reader = geoip2.database.Reader(path, mode=MODE_MEMORY)
    database_type = reader.metadata().database_type
    if "City" in database_type:
        return reader, reader.city
    if "Country" in database_type:
        return reader, reader.country
    reader.close()
    raise ValueError(f"database type {database_type!r} is neither a Country nor a City database")
