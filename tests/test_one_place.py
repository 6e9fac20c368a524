"""One place for each thing: the .info check, a file's identity, "networks or a token"."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from goproxy_router.base.fileid import file_id, stat_id
from goproxy_router.protocol.integrity import info_problem, judge_small_body
from goproxy_router.routing.gate import in_networks, token_accepted
from goproxy_router.storage.disk import DiskCache
from goproxy_router.storage.errors import CacheIntegrityError

BAD_INFOS = [
    (b"<html>rate limited</html>", "not JSON"),
    (b'{"Time":"2021-01-01T00:00:00Z"}', "no Version in the JSON"),
    (b'{"Version":"v1.0.1"}', "Version 'v1.0.1' is not the requested 'v1.0.0'"),
]


@pytest.mark.parametrize(("body", "problem"), BAD_INFOS)
async def test_the_forwarder_and_the_cache_refuse_an_info_with_the_same_words(
        make_cache: Callable[..., DiskCache], body: bytes, problem: str) -> None:
    assert info_problem(body, "v1.0.0") == problem
    assert judge_small_body("info", body, "v1.0.0").problem == problem
    writer = make_cache().writer("example.com/a", "v1.0.0", "info")
    await writer.write(body)
    with pytest.raises(CacheIntegrityError) as refused:
        await writer.commit()
    assert str(refused.value).endswith(f".info: {problem}")


def test_an_info_naming_the_version_asked_for_passes() -> None:
    assert info_problem(b'{"Version":"v1.0.0"}', "v1.0.0") is None
    assert info_problem(b'{"Version":"v1.0.0"}', None) is None


def test_file_id_changes_when_the_file_is_replaced_or_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert stat_id(str(path)) is None
    path.write_bytes(b"one")
    first = stat_id(str(path))
    assert first == file_id(os.stat(path))
    (tmp_path / "g").write_bytes(b"two, longer")
    os.replace(tmp_path / "g", path)
    assert stat_id(str(path)) not in (None, first)


def test_networks_or_a_token() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert in_networks(ipaddress.ip_address("10.1.2.3"), nets)
    assert in_networks(ipaddress.ip_address("fd00::1"), nets)
    assert not in_networks(ipaddress.ip_address("192.0.2.1"), nets)
    assert not in_networks(None, nets)
    assert not in_networks(ipaddress.ip_address("10.1.2.3"), ())
    assert token_accepted(b"b", (b"a", b"b"))
    assert not token_accepted(b"c", (b"a", b"b"))
    assert not token_accepted(b"a", ())
