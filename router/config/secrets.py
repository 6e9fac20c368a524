"""Secrets out of every output: the one `redact` for logs, pages, error excerpts and `check`.

routes.yaml puts credentials in two places, upstream `headers` and the
`user:password@` of an upstream URL, and `${VAR}` expansion makes both plain
strings by the time the config is parsed. `secret_values` lists what must
never be shown (the values, the token of a "Scheme token" value, the URL's
user and password, raw and decoded); `redact` replaces them, and anything
credential-shaped an upstream may have echoed back (an `Authorization:`
line, `token=...`, `https://user:pw@`), before text reaches an operator or a
client. Callers build the list once (per config, or per upstream target) and
pass it: scrubbing is a few `str.replace` calls, cheap enough for error paths.

A value shorter than `MIN_SECRET` characters is not treated as a secret:
replacing "ab" everywhere would garble every message while hiding nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET = 4

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
# "Bearer <credential>": a credential is long, has a digit and no spaces ("basic auth" is left alone).
_AUTH_SCHEME = re.compile(
    r"(?i)\b(bearer|basic|digest|negotiate|token)\s+(?=[A-Za-z0-9._~+/=:-]*\d)[A-Za-z0-9._~+/=:-]{8,}")
# "Authorization: <value>", "api_key=<value>", "password": "<value>" ...
_SECRET_FIELD = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-[a-z0-9-]*(?:token|key|auth)"
    r"|[a-z0-9_-]*(?:token|secret|password|passwd|api[_-]?key))(\"?\s*[:=]\s*\"?)"
    r"(?:(?:bearer|basic|digest|negotiate|token)\s+)?[^\s\"'&,;]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SCHEMES = frozenset({"basic", "bearer", "digest", "negotiate", "token"})


def secret_values(values: Iterable[str]) -> tuple[str, ...]:
    """The strings to scrub for these configured values, longest first (so a value is
    replaced whole before any part of it): each value, and each word of a
    multi-word one but an auth scheme ("Bearer abc..." also leaks as "abc...")."""
    found: set[str] = set()
    for value in values:
        words = value.split()
        found.add(value.strip())
        found.update(w for w in words if w.lower() not in _SCHEMES)
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET), key=lambda s: (-len(s), s)))


def redact(text: str, secrets: Iterable[str] = (), limit: int | None = None) -> str:
    """`text` made safe to show: no known secret, no credential-shaped value, no
    control characters or runs of white space, at most `limit` characters.

    A secret cut off at the end of `text` (an excerpt read up to a byte limit)
    is caught too: a trailing piece of `MIN_SECRET` or more characters that
    starts a secret is replaced.
    """
    secrets = tuple(secrets)
    text = " ".join(_CONTROL.sub(" ", text).split())
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _cut_secret_tail(text, secrets)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + REDACTED, text)
    if limit is not None and len(text) > limit:
        text = text[:limit - 1].rstrip() + "\u2026"
    return text


def _cut_secret_tail(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if " " in secret:            # a multi-word value's words are secrets of their own
            continue
        for size in range(min(len(secret) - 1, len(text)), MIN_SECRET - 1, -1):
            if text.endswith(secret[:size]):
                return text[:-size] + REDACTED
    return text
