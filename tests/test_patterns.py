"""Tests for router.patterns: Go's MatchPrefixPatterns semantics and PatternTable.

Every expected value in MATCH_CASES was checked against Go 1.19's path.Match
driving the MatchPrefixPatterns algorithm.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goproxy_router.protocol.pathmatch import PatternError, match_prefix_patterns
from goproxy_router.protocol.patterns import PatternTable, validate_glob

MATCH_CASES: list[tuple[str, str, bool]] = [
    # Examples from the Go documentation (go help module-private).
    ("*.corp.example.com,rsc.io/private", "git.corp.example.com/xyzzy", True),
    ("*.corp.example.com,rsc.io/private", "rsc.io/private", True),
    ("*.corp.example.com,rsc.io/private", "rsc.io/private/quux", True),
    ("*.corp.example.com,rsc.io/private", "rsc.io/privateer", False),
    ("*.corp.example.com,rsc.io/private", "corp.example.com/x", False),
    ("*.corp.example.com,*.research.example.com", "lab.research.example.com/m", True),
    ("corp.com/org", "corp.com/org/x", True),
    ("corp.com/org", "corp.com/org", True),
    ("corp.com/org", "corp.com/organization", False),
    ("corp.com/org", "corp.com", False),
    # One trailing slash is ignored; empty entries are skipped.
    ("corp.com/org/", "corp.com/org/x", True),
    ("corp.com/org/", "corp.com/organization", False),
    ("corp.com//", "corp.com/x", False),
    ("corp.com//", "corp.com/", True),
    ("", "corp.com", False),
    (",,", "corp.com", False),
    (",corp.com,", "corp.com/x", True),
    ("/", "corp.com", False),
    # * and ?: never across '/'.
    ("*", "anything.example/a/b", True),
    ("*", "", True),
    ("*/*", "a.example/b/c", True),
    ("*/*", "a.example", False),
    ("github.com/*/private-*", "github.com/team1/private-x/sub", True),
    ("github.com/*/private-*", "github.com/team1/public", False),
    ("github.com/*", "github.com", False),
    ("exampl?.com", "example.com/x", True),
    ("exampl?.com", "exampl.com", False),
    ("a?c", "a/c", False),
    ("a*c", "a/c", False),
    # Character classes, ranges, negation, an empty range.
    ("[a-c]orp.com", "corp.com/x", True),
    ("[a-c]orp.com", "dorp.com", False),
    ("[^a-c]orp.com", "dorp.com", True),
    ("[^a-c]orp.com", "corp.com", False),
    ("[z-a]orp.com", "corp.com", False),
    ("[\\]]x", "]x", True),
    ("[a\\-c]x", "-x", True),
    ("[a\\-c]x", "bx", False),
    # Escapes; an escaped '/' still separates elements.
    ("a\\*b", "a*b", True),
    ("a\\*b", "axb", False),
    ("a\\?b", "a?b", True),
    ("corp.com\\/org", "corp.com/org/x", True),
    ("\\c\\o\\r\\p.com", "corp.com", True),
    # Malformed globs never match and do not hide later ones.
    ("[", "[", False),
    ("a\\", "a\\", False),
    ("[]a]", "]a", False),
    ("[a-]", "a", False),
    ("a[", "a", False),
    ("[,corp.com", "corp.com", True),
    ("[,*", "x", True),  # the list is split on ',' first, even inside [...]
    # A '/' inside a class counts as a separator in Go.
    ("a[/]b", "a/b", True),
    ("a[^/]b", "axb", False),
    # A glob with more elements than the target.
    ("corp.com/a/b", "corp.com/a", False),
    ("corp.com/a/b", "corp.com/a/b/c", True),
    # Non-ASCII: Go matches bytes after a star.
    ("*??", "\u20ac", True),
    ("?", "\u20ac", True),
    ("??", "\u20ac", False),
]


@pytest.mark.parametrize(("globs", "target", "expected"), MATCH_CASES)
def test_match_prefix_patterns(globs: str, target: str, expected: bool) -> None:
    assert match_prefix_patterns(globs, target) is expected


@pytest.mark.parametrize(
    "glob",
    [
        "*",
        "corp.com/org",
        "corp.com/org/",
        "*.corp.example.com",
        "github.com/*/private-*",
        "[a-c]x",
        "[^a.-0]x",
        "a\\*b",
        "x\\/y",
        "[z-a]",
        "[\\]]",
    ],
)
def test_validate_glob_accepts(glob: str) -> None:
    validate_glob(glob)


@pytest.mark.parametrize(
    ("glob", "reason"),
    [
        ("[", "unterminated character class"),
        ("a[b", "unterminated character class"),
        ("[]", "unexpected ']'"),
        ("[a-]", "unexpected ']'"),
        ("[-a]", "unexpected '-'"),
        ("[a-b-c]", "unexpected '-'"),
        ("a\\", "trailing backslash"),
        ("[a\\", "trailing backslash"),
        ("a\\/", "trailing backslash"),  # the trailing '/' is dropped first, as Go does
        ("*[x", "unterminated character class"),
        ("", "empty glob"),
        ("/", "empty glob"),
        ("a,b", "','"),
        ("a[/]b", "'/' inside character class [/]"),
        ("a[^/]b", "'/' inside character class [^/]"),
        ("a[\\/]b", "'/' inside character class"),
        ("[^a]", "could match '/'"),
        ("x[.-0]", "could match '/'"),
    ],
)
def test_validate_glob_rejects(glob: str, reason: str) -> None:
    with pytest.raises(PatternError) as err:
        validate_glob(glob)
    assert repr(glob) in str(err.value)
    assert reason in str(err.value)


def test_pattern_error_is_value_error() -> None:
    assert issubclass(PatternError, ValueError)


def test_table_first_entry_wins() -> None:
    table = PatternTable(
        [
            ("github.com/corp", "corp"),
            ("github.com/corp/private-*", "private"),
            ("*.corp.example.com", "example"),
            ("*", "public"),
        ]
    )
    assert table.lookup("github.com/corp/private-x") == "corp"
    assert table.lookup("git.corp.example.com/xyzzy") == "example"
    assert table.lookup("github.com/other/x") == "public"
    assert len(table) == 4


def test_table_later_specific_entry_after_general_one() -> None:
    table = PatternTable(
        [("*.corp.example.com", 1), ("*/private", 2), ("git.corp.example.com/x", 3)]
    )
    assert table.lookup("git.corp.example.com/x") == 1
    assert table.lookup("example.org/private/y") == 2


def test_table_miss_returns_none() -> None:
    table = PatternTable([("corp.com/org", 1), ("corp.com/a/b", 2)])
    assert table.lookup("corp.com/organization") is None
    assert table.lookup("corp.com/a") is None  # fewer elements than the glob
    assert table.lookup("corp.com") is None
    assert PatternTable([]).lookup("anything") is None


def test_table_trailing_slash_and_escapes() -> None:
    table = PatternTable([("corp.com/org/", "org"), ("a\\*b", "star"), ("x\\/y", "xy")])
    assert table.lookup("corp.com/org/m") == "org"
    assert table.lookup("a*b/c") == "star"
    assert table.lookup("axb") is None
    assert table.lookup("x/y/z") == "xy"


def test_table_shapes() -> None:
    table = PatternTable(
        [
            ("exampl?.com", "q"),
            ("[a-c]orp.com", "class"),
            ("team*-private", "mid-star"),
            ("*.suffix.example", "suffix"),
            ("prefix-*", "prefix"),
            ("[z-a]x", "never"),
        ]
    )
    assert table.lookup("example.com/m") == "q"
    assert table.lookup("borp.com/m") == "class"
    assert table.lookup("team42-private/m") == "mid-star"
    assert table.lookup("a.b.suffix.example/m") == "suffix"
    assert table.lookup("suffix.example") is None
    assert table.lookup("prefix-/m") == "prefix"
    assert table.lookup("zx") is None


def test_table_catch_all_matches_everything() -> None:
    table = PatternTable([("*", "all")])
    for target in ["", "a", "a/b/c", "golang.org/x/mod"]:
        assert table.lookup(target) == "all"


def test_table_non_ascii_target_follows_go() -> None:
    table = PatternTable([("x/*??", 1)])
    assert table.lookup("x/\u20ac") == 1  # Go: the star may end inside a rune
    assert table.lookup("x/a") is None


def test_table_rejects_bad_glob() -> None:
    with pytest.raises(PatternError, match="'a\\[b'"):
        PatternTable([("ok.example", 1), ("a[b", 2)])


def test_table_with_many_patterns() -> None:
    entries = [(f"github.com/org{n}", n) for n in range(500)]
    entries += [(f"*.corp{n}.example", n) for n in range(500)]
    table = PatternTable(entries)
    assert table.lookup("github.com/org321/repo") == 321
    assert table.lookup("git.corp77.example/x") == 77
    assert table.lookup("github.com/org5000/repo") is None


# --- property: PatternTable agrees with the reference matcher ---------------

# Each glob atom with strings it may stand for, so targets can be built that hit.
_ATOMS: dict[str, list[str]] = {
    "a": ["a"],
    "b": ["b"],
    ".": ["."],
    "-": ["-"],
    "/": ["/"],
    "*": ["", "a", "b.c"],
    "**": ["ab"],
    "?": ["a", "-"],
    "[ab]": ["a", "b"],
    "[a-c]": ["c"],
    "[^.-0a]": ["b", "a"],
    "[z-a]": ["z"],
    "\\*": ["*"],
    "\\/": ["/"],
    "\\a": ["a"],
    "\\\\": ["\\"],
}
_TAILS = ["", "/m", "x", "/a/b", "a/"]
_TARGET_ATOMS = ["a", "b", ".", "/", "ab", "*"]


def _valid(glob: str) -> bool:
    try:
        validate_glob(glob)
    except PatternError:
        return False
    return True


_glob_atoms = st.lists(st.sampled_from(sorted(_ATOMS)), min_size=1, max_size=6).filter(
    lambda a: _valid("".join(a))
)


@st.composite
def _table_and_targets(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Globs, plus targets that are random or instances of one of the globs."""
    atom_lists = draw(st.lists(_glob_atoms, min_size=1, max_size=8))
    targets = draw(
        st.lists(
            st.lists(st.sampled_from(_TARGET_ATOMS), max_size=8).map("".join),
            max_size=4,
        )
    )
    for _ in range(draw(st.integers(1, 8))):
        atoms = draw(st.sampled_from(atom_lists))
        targets.append(
            "".join(draw(st.sampled_from(_ATOMS[a])) for a in atoms)
            + draw(st.sampled_from(_TAILS))
        )
    return ["".join(atoms) for atoms in atom_lists], targets


@settings(max_examples=400, deadline=None)
@given(_table_and_targets())
def test_table_agrees_with_reference(case: tuple[list[str], list[str]]) -> None:
    globs, targets = case
    table = PatternTable([(glob, i) for i, glob in enumerate(globs)])
    for target in targets:
        expected = next(
            (i for i, glob in enumerate(globs) if match_prefix_patterns(glob, target)),
            None,
        )
        assert table.lookup(target) == expected, target
