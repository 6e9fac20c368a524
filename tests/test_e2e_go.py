"""Acceptance: the real go command downloads a whole graph through the router.

Three fake upstreams: ``broken`` answers 500 to everything and comes first
in the public route (the router must fail over, since one 5xx would fail
the go command); ``public`` serves the public graph; ``corp`` serves the
private modules only with the right bearer token, which the router adds
from ``${CORP_TOKEN}``. Besides getting exactly the build list, the private
module names and the token must never reach a public upstream.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import GoEnv, RouterProcess
from tests.support import (
    Faults,
    Module,
    ModuleTree,
    ThreadedFakeProxy,
    case_escape,
    download_cache_paths,
    mvs,
    random_dag,
    write_main_module,
)

PRIVATE_PREFIX = "git.corp.example"
SECRET = "git.corp.example/team/secret"
SECRET_DEP = "git.corp.example/team/auth"


def _public_graph() -> tuple[ModuleTree, list[tuple[str, str]]]:
    """22 public modules, depth 4, one with upper-case path elements."""
    paths = [f"example.com/pub/m{i:02d}" for i in range(21)] + ["example.com/Upper/Lib"]
    dag = random_dag(22, 4, seed=4242, paths=paths)
    return dag.tree, dag.roots


def _private_modules(public: ModuleTree) -> list[Module]:
    """secret -> auth -> example.com/pub/m05; secret -> example.com/Upper/Lib."""
    upper = public.latest("example.com/Upper/Lib")
    leaf = public.latest("example.com/pub/m05")
    assert upper is not None and leaf is not None
    auth = Module(SECRET_DEP, "v0.3.1", requires=[leaf.key])
    secret = Module(SECRET, "v1.2.0", requires=[auth.key, upper.key])
    return [auth, secret]


def _private_markers(paths: list[str]) -> list[str]:
    """Every spelling of the private names that could appear in a request."""
    marks = {PRIVATE_PREFIX}
    for p in paths:
        marks |= {p, case_escape(p), case_escape(p).replace("!", "%21")}
    return sorted(m.lower() for m in marks)


@pytest.mark.e2e
@pytest.mark.timeout(170)
def test_go_mod_download_through_router(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    token = "corp-" + secrets.token_hex(12)
    public_tree, public_roots = _public_graph()
    private = _private_modules(public_tree)
    corp_tree = ModuleTree(private)

    broken = threaded_fake_proxy(public_tree, name="broken", faults=Faults(status=500))
    public = threaded_fake_proxy(public_tree, name="public")
    corp = threaded_fake_proxy(corp_tree, name="corp", faults=Faults(
        required_headers={"Authorization": f"Bearer {token}"}))

    router = router_process({
        "upstreams": {
            "broken": {"url": broken.url},
            "public": {"url": public.url},
            "corp": {"url": corp.url, "headers": {"Authorization": "Bearer ${CORP_TOKEN}"}},
        },
        "routes": [
            {"name": "corp", "match": [PRIVATE_PREFIX], "upstreams": ["corp"], "sumdb": False},
            {"name": "public", "match": ["*"], "upstreams": ["broken", "public"]},
        ],
    }, env={"CORP_TOKEN": token})

    roots = [*public_roots, private[-1].key]
    everything = ModuleTree([*public_tree, *private])
    main = write_main_module(tmp_path / "main", "example.com/main", roots)

    r = go_env.run("mod", "download", "-x", cwd=main, goproxy=router.url, timeout=120)
    assert r.returncode == 0, (f"go mod download failed:\n{r.stderr[-4000:]}\n"
                               f"--- router stderr:\n{router.stderr()[-4000:]}")

    expected = download_cache_paths(mvs(everything, roots).items(), "zip")
    assert len(expected) >= 24
    assert go_env.downloaded("zip") == expected

    private_paths = [m.path for m in private]
    marks = _private_markers(private_paths)
    for fake in (broken, public):
        for rec in fake.requests:
            seen = {rec.raw_path.lower(), unquote(rec.raw_path).lower(), rec.path.lower()}
            leaked = [m for m in marks for s in seen if m in s]
            assert not leaked, f"{fake.name} saw a private module: {rec.raw_path}"
            assert not any(token in v for _, v in rec.headers), \
                f"{fake.name} got the corp token on {rec.raw_path}"
    assert public.requests, "public upstream never used"

    corp_private = [rec for rec in corp.requests
                    if any(unquote(rec.raw_path).lstrip("/").startswith(p + "/@") for p in private_paths)]
    assert corp_private, "corp upstream never asked for the private modules"
    assert all(rec.header("Authorization") == f"Bearer {token}" for rec in corp_private), \
        [(rec.raw_path, rec.header("Authorization") is not None) for rec in corp_private]
