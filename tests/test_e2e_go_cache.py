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
