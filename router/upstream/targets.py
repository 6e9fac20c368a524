"""Who an upstream request goes to: the upstream, its credentials, and their secrets.

`UpstreamTarget.for_url` is the one place an upstream's request target is
built (serving, active probes, checksum databases, `check`): credentials in
the URL become a Basic Authorization header, and the base URL shown in logs
and pages carries none. `secrets` lists what `redact` must scrub from
anything the upstream says; `config_secrets` gathers them for a whole config.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr
from yarl import URL

from goproxy_router.config.schema import Config, SumDB, Upstream
from goproxy_router.config.secrets import secret_values


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """A named upstream as the sender sees it: base URL, its own headers, and the
    secrets among them (what `redact` must scrub from anything this upstream says).

    `for_url` is the one place an upstream's request is built, for serving,
    active probes, checksum databases and `check` alike.
    """

    name: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    redirects: tuple[str, ...] = ()    # other origins its redirects may lead to

    @classmethod
    def for_url(cls, name: str, url: str,
                headers: Mapping[str, SecretStr | str] | None = None,
                redirects: tuple[str, ...] = ()) -> UpstreamTarget:
        """Credentials in the URL (user:password@) become a Basic Authorization header:
        the base URL itself, which appears in logs and pages, then carries none."""
        sent = {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                for k, v in (headers or {}).items()}
        parsed = URL(url)
        in_url: list[str] = []
        if parsed.user is not None or parsed.password is not None:
            user, password = parsed.user or "", parsed.password or ""
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            sent.setdefault("Authorization", f"Basic {token}")
            # The user too: it may be the token itself (https://TOKEN@host).
            in_url = [v for v in (user, password, parsed.raw_user, parsed.raw_password) if v]
            parsed = parsed.with_user(None)
        return cls(name=name, base_url=str(parsed).rstrip("/"), headers=sent,
                   secrets=secret_values([*sent.values(), *in_url]), redirects=redirects)

    @classmethod
    def from_config(cls, name: str, upstream: Upstream) -> UpstreamTarget:
        return cls.for_url(name, upstream.url, upstream.headers, upstream.redirects)

    def url_for(self, path: str) -> URL:
        """Join the base URL (which may carry a path prefix) and an escaped path."""
        return URL(self.base_url + path, encoded=True)


def sumdb_targets(db: SumDB) -> tuple[UpstreamTarget, ...]:
    """A checksum database's URL and its mirrors, named as logs and errors name them."""
    return tuple(UpstreamTarget.for_url(db.name if i == 0 else f"{db.name} mirror {i}", url)
                 for i, url in enumerate((db.url, *db.mirrors)))


def config_secrets(config: Config) -> tuple[str, ...]:
    """Every secret of every upstream and checksum database URL in `config`, longest first."""
    found = {secret for name, upstream in config.upstreams.items()
             for secret in UpstreamTarget.from_config(name, upstream).secrets}
    found.update(secret for db in config.sumdb for target in sumdb_targets(db)
                 for secret in target.secrets)
    return tuple(sorted(found, key=lambda s: (-len(s), s)))
