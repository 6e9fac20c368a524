"""In-memory Go module trees that answer the GOPROXY protocol exactly.

Tests need upstream content the real ``go`` command accepts byte for byte:
``.info`` JSON, a ``.mod`` file, and a ``.zip`` in the module zip format
(every file under ``<path>@<version>/``, go.mod included, no directory
entries, deterministic bytes so hashes are stable across runs). Each module
also carries a tiny Go package that imports its requirements, so ``go build``
of a main module over the tree succeeds.

Nothing here imports the router: the harness must be able to judge it.
"""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

Requirement = tuple[str, str]
"""A ``(module path, version)`` pair, as in a go.mod ``require`` line."""

_SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(\+incompatible)?$"
)
_FIRST_ELEM = re.compile(r"^[a-z0-9][a-z0-9.-]*\.[a-z0-9.-]*[a-z0-9]$")
_ELEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")
_MAJOR_SUFFIX = re.compile(r"/v([2-9]|[1-9]\d+)$")
_GO_KEYWORDS = frozenset(
    "break case chan const continue default defer else fallthrough for func "
    "go goto if import interface map package range return select struct "
    "switch type var".split()
)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_TIME_BASE = datetime(2021, 1, 1, tzinfo=UTC)


def case_escape(s: str) -> str:
    """Go's case-encoding of module paths and versions: ``A`` -> ``!a``.

    Written independently of the router so tests do not trust the code
    they check.
    """
    return "".join("!" + c.lower() if "A" <= c <= "Z" else c for c in s)


def case_unescape(s: str) -> str:
    """Undo :func:`case_escape`; ``ValueError`` on raw upper case or a bad ``!``."""
    out: list[str] = []
    bang = False
    for c in s:
        if bang:
            if not "a" <= c <= "z":
                raise ValueError(f"invalid case escape in {s!r}")
            out.append(c.upper())
            bang = False
        elif c == "!":
            bang = True
        elif "A" <= c <= "Z":
            raise ValueError(f"raw upper-case letter in escaped {s!r}")
        else:
            out.append(c)
    if bang:
        raise ValueError(f"trailing '!' in {s!r}")
    return "".join(out)


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """Sort key following semver precedence (pre-releases before releases)."""
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"not a canonical semver version: {version!r}")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (major, minor, patch, 0, parts)


def check_module_path(path: str) -> None:
    """Reject paths the go command would reject, so test mistakes fail early."""
    elems = path.split("/")
    if not _FIRST_ELEM.match(elems[0]):
        raise ValueError(f"module path {path!r}: first element must be a lower-case host name")
    for e in elems[1:]:
        if not _ELEM.match(e) or e.endswith(".") or ".." in e:
            raise ValueError(f"module path {path!r}: bad element {e!r}")


def check_version(path: str, version: str) -> None:
    """Require a canonical version whose major matches the path's suffix."""
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"{path}: version {version!r} is not canonical semver")
    major = int(m[1])
    suffix = _MAJOR_SUFFIX.search(path)
    want = int(suffix[1]) if suffix else None
    if want is None and major >= 2 and not m[5]:
        raise ValueError(f"{path}@{version}: v2+ needs a /vN path suffix or +incompatible")
    if want is not None and major != want:
        raise ValueError(f"{path}@{version}: major version does not match path suffix")


def package_name(path: str) -> str:
    """A valid Go package identifier for the module's root package."""
    elems = path.split("/")
    name = elems[-1]
    if re.fullmatch(r"v\d+", name) and len(elems) > 1:
        name = elems[-2]
    name = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if not name or name[0].isdigit() or name in _GO_KEYWORDS:
        name = "m" + name
    return name


def _render_go_mod(path: str, go: str, requires: Sequence[Requirement]) -> bytes:
    lines = [f"module {path}", "", f"go {go}"]
    if requires:
        lines += ["", "require ("]
        lines += [f"\t{p} {v}" for p, v in requires]
        lines.append(")")
    return ("\n".join(lines) + "\n").encode()


