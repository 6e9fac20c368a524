"""Who sent a request, and its id: worked out once, cheaply, for every request.

Both are on the path of every answer, cache hits included, so they avoid
per-request work that the answer does not need: a peer address is parsed
and checked against the trusted proxies once per distinct peer, not once
per request, and a request id is a per-process random prefix plus a
counter rather than a fresh draw from the OS.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from goproxy_router.routing.geo import IPAddress, IPNetwork, forwarded_client, is_trusted, parse_ip

_OFFERED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PEERS_REMEMBERED = 4096     # distinct peer addresses kept; beyond that the book starts over


class RequestIds:
    """Unique request ids: 8 random hex digits per process, then a counter (16 hex digits).

    Unique across the workers of one edge and across restarts (the prefix is
    drawn anew), cheap per request, and still unguessable enough for a log key.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"

    def choose(self, offered: str | None, from_trusted_proxy: bool) -> str:
        """The id a trusted proxy offered in X-Request-Id when it is well-formed, else a new one."""
        if offered and from_trusted_proxy and _OFFERED_ID.match(offered):
            return offered
        return self.new()


@dataclass(frozen=True, slots=True)
class Peer:
    """A connection's remote address, parsed once."""

    address: IPAddress | None
    trusted: bool          # one of our own proxies: its X-Forwarded-For and X-Request-Id count
    json: str              # the address as a JSON value, for log lines written by hand


class PeerBook:
    """Peer host string → Peer, for one set of trusted proxies (a reload makes a new book)."""

    def __init__(self, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.trusted_proxies = trusted_proxies
        self._peers: dict[str | None, Peer] = {}

    def peer(self, host: str | None) -> Peer:
        found = self._peers.get(host)
        if found is None:
            if len(self._peers) >= PEERS_REMEMBERED:
                self._peers.clear()
            address = parse_ip(host)
            found = self._peers[host] = Peer(
                address, is_trusted(address, self.trusted_proxies),
                json.dumps(str(address)))
        return found

    def client(self, peer: Peer, headers: CIMultiDictProxy[str]) -> IPAddress | None:
        """The client's address: the peer, or the X-Forwarded-For hop our proxies vouch for
        (every X-Forwarded-For line counts: geo.forwarded_client). Both the full flow and
        the thin path ask here, so they always agree on who the client is."""
        if not peer.trusted or peer.address is None:
            return peer.address
        forwarded_for = headers.getall("X-Forwarded-For", ())
        if not forwarded_for:
            return peer.address
        return forwarded_client(peer.address, forwarded_for, self.trusted_proxies)
