"""GOPRIVATE-style module path globs the router routes on, compiled for lookup.

validate_glob says whether a glob is one a route may use (Go's rules, minus
the shapes MatchPrefixPatterns would treat surprisingly); PatternTable
compiles many globs once into a trie over path elements and answers "which
entry matches first" in a few dictionary probes, with exactly the answer of
protocol/pathmatch.py's match_prefix_patterns. It is what the request path uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from goproxy_router.protocol.pathmatch import PatternError, check_glob_syntax, match_prefix_patterns

__all__ = ["PatternTable", "validate_glob"]

T = TypeVar("T")


# --- Validation and compilation for PatternTable ----------------------------


class _Wild(Enum):
    STAR = "*"
    ANY = "?"


@dataclass(frozen=True)
class _Class:
    negated: bool
    ranges: tuple[tuple[str, str], ...]

    def matches(self, ch: str) -> bool:
        return any(lo <= ch <= hi for lo, hi in self.ranges) != self.negated


_Token = str | _Wild | _Class  # a str token is one literal character


def _split_elements(glob: str) -> list[list[_Token]]:
    """Tokenise a syntactically valid glob into path elements.

    Every '/' outside a class, escaped or not, separates elements: that is how
    MatchPrefixPatterns counts them.
    """
    elements: list[list[_Token]] = [[]]
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "[":
            cls, i = _parse_class(glob, i)
            elements[-1].append(cls)
            continue
        escaped = c == "\\"
        if escaped:
            i += 1
            c = glob[i]
        if c == "/":
            elements.append([])
        elif c in "*?" and not escaped:
            elements[-1].append(_Wild(c))
        else:
            elements[-1].append(c)
        i += 1
    return elements


def _parse_class(glob: str, start: int) -> tuple[_Class, int]:
    """Parse the class opening at glob[start]; return it and the index after ']'.

    The glob is already known to be valid for path.Match.
    """
    i = start + 1
    negated = glob[i] == "^"
    i += negated
    ranges: list[tuple[str, str]] = []
    while not (glob[i] == "]" and ranges):
        lo, i = _class_char_at(glob, i)
        hi = lo
        if glob[i] == "-":
            hi, i = _class_char_at(glob, i + 1)
        ranges.append((lo, hi))
    body = glob[start : i + 1]
    if any("/" in r for r in ranges):
        raise PatternError(
            f"'/' inside character class {body} is not supported: MatchPrefixPatterns counts it "
            "as a path separator, so the glob would be matched against the wrong number of elements"
        )
    cls = _Class(negated, tuple(ranges))
    if cls.matches("/"):
        raise PatternError(
            f"character class {body} could match '/', which is not supported; "
            "list the characters to allow instead (e.g. [a-z0-9])"
        )
    return cls, i + 1


def _class_char_at(glob: str, i: int) -> tuple[str, int]:
    if glob[i] == "\\":
        i += 1
    return glob[i], i + 1


def validate_glob(glob: str) -> None:
    """Raise PatternError unless glob is one GOPRIVATE glob this router can route on.

    Checked as MatchPrefixPatterns uses it (one trailing "/" dropped first):
    Go's ErrBadPattern cases, an empty glob or one with ',' (which Go would
    silently skip or split), and character classes involving '/'.
    """
    stripped = glob.removesuffix("/")
    if not stripped:
        raise PatternError(f"bad glob {glob!r}: empty glob matches nothing")
    if "," in stripped:
        raise PatternError(
            f"bad glob {glob!r}: ',' separates globs in a GOPRIVATE list; give each glob its own entry"
        )
    try:
        check_glob_syntax(stripped)
        _split_elements(stripped)
    except PatternError as e:
        raise PatternError(f"bad glob {glob!r}: {e}") from None


# --- PatternTable ------------------------------------------------------------

_Matcher = Callable[[str], object]


def _element_regex(tokens: list[_Token]) -> str:
    parts: list[str] = []
    for t in tokens:
        if isinstance(t, _Class):
            ranges = "".join(
                f"\\U{ord(lo):08x}-\\U{ord(hi):08x}" for lo, hi in t.ranges if lo <= hi
            )
            # A class of only empty ranges, such as [z-a], matches nothing (negated, it
            # would match '/' and was rejected).
            parts.append(f"[{'^' if t.negated else ''}{ranges}]" if ranges else "(?!)")
        elif t is _Wild.STAR:
            parts.append(".*")
        elif t is _Wild.ANY:
            parts.append(".")
        else:
            parts.append(re.escape(t))
    return "".join(parts)


def _element_key(tokens: list[_Token]) -> tuple[str, str]:
    """Classify an element glob so the common shapes become dictionary probes.

    Returns ("lit", s); ("pre", s) for s* (so "*" is ("pre", "")); ("suf", s)
    for *s; or ("re", regex) for any other shape.
    """
    collapsed: list[_Token] = []
    for t in tokens:
        if not (t is _Wild.STAR and collapsed and collapsed[-1] is _Wild.STAR):
            collapsed.append(t)
    literal = [t for t in collapsed if isinstance(t, str)]
    text = "".join(literal)
    if len(literal) == len(collapsed):
        return "lit", text
    if len(literal) == len(collapsed) - 1:
        if collapsed[-1] is _Wild.STAR:
            return "pre", text
        if collapsed[0] is _Wild.STAR:
            return "suf", text
    return "re", _element_regex(collapsed)


@dataclass(eq=False)
class _Node:
    """A trie node: the globs whose elements so far match this node's path."""

    terminal: int  # lowest entry index whose glob ends here (len(entries) if none)
    min_index: int = 0  # lowest entry index in this subtree, for pruning
    children: dict[tuple[str, str], _Node] = field(default_factory=dict)
    literal: dict[str, _Node] = field(default_factory=dict)
    prefixes: tuple[tuple[int, dict[str, _Node]], ...] = ()
    suffixes: tuple[tuple[int, dict[str, _Node]], ...] = ()
    patterns: tuple[tuple[_Matcher, _Node], ...] = ()

    def freeze(self) -> int:
        """Build the lookup indexes from children; return the subtree's min index."""
        by_len: dict[str, dict[int, dict[str, _Node]]] = {"pre": {}, "suf": {}}
        patterns: list[tuple[_Matcher, _Node]] = []
        self.min_index = self.terminal
        for (kind, text), child in self.children.items():
            self.min_index = min(self.min_index, child.freeze())
            if kind == "lit":
                self.literal[text] = child
            elif kind == "re":
                patterns.append((re.compile(text, re.DOTALL).fullmatch, child))
            else:
                by_len[kind].setdefault(len(text), {})[text] = child
        self.prefixes = tuple(by_len["pre"].items())
        self.suffixes = tuple(by_len["suf"].items())
        self.patterns = tuple(sorted(patterns, key=lambda p: p[1].min_index))
        self.children = {}
        return self.min_index


