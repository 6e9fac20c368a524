"""Acceptance: the router's cache carries a whole graph for the real go command.

1. ``go mod download`` of a generated module graph through the router (a
   subprocess) fills the router's cache from two fake upstreams.
2. Every upstream is stopped. A second ``go mod download`` with a fresh
   GOMODCACHE and a fresh main module gets the whole graph again, from the
   router's cache alone: exactly the same set, byte for byte, and every
   request the router logged was a cache hit. (Every version is pinned in
   go.mod, so no list/@latest query is needed.)
3. The router is stopped too: the cache directory, in Go's own download-cache
   layout, serves the same graph as ``GOPROXY=file://<cache dir>``.

And ``go get m@latest`` with ``GOPROXY=file://<cache dir>`` (fresh GOPATH,
every upstream and the router stopped) resolves the highest version the
cache holds, from the ``@v/list`` the cache keeps: after ``go get m@latest``
through the edge (two workers), and after only ``go mod download m@v``.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GoEnv, RouterProcess
from tests.support import (
    Module,
    ModuleTree,
    ThreadedFakeProxy,
    case_escape,
    download_cache_paths,
    random_dag,
    write_main_module,
)


def fresh_go_env(root: Path) -> GoEnv:
    (root / "home").mkdir(parents=True)
    return GoEnv(root=root)


def request_lines(stderr: str) -> list[dict[str, object]]:
    """The router's access log lines (one JSON object per request)."""
    out = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "request":
            out.append(entry)
    return out


def assert_refused(url: str) -> None:
    try:
        urllib.request.urlopen(url + "/", timeout=2).close()
    except urllib.error.HTTPError as e:
        pytest.fail(f"{url} still answers ({e.code}) after stop")
    except OSError:
        return
    pytest.fail(f"{url} still answers after stop")


