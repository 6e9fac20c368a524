"""What the go command accepts as a dependency's go.mod: its module line and major-version rules.

Written afresh from three Go sources, so that the edge refuses what the go
command would refuse, and nothing it would accept:

- ``golang.org/x/mod/modfile``: the lexer and statement grammar of read.go
  (a syntax error anywhere fails the whole file) and the ``module``
  directive as ``ParseLax`` reads a dependency's go.mod (rule.go): one
  module statement, one argument, a Go-quoted string or a bare word with no
  quote characters, also inside a ``module ( ... )`` block. Other directives
  (``go``, ``require``, ``retract``, future ones) are the go command's to
  judge; only their syntax is checked here.
- ``golang.org/x/mod/module``: ``SplitPathVersion`` and ``CheckPathMajor``
  (``/v2``, gopkg.in ``.v2``, ``+incompatible``).
- ``cmd/go/internal/modfetch/coderepo.go``: ``isMajor``, the rule a proxy
  applies when it serves a go.mod. A go.mod may declare another module path
  than the one requested, as long as its major version fits: that is a
  fork's go.mod, which the go command takes through a ``replace`` directive
  (``replace golang.org/x/net => example.com/fork/net v1.4.5``). `check_mod`
  reports such a file as a ``fork``, not as a problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from goproxy_router.protocol.paths import ProtocolError, check_path, is_semver

__all__ = ["GoModError", "ModCheck", "check_mod", "check_path_major", "module_path",
           "split_path_version"]

MAX_GO_MOD = 16 << 20       # codehost.MaxGoMod: the go command reads no more

# Token kinds besides the punctuation characters themselves ("\n", "(", ")", ...).
_EOF, _EOLCOMMENT, _IDENT, _STRING, _COMMENT = "EOF", "EOLCOMMENT", "IDENT", "STRING", "COMMENT"
_EOL = frozenset({"\n", _EOF, _EOLCOMMENT})
_PUNCT = frozenset("\n()[]{},")
# An identifier's runes (modfile isIdent, checked for printability after the match),
# up to a "//" or "/*", which start a comment.
_IDENT_RUN = re.compile(r"(?:[^\s()\[\]{},/]|/(?![/*]))+")


class GoModError(ValueError):
    """The file is not a go.mod the go command would read; the message names the line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"go.mod:{line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    line: int


def _lex(text: str) -> Iterator[_Token]:
    """modfile's readToken, one token at a time, ending with EOF forever."""
    pos, n, line = 0, len(text), 1
    while True:
        while pos < n and text[pos] in " \t\r":
            pos += 1
        if pos >= n:
            yield _Token(_EOF, "", line)
            continue
        if text.startswith("//", pos):       # a comment runs to the end of its line
            suffix = text[text.rfind("\n", 0, pos) + 1:pos].strip() != ""
            end = text.find("\n", pos)
            end = n if end < 0 else end + 1
            yield _Token(_EOLCOMMENT if suffix else _COMMENT, text[pos:end].rstrip("\r\n"), line)
            line += text.count("\n", pos, end)
            pos = end
            continue
        if text.startswith("/*", pos):
            raise GoModError(line, "mod files must use // comments (not /* */ comments)")
        c = text[pos]
        if c in _PUNCT:
            pos += 1
            yield _Token(c, c, line)
            line += c == "\n"
            continue
        if c in "\"`":
            start, quote = pos, c
            pos += 1
            while True:
                if pos >= n:
                    raise GoModError(line, "unexpected EOF in string")
                if text[pos] == "\n":
                    raise GoModError(line, "unexpected newline in string")
                ch = text[pos]
                pos += 1
                if ch == quote:
                    break
                if ch == "\\" and quote != "`":
                    if pos >= n:
                        raise GoModError(line, "unexpected EOF in string")
                    line += text[pos] == "\n"
                    pos += 1
            yield _Token(_STRING, text[start:pos], line)
            continue
        run = _IDENT_RUN.match(text, pos)
        word = run.group() if run else ""
        if not word.isprintable() or not word:   # an unprintable rune can start no token
            bad = next((ch for ch in word if not ch.isprintable()), c)
            raise GoModError(line, f"unexpected input character {bad!r}")
        start, pos = pos, pos + len(word)
        if text.startswith("/*", pos):
            raise GoModError(line, "mod files must use // comments (not /* */ comments)")
        yield _Token(_IDENT, text[start:pos], line)


