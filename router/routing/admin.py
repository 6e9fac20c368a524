"""Who may use the operator surface (/_router/*, /metrics): admin networks or a token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from goproxy_router.config.loader import ConfigError
from goproxy_router.config.schema import Config
from goproxy_router.routing.gate import in_networks, token_accepted
from goproxy_router.routing.geo import IPAddress, IPNetwork
from goproxy_router.routing.routes import AccessDenied, admit, authorization_text
from goproxy_router.routing.throttle import AuthThrottle

SURFACE = "the operator endpoints"


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    """Loopback by default; `admin.cidrs` widens it, `admin.token_env` adds a Bearer token."""

    cidrs: tuple[IPNetwork, ...]
    token: bytes | None

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None) -> AdminPolicy:
        token = None
        if config.admin.token_env:
            value = (os.environ if env is None else env).get(config.admin.token_env)
            if not value:
                raise ConfigError([f"admin.token_env: environment variable "
                                   f"{config.admin.token_env} is not set"])
            token = value.strip().encode()
        return cls(config.admin.cidrs, token)

    def check(self, client: IPAddress | None, authorization: str | None,
              throttle: AuthThrottle | None = None) -> None:
        """Return when allowed; AccessDenied otherwise (403, 400 for an Authorization that
        is not text, 429 for an address with too many wrong tokens lately).

        Only a Bearer token can be right, so only a wrong Bearer token counts as
        a failed guess; from an admin network the token is not looked at.
        """
        if in_networks(client, self.cidrs):
            return
        if self.token is not None and authorization:
            admit(throttle, client, "admin", SURFACE)
            authorization_text(authorization, SURFACE)
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                if token_accepted(value.strip().encode(), (self.token,)):
                    return
                if throttle is not None:
                    throttle.failed(client, "admin")
        raise AccessDenied(403, f"{SURFACE} are not open to {client}: connect from an admin "
                                "network (admin.cidrs) or send the admin token (admin.token_env) "
                                "as a Bearer token")