def _import_block(requires: Sequence[Requirement]) -> tuple[str, list[str]]:
    """Aliased imports (d0, d1, ...) so package names never collide."""
    if not requires:
        return "", []
    aliases = [f"d{i}" for i in range(len(requires))]
    body = "".join(f'\t{a} "{p}"\n' for a, (p, _) in zip(aliases, requires, strict=False))
    return f"import (\n{body})\n\n", aliases


@dataclass
class Module:
    """One module version and its exact proxy artifacts.

    ``files`` maps paths relative to the module root to contents; go.mod and
    a root package importing every requirement are added unless given.
    """

    path: str
    version: str
    requires: list[Requirement] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)
    go: str = "1.16"
    time: datetime | None = None

    def __post_init__(self) -> None:
        check_module_path(self.path)
        check_version(self.path, self.version)
        for p, v in self.requires:
            check_module_path(p)
            check_version(p, v)
        self._zip: bytes | None = None

    @property
    def key(self) -> Requirement:
        return (self.path, self.version)

    @property
    def escaped_path(self) -> str:
        return case_escape(self.path)

    @property
    def escaped_version(self) -> str:
        return case_escape(self.version)

    @property
    def commit_time(self) -> datetime:
        """Given time, or a stable one derived from path@version."""
        if self.time is not None:
            return self.time
        seconds = zlib.crc32(f"{self.path}@{self.version}".encode()) % (3 * 365 * 86400)
        return _TIME_BASE + timedelta(seconds=seconds)

    @property
    def info(self) -> bytes:
        t = self.commit_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps({"Version": self.version, "Time": t}, separators=(",", ":")).encode()

    @property
    def mod(self) -> bytes:
        given = self.files.get("go.mod")
        if given is not None:
            return given.encode() if isinstance(given, str) else given
        return _render_go_mod(self.path, self.go, self.requires)

    def source_files(self) -> dict[str, bytes]:
        """Every file of the module, relative to its root, go.mod included."""
        out: dict[str, bytes] = {"go.mod": self.mod}
        pkg = package_name(self.path)
        imports, aliases = _import_block(self.requires)
        deps = ", ".join(f"{a}.Name()" for a in aliases)
        out[f"{pkg}.go"] = (
            f"// Package {pkg} is generated test content for {self.path}.\n"
            f"package {pkg}\n\n{imports}"
            f"// Name reports which module version was built.\n"
            f'func Name() string {{ return "{self.path}@{self.version}" }}\n\n'
            f"// Deps uses every import so the package compiles.\n"
            f"func Deps() []string {{ return []string{{{deps}}} }}\n"
        ).encode()
        for rel, data in self.files.items():
            out[rel] = data.encode() if isinstance(data, str) else data
        return out

    @property
    def zip(self) -> bytes:
        """Module zip: sorted entries, fixed timestamps and attributes.

        Deflate output is stable for a given zlib, which is all a test run
        needs (hashes are compared within one process or one go run).
        """
        if self._zip is None:
            prefix = f"{self.path}@{self.version}/"
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for rel, data in sorted(self.source_files().items()):
                    zi = zipfile.ZipInfo(prefix + rel, date_time=_ZIP_EPOCH)
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    zi.create_system = 3
                    zi.external_attr = 0o644 << 16
                    zf.writestr(zi, data, compresslevel=6)
            self._zip = buf.getvalue()
        return self._zip


@dataclass(frozen=True)
class ProxyAnswer:
    """What a proxy should answer for one request path."""

    status: int
    content_type: str
    body: bytes


_TEXT = "text/plain; charset=utf-8"


def _not_found(reason: str, status: int = 404) -> ProxyAnswer:
    return ProxyAnswer(status, _TEXT, (reason + "\n").encode())