class _Parser:
    """modfile's parseFile/parseStmt/parseLineBlock, keeping only module statements."""

    def __init__(self, text: str) -> None:
        self._tokens = _lex(text)
        self._next = next(self._tokens)
        self.module_args: list[tuple[list[str], int]] = []   # each module statement's arguments

    def _peek(self) -> str:
        return self._next.kind

    def _take(self) -> _Token:
        token, self._next = self._next, next(self._tokens)
        return token

    def parse(self) -> None:
        while (kind := self._peek()) != _EOF:
            if kind in ("\n", _COMMENT):
                self._take()
            else:
                self._statement()

    def _statement(self) -> None:
        first = self._take()
        tokens = [first.text]
        while True:
            token = self._take()
            if token.kind in _EOL:
                self._line(tokens, first.line)
                return
            if token.kind == "(":
                if self._peek() in _EOL:
                    self._block(tokens, first.line)
                    return
                if self._peek() == ")":
                    self._take()
                    if self._peek() in _EOL:
                        self._take()             # an empty block: no lines
                        return
                    tokens += ["(", ")"]
                    continue
            tokens.append(token.text)

    def _block(self, tokens: list[str], start: int) -> None:
        lines: list[tuple[list[str], int]] = []
        while True:
            kind = self._peek()
            if kind in (_EOLCOMMENT, "\n", _COMMENT):
                self._take()
            elif kind == _EOF:
                raise GoModError(start, "syntax error (unterminated block)")
            elif kind == ")":
                closing = self._take()
                if self._peek() not in _EOL:
                    raise GoModError(closing.line, "syntax error (expected newline after closing paren)")
                self._take()
                break
            else:
                first = self._take()
                words = [first.text]
                while (token := self._take()).kind not in _EOL:
                    words.append(token.text)
                lines.append((words, first.line))
        # ParseLax ignores blocks with more than one token before "(" (`module x (`).
        if tokens == ["module"]:
            self.module_args += lines

    def _line(self, tokens: list[str], line: int) -> None:
        if tokens[0] == "module":
            self.module_args.append((tokens[1:], line))


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}
_HEX = {"x": 2, "u": 4, "U": 8}
_OCTAL = re.compile(r"[0-7]{3}")


