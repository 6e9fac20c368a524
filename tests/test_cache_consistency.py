"""Inconsistent upstream artifacts: a zip whose go.mod differs from the .mod is counted."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.support import Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake

MOD = Module("example.com/lib", "v1.0.0")


def mismatches(metrics_text: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "goproxy_checksum_mismatches":
            return family.samples[0].value
    raise AssertionError("goproxy_checksum_mismatches is not exported")


async def test_zip_go_mod_differing_from_the_mod_is_counted(edge: MakeEdge,
                                                            fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up", faults=Faults(
        corrupt=b"module example.com/lib\n\ngo 1.99\n", paths=r"\.mod$"))
    client = await edge({"upstreams": {"up": {"url": up.url}},
                         "routes": [{"name": "r", "match": ["*"], "upstreams": ["up"]}]})
    assert mismatches(await (await client.get("/metrics")).text()) == 0
    assert (await client.get("/example.com/lib/@v/v1.0.0.mod")).status == 200
    assert (await client.get("/example.com/lib/@v/v1.0.0.zip")).status == 200
    # The check runs once the zip is committed, just after its last byte went out.
    for _ in range(100):
        if mismatches(await (await client.get("/metrics")).text()) == 1:
            break
        await asyncio.sleep(0.02)
    assert mismatches(await (await client.get("/metrics")).text()) == 1


async def test_consistent_artifacts_are_not_counted(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge({"upstreams": {"up": {"url": up.url}},
                         "routes": [{"name": "r", "match": ["*"], "upstreams": ["up"]}]})
    for ext in ("zip", "mod"):
        assert (await client.get(f"/example.com/lib/@v/v1.0.0.{ext}")).status == 200
    assert mismatches(await (await client.get("/metrics")).text()) == 0
