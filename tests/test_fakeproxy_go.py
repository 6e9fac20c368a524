"""Prove the harness against the real go command, with no router involved.

If these pass, a generated ModuleTree served by a fake is exactly what the
go command accepts, so a later failure through the router is the router's.
They also pin down what go1.19 actually does as a GOPROXY client:

* Under a ``go 1.16`` main module (unpruned graph), ``go mod download``
  with no arguments means ``all``: it first GETs ``.mod`` of *every*
  reachable module version (including versions MVS does not select),
  concurrently; then ``.info`` and ``.zip`` of each module in the build
  list. No ``@v/list`` or ``@latest`` when every version is pinned.
* Under ``go 1.17+`` (go.mod explicitly lists what the main packages need)
  it downloads only the zips of the main module's direct requirements,
  though it still loads the whole graph's ``.mod`` files. Hence the
  ``go 1.16`` directive in generated main modules.
* Upper case in paths and versions goes out case-encoded with ``!``
  percent-encoded: ``/example.com/%21caps/%21pre/@v/v0.1.0-%21beta.2.zip``.
* One 5xx from the first GOPROXY entry fails the run (no retry, no
  fallback with ``,``); 404 falls through to the next entry; ``|`` falls
  through on any error, including a refused connection.
* A proxy that reads the request and never answers blocks the go command
  indefinitely (it sent one ``.mod`` request and waited): only the router's
  timeouts protect developers.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GoEnv
from tests.support import (
    Dag,
    FakeProxy,
    Faults,
    Module,
    ModuleTree,
    ThreadedFakeProxy,
    add_ballast,
    case_escape,
    download_cache_paths,
    mvs,
    random_dag,
    reachable,
    write_main_module,
)

MakeThreaded = Callable[..., ThreadedFakeProxy]
MakeFake = Callable[..., Awaitable[FakeProxy]]


def _graph() -> tuple[ModuleTree, list[tuple[str, str]]]:
    """14 generated modules, depth 4, an upper-case path, plus a directly
    required module whose path *and* version need case-encoding."""
    paths = [f"example.com/dag/m{i:02d}" for i in range(13)] + ["example.com/Upper/Lib"]
    dag: Dag = random_dag(14, 4, seed=20240607, paths=paths)
    caps = Module("example.com/Caps/Pre", "v0.1.0-Beta.2", requires=[dag.roots[0]])
    dag.tree.add(caps)
    return dag.tree, [*dag.roots, caps.key]


def _main(tmp_path: Path, requires: list[tuple[str, str]], go: str = "1.16") -> Path:
    return write_main_module(tmp_path / "main", "example.com/main", requires, go=go)


@pytest.mark.timeout(120)
def test_go_mod_download_fetches_exactly_the_build_list(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: MakeThreaded) -> None:
    tree, roots = _graph()
    proxy = threaded_fake_proxy(tree, name="direct")
    main = _main(tmp_path, roots)

    r = go_env.run("mod", "download", "-x", cwd=main, goproxy=proxy.url)
    assert r.returncode == 0, r.stderr

    assert go_env.downloaded("zip") == download_cache_paths(mvs(tree, roots).items(), "zip")
    # Unpruned loading reads go.mod of every reachable version, selected or not.
    assert go_env.downloaded("mod") == download_cache_paths(reachable(tree, roots), "mod")

    paths = proxy.raw_paths()
    assert not [p for p in paths if p.endswith(("/@v/list", "/@latest"))], paths
    assert "/example.com/%21caps/%21pre/@v/v0.1.0-%21beta.2.zip" in paths
    assert "/example.com/%21upper/%21lib/@v/" in "".join(paths)
    last_mod = max(i for i, p in enumerate(paths) if p.endswith(".mod"))
    first_zip = min(i for i, p in enumerate(paths) if p.endswith(".zip"))
    assert last_mod < first_zip, "graph loading (.mod) precedes downloads (.zip)"

    # The zips extract and compile: build offline from the module cache.
    b = go_env.run("build", "./...", cwd=main, goproxy="off")
    assert b.returncode == 0, b.stderr


@pytest.mark.timeout(120)
def test_go_1_17_main_module_downloads_only_direct_zips(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: MakeThreaded) -> None:
    """Why generated main modules say ``go 1.16``."""
    tree, roots = _graph()
    proxy = threaded_fake_proxy(tree, name="direct")
    r = go_env.run("mod", "download", cwd=_main(tmp_path, roots, go="1.17"), goproxy=proxy.url)
    assert r.returncode == 0, r.stderr
    assert go_env.downloaded("zip") == download_cache_paths(roots, "zip")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("first", "sep", "ok"), [
    (Faults(status=500), ",", False),
    (Faults(status=404), ",", True),
    (Faults(status=410), ",", True),
    (Faults(status=500), "|", True),
    (None, "|", True),  # None: a refused port
])
def test_go_fallback_between_goproxy_entries(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: MakeThreaded, refused_url: str,
        first: Faults | None, sep: str, ok: bool) -> None:
    """What the go client does when the first proxy in GOPROXY fails."""
    lib = Module("example.com/fall/lib", "v1.0.0")
    tree = ModuleTree([lib])
    good = threaded_fake_proxy(tree, name="good")
    first_url = refused_url if first is None else threaded_fake_proxy(tree, name="bad", faults=first).url
    r = go_env.run("mod", "download", cwd=_main(tmp_path, [lib.key]), goproxy=f"{first_url}{sep}{good.url}")
    assert (r.returncode == 0) is ok, r.stderr
    assert bool(good.requests) is ok


@pytest.mark.timeout(60)
def test_go_waits_on_a_hung_proxy_and_teardown_releases_it(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: MakeThreaded) -> None:
    """The go client has no request timeout of its own; the fake must still stop."""
    lib = Module("example.com/hang/lib", "v1.0.0")
    proxy = threaded_fake_proxy(ModuleTree([lib]), name="hung", faults=Faults(hang=True))
    with pytest.raises(subprocess.TimeoutExpired):
        go_env.run("mod", "download", cwd=_main(tmp_path, [lib.key]), goproxy=proxy.url, timeout=3)
    assert proxy.raw_paths() == ["/example.com/hang/lib/@v/v1.0.0.mod"]
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 5


# -- harness self-checks (no go command needed) ------------------------------

def test_module_artifacts_are_deterministic_and_case_escaped() -> None:
    a = Module("example.com/Upper/Lib", "v1.2.0", requires=[("example.com/x", "v1.0.0")])
    b = Module("example.com/Upper/Lib", "v1.2.0", requires=[("example.com/x", "v1.0.0")])
    assert a.zip == b.zip and a.info == b.info
    assert a.mod == b"module example.com/Upper/Lib\n\ngo 1.16\n\nrequire (\n\texample.com/x v1.0.0\n)\n"
    assert case_escape("github.com/Azure/SDK") == "github.com/!azure/!s!d!k"
    ans = ModuleTree([a]).respond("/example.com/%21upper/%21lib/@v/v1.2.0.mod")
    assert (ans.status, ans.body) == (200, a.mod)
    assert ModuleTree([a]).respond("/example.com/Upper/Lib/@v/list").status == 400


def test_random_dag_has_requested_shape() -> None:
    dag = random_dag(20, 5, seed=3)
    assert len(dag.layers) == 5 and all(dag.layers)
    assert {p for p, _ in dag.expected_zips} == set(dag.tree.paths())


def test_add_ballast_makes_one_zip_big_and_keeps_the_rest() -> None:
    dag = random_dag(6, 2, seed=3)
    key = sorted(dag.expected_zips)[0]
    module = dag.tree[key]
    small, mod, info = module.zip, module.mod, module.info
    assert add_ballast(module, 1 << 20, seed=7) is module
    assert len(module.zip) > 1 << 20 > len(small)
    assert (module.mod, module.info) == (mod, info)
    assert dag.tree.respond(f"/{key[0]}/@v/{key[1]}.zip").body == module.zip
    twin = random_dag(6, 2, seed=3).tree[key]
    assert add_ballast(twin, 1 << 20, seed=7).zip == module.zip       # deterministic


async def test_fake_proxy_faults(fake_proxy: MakeFake) -> None:
    lib = Module("example.com/f/lib", "v1.0.0")
    proxy = await fake_proxy(ModuleTree([lib]), name="f")
    zip_url = f"{proxy.url}/example.com/f/lib/@v/v1.0.0.zip"
    short = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession() as s:
        async with s.get(zip_url) as r:
            assert r.status == 200 and await r.read() == lib.zip
        proxy.set_faults(truncate=True)
        async with s.get(zip_url) as r:
            assert r.content_length == len(lib.zip)
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        proxy.faults = Faults(required_headers={"Authorization": "Bearer x"})
        async with s.get(zip_url) as r:
            assert r.status == 401
        async with s.get(zip_url, headers={"Authorization": "Bearer y"}) as r:
            assert r.status == 403
        async with s.get(zip_url, headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 200
        proxy.faults = Faults(status=503, paths=r"\.zip$")
        async with s.get(zip_url) as r:
            assert r.status == 503
        async with s.get(f"{proxy.url}/example.com/f/lib/@v/list") as r:
            assert r.status == 200 and await r.text() == "v1.0.0\n"
        proxy.faults = Faults(hang=True)
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(zip_url, timeout=short):
                pass
    assert len(proxy.requests) == 8


async def test_fake_proxy_stop_releases_hung_requests(fake_proxy: MakeFake) -> None:
    proxy = await fake_proxy(ModuleTree(), name="h", faults=Faults(hang=True))
    async with aiohttp.ClientSession() as s:
        pending = asyncio.ensure_future(s.get(f"{proxy.url}/x/@v/list"))
        for _ in range(100):
            if proxy.requests:
                break
            await asyncio.sleep(0.02)
        await asyncio.wait_for(proxy.stop(), timeout=5)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, timeout=5)
