"""Reading routes.yaml: YAML with line numbers, ${VAR} expansion, validation
against the schema, and every problem as one "file:line: key: problem".

parse_config, read_config and load_config raise ConfigError listing every
fault found, never just the first. A value put there by ${VAR} is redacted from
any message, since variables are where secrets live.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from goproxy_router.config.schema import NAME_RE, Config
from goproxy_router.config.secrets import redact, secret_values

Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """routes.yaml is unusable; `errors` holds one "file:line: key: problem" per fault."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Document:
    """The composed YAML tree, kept to point errors at their line.

    It also remembers what ${VAR} expansion put where: `from_env` holds the
    locations of values that came (at least partly) from the environment,
    `env_values` the values substituted. An error message may quote the value
    it refuses; the substituted ones are redacted from it, since a variable
    is where secrets live (a token in a URL, a header), and such a message
    reaches stderr, logs and a reload's ERROR line.
    """

    def __init__(self, source: str, root: Node | None) -> None:
        self.source = source
        self.root = root
        self.from_env: set[Loc] = set()
        self.env_values: tuple[str, ...] = ()

    def line_of(self, loc: Loc) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node else None
        for part in loc:
            if isinstance(node, MappingNode):
                for key, value in node.value:
                    if isinstance(key, ScalarNode) and key.value == str(part):
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, loc: Loc, message: str) -> str:
        if self.env_values:
            message = redact(message, self.env_values)
        line = self.line_of(loc)
        where = f"{self.source}:{line}" if line else self.source
        key = format_loc(loc)
        return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def format_loc(loc: Loc) -> str:
    """("routes", 0, "upstreams", 1) -> "routes[0].upstreams[1]"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _expand_env(node: Node | None, env: Mapping[str, str], doc: _Document) -> list[str]:
    """Replace ${VAR} in string scalars in place; "$$" is a literal "$".

    Records on `doc` where a value came from the environment and what was
    substituted (see _Document).
    """
    errors: list[str] = []
    substituted: list[str] = []

    def walk(n: Node, loc: Loc) -> None:
        if isinstance(n, ScalarNode):
            if n.tag == "tag:yaml.org,2002:str" and "$" in n.value:
                def sub(m: re.Match[str]) -> str:
                    if m.group(0) == "$$":
                        return "$"
                    name = m.group(1)
                    doc.from_env.add(loc)
                    if name not in env:
                        line = n.start_mark.line + 1
                        errors.append(
                            f"{doc.source}:{line}: {format_loc(loc)}: "
                            f"environment variable {name} is not set"
                        )
                        return ""
                    substituted.append(env[name])
                    return env[name]
                n.value = _ENV_REF.sub(sub, n.value)
        elif isinstance(n, MappingNode):
            seen: set[str] = set()
            for key, value in n.value:
                name = key.value if isinstance(key, ScalarNode) else "?"
                if name in seen and name != "<<":
                    errors.append(f"{doc.source}:{key.start_mark.line + 1}: "
                                  f"{format_loc(loc + (name,))}: key appears twice")
                seen.add(name)
                walk(value, loc + (name,))
        elif isinstance(n, SequenceNode):
            for index, item in enumerate(n.value):
                walk(item, loc + (index,))

    if node is not None:
        walk(node, ())
    doc.env_values = secret_values(substituted)
    return errors


def validation_problems(exc: ValidationError) -> list[tuple[Loc, str]]:
    """Each pydantic error as (location, short message), in routes.yaml's words."""
    problems = []
    for err in exc.errors(include_url=False):
        # Drop union-branch markers such as "str" or "dict[str,...]" from the location.
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or "[" not in str(p))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        problems.append((loc, message))
    return problems


def _pydantic_errors(exc: ValidationError, doc: _Document) -> list[str]:
    return [doc.error(loc, message) for loc, message in validation_problems(exc)]


def _cross_check(config: Config, doc: _Document) -> list[str]:
    errors = []
    names: set[str] = set()
    for index, route in enumerate(config.routes):
        if route.name in names:
            errors.append(doc.error(("routes", index, "name"), f"route {route.name!r} is defined twice"))
        names.add(route.name)
        for position, upstream in enumerate(route.upstreams):
            if upstream not in config.upstreams:
                errors.append(doc.error(
                    ("routes", index, "upstreams", position),
                    f"unknown upstream {upstream!r} (defined: {', '.join(sorted(config.upstreams))})",
                ))
    seen_db: set[str] = set()
    for index, db in enumerate(config.sumdb):
        if db.name in seen_db:
            errors.append(doc.error(("sumdb", index, "name"),
                                    f"checksum database {db.name!r} is listed twice"))
        seen_db.add(db.name)
    for name in config.upstreams:
        if not NAME_RE.match(name):
            errors.append(doc.error(("upstreams", name),
                                    "upstream names are letters, digits, '.', '_' and '-'"))
    return errors


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A valid config and the YAML it came from, so later checks (plugins) can name a line."""

    config: Config
    document: _Document

    def error(self, loc: Loc, message: str) -> str:
        """The "file:line: key: message" of the key at `loc`, as parse_config reports."""
        return self.document.error(loc, message)


def _parse(text: str, source: str, env: Mapping[str, str] | None,
           base_dir: Path | None) -> LoadedConfig:
    env = os.environ if env is None else env
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            doc = _Document(source, root)
            errors = _expand_env(root, env, doc)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if errors:
        raise ConfigError(errors)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the file must be a mapping with upstreams and routes"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_errors(exc, doc)) from None
    errors = _cross_check(config, doc)
    if errors:
        raise ConfigError(errors)
    if base_dir is not None:
        config = _paths_next_to(config, base_dir)
    return LoadedConfig(config, doc)


def _paths_next_to(config: Config, base_dir: Path) -> Config:
    """Resolve the relative file paths of a config (cache.dir, geoip.database,
    scoring.plugin_dirs) against the directory of routes.yaml, so that none of
    them moves with the directory the service happened to be started in."""
    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

    cache = config.cache.model_copy(update={"dir": resolve(config.cache.dir)})
    geoip = config.geoip
    if geoip.database is not None:
        geoip = geoip.model_copy(update={"database": resolve(geoip.database)})
    scoring = config.scoring.model_copy(
        update={"plugin_dirs": tuple(resolve(d) for d in config.scoring.plugin_dirs)})
    return config.model_copy(update={"cache": cache, "geoip": geoip, "scoring": scoring})


def parse_config(text: str, source: str = "routes.yaml",
                 env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Parse routes.yaml text; raise ConfigError listing every problem found.

    Relative paths (cache.dir, geoip.database, scoring.plugin_dirs) are
    resolved against `base_dir` when given, else left relative (to the
    working directory).
    """
    return _parse(text, source, env, base_dir).config


def read_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate a routes.yaml file, keeping its YAML for line numbers.

    Relative paths in it (cache.dir, geoip.database, scoring.plugin_dirs) are
    taken relative to the file's own directory.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read: {exc}"]) from None
    return _parse(text, str(file), env, file.absolute().parent)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a routes.yaml file."""
    return read_config(path, env).config
