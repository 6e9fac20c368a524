"""Networks or a token: the one decision behind a route's `allow` and the admin surface.

A client passes by its address (in one of the networks) or by a token (one
of the accepted ones, compared in constant time per token). The callers,
AccessPolicy (router/routing/routes.py) and AdminPolicy (router/routing/admin.py), keep their
own order of checks, statuses, wording and throttling.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from goproxy_router.routing.geo import IPAddress, IPNetwork


def in_networks(client: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether the client's address is in one of the networks (an unknown address is not)."""
    return client is not None and any(client in net for net in networks)


def token_accepted(token: bytes, accepted: Iterable[bytes]) -> bool:
    """Whether `token` is one of `accepted`, comparing against every one in constant time."""
    ok = False
    for candidate in accepted:
        ok |= hmac.compare_digest(candidate, token)
    return ok
