"""Test harness shared by every test: generated Go module trees and fake
GOPROXY upstreams.

``modtree`` builds exact proxy artifacts (.info/.mod/.zip) in memory;
``fakeproxy`` serves them over HTTP with injectable faults. Nothing here
imports the router, so the harness can check the router independently.
"""

from tests.support.fakeproxy import (
    FakeProxy,
    Faults,
    RefusedPort,
    RequestRecord,
    ThreadedFakeProxy,
)
from tests.support.modtree import (
    Dag,
    Module,
    ModuleTree,
    ProxyAnswer,
    add_ballast,
    case_escape,
    case_unescape,
    download_cache_paths,
    mvs,
    random_dag,
    reachable,
    write_main_module,
)

__all__ = [
    "Dag",
    "FakeProxy",
    "Faults",
    "Module",
    "ModuleTree",
    "ProxyAnswer",
    "RefusedPort",
    "RequestRecord",
    "ThreadedFakeProxy",
    "add_ballast",
    "case_escape",
    "case_unescape",
    "download_cache_paths",
    "mvs",
    "random_dag",
    "reachable",
    "write_main_module",
]
