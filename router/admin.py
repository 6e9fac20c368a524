"""Who may use the operator surface (/_router/*, /metrics): admin networks or a token."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from router.config import Config, ConfigError
from router.geo import IPAddress, IPNetwork


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

    def check(self, client: IPAddress | None, authorization: str | None) -> str | None:
        """None when allowed, else the reason for a 403."""
        if client is not None and any(client in net for net in self.cidrs):
            return None
        if self.token is not None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token):
                return None
        return (f"the operator endpoints are not open to {client}: connect from an admin "
                "network (admin.cidrs) or send the admin token (admin.token_env) as a Bearer token")