class PatternTable(Generic[T]):
    """First-match-wins routing of module paths by GOPRIVATE globs, compiled once.

    Design: a trie over path elements. A glob with N slashes matches when its
    N+1 elements match the target's first N+1 elements one by one. That equals
    MatchPrefixPatterns because validate_glob leaves every '/' of a glob a
    literal separator and no wildcard able to match '/'. At each node, children
    are indexed by shape: literal elements in a dict, "s*" and "*s" elements in
    dicts keyed by prefix/suffix (one probe per distinct length), and only
    other shapes as compiled regexes tried in turn. A lookup
    walks every matching branch, pruning subtrees whose lowest entry index
    cannot beat the best match found, so its cost follows the target's depth
    and the number of distinct shapes, not the number of globs. A linear scan
    with a regex alternation was the alternative; it stays O(globs) per miss.

    Non-ASCII targets (never valid module paths) take a linear scan with the
    exact byte-level matcher: there Go's star can stop inside a multi-byte rune.
    """

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        pairs = list(entries)
        for glob, _ in pairs:
            validate_glob(glob)
        self._globs = [glob for glob, _ in pairs]
        self._values = [value for _, value in pairs]
        self._none = len(pairs)  # an index no entry has: "no match"
        self._root = _Node(terminal=self._none)
        for index, glob in enumerate(self._globs):
            node = self._root
            for tokens in _split_elements(glob.removesuffix("/")):
                node = node.children.setdefault(
                    _element_key(tokens), _Node(terminal=self._none)
                )
            node.terminal = min(node.terminal, index)
        self._root.freeze()

    def __len__(self) -> int:
        return len(self._values)

    def lookup(self, target: str) -> T | None:
        """Value of the first entry whose glob matches target, or None."""
        if not target.isascii():
            for glob, value in zip(self._globs, self._values, strict=True):
                if match_prefix_patterns(glob, target):
                    return value
            return None
        best = self._walk(self._root, target.split("/"), 0, self._none)
        return self._values[best] if best < self._none else None

    def _walk(self, node: _Node, elems: list[str], depth: int, best: int) -> int:
        """Lowest entry index below node matching elems[depth:], if lower than best."""
        best = min(best, node.terminal)
        if depth == len(elems):
            return best
        elem = elems[depth]
        depth += 1
        child = node.literal.get(elem)
        if child is not None and child.min_index < best:
            best = self._walk(child, elems, depth, best)
        for length, table in node.prefixes:
            child = table.get(elem[:length])
            if child is not None and child.min_index < best:
                best = self._walk(child, elems, depth, best)
        for length, table in node.suffixes:
            child = table.get(elem[-length:])
            if child is not None and child.min_index < best:
                best = self._walk(child, elems, depth, best)
        for fullmatch, child in node.patterns:
            if child.min_index >= best:
                break
            if fullmatch(elem) is not None:
                best = self._walk(child, elems, depth, best)
        return best