class ModuleTree:
    """A set of module versions answering the GOPROXY protocol."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        self._mods: dict[Requirement, Module] = {}
        for m in modules:
            self.add(m)

    def add(self, module: Module) -> Module:
        if module.key in self._mods:
            raise ValueError(f"duplicate module {module.path}@{module.version}")
        self._mods[module.key] = module
        return module

    def get(self, path: str, version: str) -> Module | None:
        return self._mods.get((path, version))

    def __getitem__(self, key: Requirement) -> Module:
        return self._mods[key]

    def __contains__(self, key: object) -> bool:
        return key in self._mods

    def __iter__(self) -> Iterator[Module]:
        return iter(self._mods.values())

    def __len__(self) -> int:
        return len(self._mods)

    def paths(self) -> list[str]:
        return sorted({p for p, _ in self._mods})

    def versions(self, path: str) -> list[str]:
        """Known versions in semver order (what ``@v/list`` returns)."""
        return sorted((v for p, v in self._mods if p == path), key=semver_key)

    def latest(self, path: str) -> Module | None:
        """Highest release, else highest pre-release, as the go command prefers."""
        vs = self.versions(path)
        if not vs:
            return None
        releases = [v for v in vs if semver_key(v)[3] == 1]
        return self._mods[(path, (releases or vs)[-1])]

    def subset(self, *, prefix: str | None = None, exclude_prefix: str | None = None) -> ModuleTree:
        """A new tree of the modules under ``prefix`` and not under ``exclude_prefix``.

        Used to split one graph across upstreams (e.g. private vs public).
        """
        out = ModuleTree()
        for m in self:
            under = prefix is None or _under(m.path, prefix)
            excluded = exclude_prefix is not None and _under(m.path, exclude_prefix)
            if under and not excluded:
                out.add(m)
        return out

    def respond(self, path: str) -> ProxyAnswer:
        """Answer a decoded request path (``/<escaped module>/@v/...``)."""
        path = unquote(path).lstrip("/")
        if "/@v/" in path:
            emod, _, rest = path.partition("/@v/")
        elif path.endswith("/@latest"):
            emod, rest = path[: -len("/@latest")], "@latest"
        else:
            return _not_found(f"not a module proxy path: /{path}")
        try:
            mod_path = case_unescape(emod)
        except ValueError as e:
            return _not_found(f"bad module path: {e}", 400)
        if rest == "@latest":
            m = self.latest(mod_path)
            if m is None:
                return _not_found(f"{mod_path}: no versions")
            return ProxyAnswer(200, "application/json", m.info)
        if rest == "list":
            vs = self.versions(mod_path)
            return ProxyAnswer(200, _TEXT, "".join(v + "\n" for v in vs).encode())
        ever, dot, ext = rest.rpartition(".")
        if not dot or ext not in ("info", "mod", "zip"):
            return _not_found(f"unknown request: /{path}")
        try:
            version = case_unescape(ever)
        except ValueError as e:
            return _not_found(f"bad version: {e}", 400)
        m = self.get(mod_path, version)
        if m is None:
            return _not_found(f"{mod_path}@{version}: unknown revision {version}")
        if ext == "info":
            return ProxyAnswer(200, "application/json", m.info)
        if ext == "mod":
            return ProxyAnswer(200, _TEXT, m.mod)
        return ProxyAnswer(200, "application/zip", m.zip)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def reachable(tree: ModuleTree, roots: Iterable[Requirement]) -> set[Requirement]:
    """Every (path, version) whose go.mod an unpruned graph load reads."""
    seen: set[Requirement] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        m = tree.get(*key)
        if m is None:
            raise KeyError(f"{key[0]}@{key[1]} required but not in the tree")
        stack.extend(m.requires)
    return seen


def mvs(tree: ModuleTree, roots: Iterable[Requirement]) -> dict[str, str]:
    """Minimal version selection: the highest reachable version per path.

    This is the build list (minus the main module), i.e. the zips
    ``go mod download`` fetches under a go 1.16 (unpruned) main module.
    """
    out: dict[str, str] = {}
    for p, v in reachable(tree, roots):
        if p not in out or semver_key(v) > semver_key(out[p]):
            out[p] = v
    return out


@dataclass
class Dag:
    """A generated dependency graph and what downloading it must fetch."""

    tree: ModuleTree
    roots: list[Requirement]
    layers: list[list[str]]

    @property
    def expected_zips(self) -> set[Requirement]:
        return set(mvs(self.tree, self.roots).items())

    @property
    def expected_mods(self) -> set[Requirement]:
        return reachable(self.tree, self.roots)


def random_dag(n: int, depth: int, seed: int, *, prefix: str = "example.com/dag",
               paths: Sequence[str] | None = None, max_requires: int = 3,
               multi_version: float = 0.35) -> Dag:
    """A seeded random DAG of ``n`` module paths in ``depth`` layers.

    Layer 0 is required by the main module; every path in layer i+1 is
    required by every version of some layer-i path, so all paths are
    reachable and the longest chain has exactly ``depth`` modules. About
    ``multi_version`` of the paths get a second version, and requirers pick
    versions at random, so MVS has real choices to make.
    """
    if not 1 <= depth <= n:
        raise ValueError("need 1 <= depth <= n")
    rng = random.Random(seed)
    names = list(paths) if paths is not None else [f"{prefix}/m{i:02d}" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise ValueError("paths must be n distinct module paths")
    order = names[:]
    rng.shuffle(order)
    # Every layer gets at least one path; the rest are spread at random.
    cuts = sorted(rng.sample(range(1, n), depth - 1)) if depth > 1 else []
    layers = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=False)]

    versions: dict[str, list[str]] = {}
    for p in names:
        minor = rng.randrange(0, 4)
        vs = [f"v1.{minor}.0"]
        if rng.random() < multi_version:
            vs.append(f"v1.{minor + 1 + rng.randrange(0, 2)}.{rng.randrange(0, 3)}")
        versions[p] = vs

    reqs: dict[Requirement, dict[str, str]] = {(p, v): {} for p in names for v in versions[p]}
    for i, layer in enumerate(layers[:-1]):
        deeper = [p for lay in layers[i + 1:] for p in lay]
        # Guaranteed edges: each next-layer path hangs under one path here.
        for child in layers[i + 1]:
            parent = rng.choice(layer)
            for v in versions[parent]:
                reqs[(parent, v)][child] = rng.choice(versions[child])
        # Random extra edges, per version, only towards deeper layers.
        for parent in layer:
            for v in versions[parent]:
                for child in rng.sample(deeper, min(len(deeper), rng.randrange(0, max_requires))):
                    reqs[(parent, v)].setdefault(child, rng.choice(versions[child]))

    tree = ModuleTree(
        Module(p, v, requires=sorted(r.items())) for (p, v), r in sorted(reqs.items())
    )
    roots = sorted((p, rng.choice(versions[p])) for p in layers[0])
    return Dag(tree=tree, roots=roots, layers=layers)


def add_ballast(module: Module, size: int, *, seed: int = 0,
                name: str = "testdata/ballast.bin") -> Module:
    """Make ``module``'s zip larger than ``size`` bytes: add a file of ``size`` seeded,
    incompressible bytes (deflate cannot shrink it). For benchmarks that need one big
    zip in an otherwise small graph; the module is changed in place (so a tree holding
    it serves the big zip) and returned. Its go.mod, .info and package are unchanged."""
    if size < 0:
        raise ValueError("size must be >= 0")
    module.files[name] = random.Random(f"ballast:{seed}").randbytes(size)
    module._zip = None                     # rebuilt with the new file on next use
    return module


def main_module_files(path: str, requires: Sequence[Requirement], go: str = "1.16") -> dict[str, bytes]:
    """go.mod and a main.go that imports every requirement's root package."""
    imports, aliases = _import_block(requires)
    calls = "".join(f"\tprintln({a}.Name())\n" for a in aliases)
    main_go = f"package main\n\n{imports}func main() {{\n{calls}}}\n"
    return {"go.mod": _render_go_mod(path, go, requires), "main.go": main_go.encode()}


def write_main_module(directory: Path, path: str, requires: Sequence[Requirement],
                      go: str = "1.16") -> Path:
    """Write a main module into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, data in main_module_files(path, requires, go).items():
        (directory / rel).write_bytes(data)
    return directory


def download_cache_paths(modules: Iterable[Requirement], ext: str = "zip") -> set[str]:
    """Where the go command stores these artifacts, relative to
    ``$GOMODCACHE/cache/download``: ``<escaped path>/@v/<escaped version>.<ext>``."""
    return {f"{case_escape(p)}/@v/{case_escape(v)}.{ext}" for p, v in modules}