def check_downloads(env: GoEnv, dag_zips: set[str], dag_mods: set[str], tree_zip: dict[str, bytes],
                    what: str) -> None:
    assert env.downloaded("zip") == dag_zips, what
    assert env.downloaded("mod") == dag_mods, what
    for rel, body in tree_zip.items():
        assert (env.download_dir / rel).read_bytes() == body, f"{what}: {rel} differs"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_go_downloads_the_graph_again_from_the_router_cache_with_every_upstream_stopped(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    names = [f"example.com/cached/m{i:02d}" for i in range(17)] + ["example.com/Cached/Upper"]
    dag = random_dag(18, 4, seed=5152, paths=names)
    a = threaded_fake_proxy(dag.tree, name="a")
    b = threaded_fake_proxy(dag.tree, name="b")
    cache_dir = tmp_path / "router-cache"
    router = router_process({
        "upstreams": {"a": {"url": a.url}, "b": {"url": b.url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["a", "b"]}],
        "probes": {"enabled": False},
        "cache": {"dir": str(cache_dir)},
    })

    zips = download_cache_paths(dag.expected_zips, "zip")
    mods = download_cache_paths(dag.expected_mods, "mod")
    tree_zip = {f"{case_escape(p)}/@v/{case_escape(v)}.zip": dag.tree[(p, v)].zip
                for p, v in dag.expected_zips}
    assert len(zips) == 18 and len(mods) > len(zips)    # MVS had older versions to skip

    # 1. Through the router, filling its cache.
    main1 = write_main_module(tmp_path / "main1", "example.com/main", dag.roots)
    r = go_env.run("mod", "download", "-x", cwd=main1, goproxy=router.url, timeout=60)
    assert r.returncode == 0, f"first download failed:\n{r.stderr[-4000:]}\n{router.stderr()[-3000:]}"
    check_downloads(go_env, zips, mods, tree_zip, "first download")
    asked = len(a.requests) + len(b.requests)
    assert asked > 0
    for rel in zips | mods:                     # the router's cache holds what go fetched
        assert (cache_dir / rel).read_bytes() == (go_env.download_dir / rel).read_bytes(), rel
    logged_before = len(request_lines(router.stderr()))

    # 2. Every upstream stopped: a fresh GOMODCACHE and main module, from the cache alone.
    a.stop()
    b.stop()
    assert_refused(a.url)
    assert_refused(b.url)
    second = fresh_go_env(tmp_path / "goenv2")
    main2 = write_main_module(tmp_path / "main2", "example.com/main", dag.roots)
    r = second.run("mod", "download", "-x", cwd=main2, goproxy=router.url, timeout=60)
    assert r.returncode == 0, (f"download from the cache failed:\n{r.stderr[-4000:]}\n"
                               f"{router.stderr()[-3000:]}")
    check_downloads(second, zips, mods, tree_zip, "download from the router's cache")
    lines = request_lines(router.stderr())[logged_before:]
    assert len(lines) >= len(zips) + len(mods), len(lines)
    assert all(line["cache"] == "hit" and line["status"] == 200 for line in lines), \
        [line for line in lines if line["cache"] != "hit" or line["status"] != 200][:5]
    assert len(a.requests) + len(b.requests) == asked
    # The go.sum the second run wrote matches the first: the very same bytes.
    assert (main2 / "go.sum").read_text() == (main1 / "go.sum").read_text()

    # 3. The router gone too: its cache directory is a GOPROXY of its own.
    router.stop()
    assert router.proc.returncode is not None
    assert not list(cache_dir.rglob(".tmp-*"))
    third = fresh_go_env(tmp_path / "goenv3")
    main3 = tmp_path / "main3"
    shutil.copytree(main1, main3)               # with go.sum: go verifies every hash
    r = third.run("mod", "download", "-x", cwd=main3, goproxy=cache_dir.as_uri(), timeout=60)
    assert r.returncode == 0, f"file:// download failed:\n{r.stderr[-4000:]}"
    check_downloads(third, zips, mods, tree_zip, "download via file://")
    r = third.run("build", "./...", cwd=main3, goproxy="off", timeout=60)
    assert r.returncode == 0, f"build of the graph failed:\n{r.stderr[-4000:]}"


# -- @latest from the cache directory --------------------------------------------------------

LIB = "example.com/latest/Lib"          # upper case: escaped on disk
DEP = "example.com/latest/dep"
PSEUDO = "example.com/latest/untagged"
PSEUDO_VERSION = "v0.0.0-20240102030405-0123456789ab"


def latest_tree() -> ModuleTree:
    """Lib's highest release is v1.10.0 (v1.9.0 is higher as text, v1.11.0-rc.1 is a
    pre-release) and needs dep; ``untagged`` has only a pseudo-version."""
    return ModuleTree([
        Module(DEP, "v0.1.0"), Module(DEP, "v0.2.0"),
        Module(LIB, "v1.0.0"), Module(LIB, "v1.1.0"), Module(LIB, "v1.9.0"),
        Module(LIB, "v1.10.0", requires=[(DEP, "v0.2.0")]),
        Module(LIB, "v1.11.0-rc.1", requires=[(DEP, "v0.2.0")]),
        Module(PSEUDO, PSEUDO_VERSION),
    ])


def required(main: Path) -> dict[str, str]:
    """module path -> version in main's go.mod ``require`` lines."""
    out = {}
    for line in (main / "go.mod").read_text().splitlines():
        words = line.replace("require", " ").split()
        if len(words) >= 2 and words[0] in (LIB, DEP, PSEUDO):
            out[words[0]] = words[1]
    return out


def go_get_latest_offline(tmp_path: Path, cache_dir: Path, name: str, *modules: str) -> Path:
    """``go get m@latest`` for each module, with GOPROXY=file://<cache dir>, a fresh
    GOPATH/GOMODCACHE and a fresh main module; returns the main module."""
    env = fresh_go_env(tmp_path / f"goenv-{name}")
    main = write_main_module(tmp_path / f"main-{name}", "example.com/main", [])
    args = [f"{m}@latest" for m in modules]
    r = env.run("get", *args, cwd=main, goproxy=cache_dir.as_uri(), timeout=60)
    assert r.returncode == 0, f"file:// go get {' '.join(args)} failed:\n{r.stderr[-4000:]}"
    return main


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_go_get_latest_works_from_the_cache_dir_after_go_get_through_the_edge(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    up = threaded_fake_proxy(latest_tree(), name="up")
    cache_dir = tmp_path / "router-cache"
    router = router_process({          # two workers: two processes keep the lists together
        "upstreams": {"up": {"url": up.url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
        "probes": {"enabled": False},
        "cache": {"dir": str(cache_dir)},
    }, extra_args=["--workers", "2"])

    main = write_main_module(tmp_path / "main1", "example.com/main", [])
    # Older versions first (pinned, so no list is asked), then @latest: list, .info, .mod, .zip.
    r = go_env.run("mod", "download", f"{LIB}@v1.0.0", f"{LIB}@v1.1.0", cwd=main,
                   goproxy=router.url, timeout=60)
    assert r.returncode == 0, f"download through the edge failed:\n{r.stderr[-4000:]}"
    r = go_env.run("get", f"{LIB}@latest", f"{PSEUDO}@latest", cwd=main, goproxy=router.url,
                   timeout=60)
    assert r.returncode == 0, f"go get through the edge failed:\n{r.stderr[-4000:]}"
    assert required(main) == {LIB: "v1.10.0", PSEUDO: PSEUDO_VERSION}
    assert any(rec.raw_path == f"/{case_escape(LIB)}/@v/list" for rec in up.requests)

    # Every upstream and the router gone: the cache directory alone answers @latest.
    up.stop()
    router.stop()
    assert_refused(up.url)
    lib_list = cache_dir / case_escape(LIB) / "@v" / "list"
    assert lib_list.read_text() == "v1.0.0\nv1.1.0\nv1.10.0\n"   # what it holds, not upstream's
    assert not list(cache_dir.rglob(".tmp-*"))
    offline = go_get_latest_offline(tmp_path, cache_dir, "after-get", LIB, PSEUDO)
    assert required(offline) == {LIB: "v1.10.0", PSEUDO: PSEUDO_VERSION}
    env = fresh_go_env(tmp_path / "goenv-build")
    r = env.run("build", "./...", cwd=offline, goproxy=cache_dir.as_uri(), timeout=60)
    assert r.returncode == 0, f"build from file:// failed:\n{r.stderr[-4000:]}"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_go_get_latest_works_from_the_cache_dir_after_only_go_mod_download(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    up = threaded_fake_proxy(latest_tree(), name="up")
    cache_dir = tmp_path / "router-cache"
    router = router_process({
        "upstreams": {"up": {"url": up.url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
        "probes": {"enabled": False},
        "cache": {"dir": str(cache_dir)},
    })
    main = write_main_module(tmp_path / "main1", "example.com/main", [])
    r = go_env.run("mod", "download", f"{LIB}@v1.1.0", f"{LIB}@v1.0.0", cwd=main,
                   goproxy=router.url, timeout=60)
    assert r.returncode == 0, f"download through the edge failed:\n{r.stderr[-4000:]}"
    assert not any(rec.raw_path.endswith(("/@v/list", "/@latest")) for rec in up.requests)

    up.stop()
    router.stop()
    # Never asked for a list, the cache still lists what it holds: the highest is v1.1.0.
    offline = go_get_latest_offline(tmp_path, cache_dir, "after-download", LIB)
    assert required(offline) == {LIB: "v1.1.0"}
