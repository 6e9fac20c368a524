"""Go's ``path.Match`` and ``module.MatchPrefixPatterns``, ported exactly.

They run on UTF-8 bytes, as Go does, so even odd input (non-ASCII targets,
malformed globs) gives Go's answer: this is the reference the router's
compiled PatternTable (protocol/patterns.py) must agree with, and what it
falls back to for non-ASCII targets. PatternError is Go's ErrBadPattern.
"""

from __future__ import annotations

__all__ = ["PatternError", "check_glob_syntax", "match_prefix_patterns"]

_SLASH = 0x2F
_BACKSLASH = 0x5C
_RUNE_ERROR = 0xFFFD


class PatternError(ValueError):
    """A glob that Go would reject, or that this router does not support."""


# --- Go's path.Match, ported over bytes -------------------------------------


def _decode_rune(s: bytes, i: int) -> tuple[int, int]:
    """Go's utf8.DecodeRuneInString: invalid UTF-8 decodes as (RuneError, 1)."""
    c = s[i]
    if c < 0x80:
        return c, 1
    width = (
        2
        if 0xC2 <= c <= 0xDF
        else 3
        if 0xE0 <= c <= 0xEF
        else 4
        if 0xF0 <= c <= 0xF4
        else 0
    )
    if width:
        try:
            return ord(s[i : i + width].decode("utf-8")), width
        except UnicodeDecodeError:
            pass
    return _RUNE_ERROR, 1


def _scan_chunk(pattern: bytes) -> tuple[bool, bytes, bytes]:
    """Split off leading stars and the star-free chunk after them."""
    i = 0
    while i < len(pattern) and pattern[i] == 0x2A:  # '*'
        i += 1
    star, pattern = i > 0, pattern[i:]
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == _BACKSLASH:
            if i + 1 < len(pattern):
                i += 1
        elif c == 0x5B:  # '['
            in_class = True
        elif c == 0x5D:  # ']'
            in_class = False
        elif c == 0x2A and not in_class:
            return star, pattern[:i], pattern[i:]
        i += 1
    return star, pattern, b""


def _class_char(chunk: bytes, i: int) -> tuple[int, int]:
    """Go's getEsc: one possibly escaped class character; returns (rune, next index)."""
    if i >= len(chunk):
        raise PatternError("unterminated character class")
    if chunk[i] in (0x2D, 0x5D):  # '-' or ']'
        raise PatternError(
            f"unexpected {chr(chunk[i])!r} in character class (escape it with '\\')"
        )
    if chunk[i] == _BACKSLASH:
        i += 1
        if i >= len(chunk):
            raise PatternError("trailing backslash")
    r, n = _decode_rune(chunk, i)
    if r == _RUNE_ERROR and n == 1:
        raise PatternError("invalid UTF-8")
    i += n
    if i >= len(chunk):
        raise PatternError("unterminated character class")
    return r, i


def _match_chunk(chunk: bytes, s: bytes) -> bytes | None:
    """Match a star-free chunk at the start of s; return the rest of s, or None.

    Like Go, keeps parsing after a mismatch so a malformed chunk always raises.
    """
    failed = False
    i = 0
    while i < len(chunk):
        if not failed and not s:
            failed = True
        c = chunk[i]
        if c == 0x5B:  # '['
            r = -1
            if not failed:
                r, n = _decode_rune(s, 0)
                s = s[n:]
            i += 1
            negated = i < len(chunk) and chunk[i] == 0x5E  # '^'
            if negated:
                i += 1
            matched = False
            n_ranges = 0
            while True:
                if i < len(chunk) and chunk[i] == 0x5D and n_ranges > 0:
                    i += 1
                    break
                lo, i = _class_char(chunk, i)
                hi = lo
                if chunk[i] == 0x2D:  # '-'
                    hi, i = _class_char(chunk, i + 1)
                if lo <= r <= hi:
                    matched = True
                n_ranges += 1
            if matched == negated:
                failed = True
        elif c == 0x3F:  # '?'
            if not failed:
                if s[0] == _SLASH:
                    failed = True
                s = s[_decode_rune(s, 0)[1] :]
            i += 1
        else:
            if c == _BACKSLASH:
                i += 1
                if i >= len(chunk):
                    raise PatternError("trailing backslash")
            if not failed:
                if chunk[i] != s[0]:
                    failed = True
                s = s[1:]
            i += 1
    return None if failed else s


def _path_match(pattern: bytes, name: bytes) -> bool:
    """Go's path.Match; raises PatternError where Go returns ErrBadPattern."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return _SLASH not in name
        rest = _match_chunk(chunk, name)
        if rest is None or (rest and not pattern):
            rest = _match_after_star(chunk, name, last=not pattern) if star else None
        if rest is None:
            while pattern:  # a mismatch must still report a malformed remainder
                _, chunk, pattern = _scan_chunk(pattern)
                _match_chunk(chunk, b"")
            return False
        name = rest
    return not name


def _match_after_star(chunk: bytes, name: bytes, last: bool) -> bytes | None:
    """Let a star eat 1.. bytes of name (never a '/') until chunk matches.

    Takes the first fit, as Go does; the last chunk must also end the name.
    """
    for i in range(len(name)):
        if name[i] == _SLASH:
            break
        rest = _match_chunk(chunk, name[i + 1 :])
        if rest is not None and not (last and rest):
            return rest
    return None


def _encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def match_prefix_patterns(globs: str, target: str) -> bool:
    """Exactly Go's module.MatchPrefixPatterns.

    A glob with N slashes is matched against the first N+1 elements of target;
    empty and malformed globs never match; one trailing "/" is ignored.
    """
    for glob in globs.split(","):
        glob = glob.removesuffix("/")
        if not glob:
            continue
        n = glob.count("/")
        parts = target.split("/", n + 1)
        if len(parts) <= n:
            continue
        try:
            if _path_match(_encode(glob), _encode("/".join(parts[: n + 1]))):
                return True
        except PatternError:
            continue
    return False


def check_glob_syntax(glob: str) -> None:
    """Raise PatternError where Go's path.Match reports ErrBadPattern for glob.

    Matched against an empty name, Go still parses the whole pattern.
    """
    _path_match(_encode(glob), b"")