def _go_unquote(token: str) -> str:
    """strconv.Unquote for a double-quoted Go string; ValueError if Go would refuse it.

    Bytes from \\x and octal escapes that are not UTF-8 come back as lone
    surrogates, which no module path check accepts.
    """
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise ValueError("not a quoted string")
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        i += 1
        if c in '"\n':
            raise ValueError("invalid syntax")
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            continue
        if i >= len(body):
            raise ValueError("invalid syntax")
        e = body[i]
        i += 1
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e in "01234567":
            digits = body[i - 1:i + 2]
            if not _OCTAL.fullmatch(digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(int(digits, 8))
            i += 2
        elif e in _HEX:
            digits = body[i:i + _HEX[e]]
            if len(digits) != _HEX[e] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("invalid syntax")
            value = int(digits, 16)
            i += _HEX[e]
            if e == "x":
                out.append(value)
            elif value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise ValueError("invalid syntax")
            else:
                out += chr(value).encode()
        else:
            raise ValueError("invalid syntax")
    return out.decode("utf-8", "surrogateescape")


def module_path(data: bytes) -> str:
    """The module path a go.mod declares, as ``modfile.ParseLax`` reads it.

    Raises GoModError for a syntax error anywhere in the file, a missing or
    repeated module statement, or a module line ParseLax refuses.
    """
    if len(data) > MAX_GO_MOD:
        raise GoModError(1, f"go.mod of {len(data)} bytes is over the go command's {MAX_GO_MOD}")
    parser = _Parser(data.decode("utf-8", "replace"))
    parser.parse()
    if not parser.module_args:
        raise GoModError(1, "missing module line")
    (args, line), *repeated = parser.module_args
    if repeated:
        raise GoModError(repeated[0][1], "repeated module statement")
    if len(args) != 1:
        raise GoModError(line, "usage: module module/path")
    word = args[0]
    if word.startswith('"'):
        try:
            path = _go_unquote(word)
        except ValueError:
            raise GoModError(line, f"invalid quoted string: {word[:100]!r}") from None
    elif any(q in word for q in "\"'`"):
        raise GoModError(line, "invalid quoted string: unquoted string cannot contain quote")
    else:
        path = word
    if not path:
        raise GoModError(line, "missing module path")
    return path


# --- major versions (golang.org/x/mod/module, cmd/go modfetch) -------------------

def split_path_version(path: str) -> tuple[str, str, bool]:
    """module.SplitPathVersion: (prefix, "/vN" or gopkg.in ".vN" or "", ok)."""
    if path.startswith("gopkg.in/"):
        i = len(path) - (len("-unstable") if path.endswith("-unstable") else 0)
        while i > 0 and path[i - 1].isdigit() and path[i - 1].isascii():
            i -= 1
        if i <= 1 or path[i - 1] != "v" or path[i - 2] != ".":
            return path, "", False
        prefix, major = path[:i - 2], path[i - 2:]
        if len(major) <= 2 or major[2] == "0" and major != ".v0":
            return path, "", False
        return prefix, major, True
    i, dot = len(path), False
    while i > 0 and (path[i - 1] in "0123456789."):
        dot = dot or path[i - 1] == "."
        i -= 1
    if i <= 1 or i == len(path) or path[i - 1] != "v" or path[i - 2] != "/":
        return path, "", True
    prefix, major = path[:i - 2], path[i - 2:]
    if dot or len(major) <= 2 or major[2] == "0" or major == "/v1":
        return path, "", False
    return prefix, major, True


def _semver_major(version: str) -> str:
    match = re.match(r"v[0-9]+", version)
    return match.group() if match and is_semver(version) else ""


def check_path_major(version: str, path_major: str) -> str | None:
    """module.CheckPathMajor: why `version` cannot belong to a path ending in `path_major`."""
    if path_major.startswith(".v") and path_major.endswith("-unstable"):
        path_major = path_major.removesuffix("-unstable")
    if version.startswith("v0.0.0-") and path_major == ".v1":
        return None                      # an old pseudo-version bug the go command allows
    major = _semver_major(version)
    if path_major == "":
        if major in ("v0", "v1") or version.endswith("+incompatible"):
            return None
        want = "v0 or v1"
    else:
        if major == path_major[1:]:
            return None
        want = path_major[1:]
    return f"version {version} should be {want}, not {major or 'a semantic version'}"


def _path_major_prefix(path_major: str) -> str:
    return path_major.removesuffix("-unstable")[1:] if path_major else ""


def _is_major(declared: str, path_major: str) -> bool:
    """coderepo.go isMajor: may a go.mod declaring `declared` serve a path with `path_major`?"""
    _, declared_major, ok = split_path_version(declared)
    if not ok:
        return False
    if path_major == "":
        return _path_major_prefix(declared_major) in ("", "v0", "v1")
    if declared_major == "":
        return False
    return path_major[1:] == declared_major[1:]


@dataclass(frozen=True, slots=True)
class ModCheck:
    """What a go.mod says about itself, judged for one module@version."""

    declared: str | None         # the module path it declares (None: unreadable)
    problem: str | None          # why the go command would refuse it; None: acceptable
    fork: bool = False           # declares another module path (acceptable: a fork's go.mod)


def check_mod(data: bytes, module: str, version: str | None) -> ModCheck:
    """Judge a go.mod served as `module`@`version` by the go command's rules.

    A problem: not a go.mod, no or a malformed module line, a version that
    does not fit the module path's major version (``/v2`` wants v2.x.y;
    ``+incompatible`` only without a suffix), or a declared path whose major
    version does not fit (a ``+incompatible`` version's go.mod is the
    synthesized ``module <path>``, without a suffix). A different path with a
    fitting major version is a fork's go.mod: no problem, but ``fork`` is set.
    """
    if version is not None:
        _, path_major, _ = split_path_version(module)
        if version.endswith("+incompatible") and path_major:
            return ModCheck(None, f"+incompatible version {version} for a module path with "
                                  f"a major version suffix {path_major}")
        if why := check_path_major(version, path_major):
            return ModCheck(None, why)
    try:
        declared = module_path(data)
    except GoModError as exc:
        return ModCheck(None, f"not a go.mod: {exc}")
    if declared == module:
        return ModCheck(declared, None)
    shown = declared[:200].encode("utf-8", "backslashreplace").decode()
    try:
        check_path(declared)
    except ProtocolError:
        return ModCheck(declared, f"declares an invalid module path {shown!r}")
    _, path_major, _ = split_path_version(module)
    if not (_is_major(declared, path_major)
            or (path_major == "" and declared.startswith("gopkg.in/"))):   # cmd/go allows this
        want = f"{path_major} suffix" if path_major else "v0/v1 path"
        return ModCheck(declared, f"declares module path {shown!r}, not a {want} like {module!r}")
    return ModCheck(declared, None, fork=True)
