"""GeoIP: client address → country and continent, from real MaxMind DB files generated per test."""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import maxminddb
import pytest

from goproxy_router.routing.countries import COUNTRY_CONTINENT, continent_of
from goproxy_router.routing.geo import UNKNOWN, GeoDatabase, IPAddress, Location
from tests.support.mmdb import write_city_db, write_country_db

TINY = 0.01          # check interval for reload tests
PATIENCE = 5.0       # upper bound on any wait

NETWORKS = {
    "36.96.0.0/11": "CN", "240e::/20": "CN",
    "5.144.0.0/14": "DE", "2003::/19": "DE",
    "8.0.0.0/9": "US", "2600::/12": "US",
    "177.0.0.0/8": "BR", "2804::/16": "BR",
    # Listed on purpose: private space must stay unknown even when a database maps it.
    "10.0.0.0/8": "US", "192.168.0.0/16": "US", "fc00::/7": "US",
    "127.0.0.0/8": "US", "169.254.0.0/16": "US",
}
CITIES = {"CN": "Beijing", "DE": "Frankfurt am Main", "US": "Ashburn", "BR": "São Paulo"}

CN = Location("CN", "AS")
DE = Location("DE", "EU")
CN_V4 = ipaddress.ip_address("36.96.1.1")


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.fixture(params=["country", "city"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GeoDatabase]:
    """The same networks as a Country and as a City database."""
    path = tmp_path / f"{request.param}.mmdb"
    if request.param == "country":
        write_country_db(path, NETWORKS)
    else:
        write_city_db(path, {cidr: (iso, CITIES[iso]) for cidr, iso in NETWORKS.items()})
    db = GeoDatabase(str(path))
    yield db
    db.close()


def wait_for(db: GeoDatabase, address: IPAddress, expected: Location) -> None:
    """Look up until the answer is the expected one; bounded."""
    deadline = time.monotonic() + PATIENCE
    while (got := db.lookup(address)) != expected:
        assert time.monotonic() < deadline, f"{address} still resolves to {got}, want {expected}"
        time.sleep(TINY / 2)


def wait_for_warning(db: GeoDatabase, caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Keep looking up (which drives the reload check) until a warning containing text is logged."""
    deadline = time.monotonic() + PATIENCE
    while not any(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING):
        assert time.monotonic() < deadline, f"no warning containing {text!r}"
        db.lookup(CN_V4)
        time.sleep(TINY / 2)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "router.geo" and r.levelno == logging.WARNING]


def look_up_across_intervals(db: GeoDatabase, address: IPAddress, times: int = 5) -> set[Location]:
    """Answers seen over several check intervals, so any reload would have happened."""
    seen = set()
    for _ in range(times):
        time.sleep(TINY * 2)
        seen.add(db.lookup(address))
    return seen


# -- lookups ------------------------------------------------------------------

@pytest.mark.parametrize(("address", "expected"), [
    ("36.96.1.1", CN), ("240e:1::1", CN),
    ("5.145.2.3", DE), ("2003:e1::1", DE),
    ("8.8.8.8", Location("US", "NA")), ("2600:1f18::1", Location("US", "NA")),
    ("177.10.20.30", Location("BR", "SA")), ("2804:14c::1", Location("BR", "SA")),
    ("::ffff:36.96.1.1", CN),                 # IPv4-mapped IPv6 is the IPv4 client
])
def test_lookup_country_and_continent(database: GeoDatabase, address: str, expected: Location) -> None:
    assert database.lookup(ip(address)) == expected
    assert database.lookup(ip(address)) == expected          # and again, from the cache


@pytest.mark.parametrize("address", ["1.1.1.1", "2a00:1450::1", "100.1.2.3"])
def test_address_not_in_database_is_unknown(database: GeoDatabase, address: str) -> None:
    assert database.lookup(ip(address)) is UNKNOWN


@pytest.mark.parametrize("address", [
    "10.1.2.3", "192.168.1.1", "172.16.5.5", "100.64.0.1", "169.254.1.1", "127.0.0.1",
    "fc00::1", "fd12:3456::1", "::1", "fe80::1", "0.0.0.0", "::ffff:10.1.2.3",
])
def test_private_loopback_and_reserved_addresses_are_unknown(database: GeoDatabase, address: str) -> None:
    assert database.lookup(ip(address)) is UNKNOWN


def test_no_address_is_unknown(database: GeoDatabase) -> None:
    assert database.lookup(None) is UNKNOWN


def test_no_database_is_unknown() -> None:
    db = GeoDatabase(None)
    assert db.lookup(CN_V4) is UNKNOWN
    assert db.lookup(None) is UNKNOWN


def test_closed_database_is_unknown(database: GeoDatabase) -> None:
    assert database.lookup(CN_V4) == CN
    database.close()
    assert database.lookup(CN_V4) is UNKNOWN


def test_ipv4_only_database_answers_ipv6_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "v4.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"}, ip_version=4)
    db = GeoDatabase(str(path))
    assert db.lookup(CN_V4) == CN
    assert db.lookup(ip("240e::1")) is UNKNOWN


def test_unsupported_database_type_is_unknown_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "asn.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"}, database_type="GeoLite2-ASN")
    with caplog.at_level(logging.WARNING, logger="router.geo"):
        db = GeoDatabase(str(path))
        assert db.lookup(CN_V4) is UNKNOWN
    assert any("neither a Country nor a City" in message for message in warnings(caplog))


def test_damaged_data_section_answers_unknown_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "damaged.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN", "5.144.0.0/14": "DE"})
    with maxminddb.open_database(str(path)) as reader:
        metadata = reader.metadata()
        data_start = metadata.node_count * metadata.record_size // 4 + 16   # tree, then 16 zero bytes
    content = bytearray(path.read_bytes())
    data_end = content.rindex(b"\xab\xcd\xefMaxMind.com")
    content[data_start:data_end] = b"\xff" * (data_end - data_start)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="router.geo"):
        db = GeoDatabase(str(path))
        assert db.lookup(CN_V4) is UNKNOWN
        assert db.lookup(ip("5.145.2.3")) is UNKNOWN
    assert len([m for m in warnings(caplog) if "lookup" in m]) == 1


# -- continents -----------------------------------------------------------------

def test_continent_is_derived_from_the_table_when_the_record_has_none(tmp_path: Path) -> None:
    path = tmp_path / "no-continent.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN", "5.144.0.0/14": "DE", "41.0.0.0/11": "ZA"},
                     continents={"CN": None, "DE": None, "ZA": None})
    db = GeoDatabase(str(path))
    assert db.lookup(CN_V4) == CN
    assert db.lookup(ip("5.145.2.3")) == DE
    assert db.lookup(ip("41.1.1.1")) == Location("ZA", "AF")


def test_record_continent_wins_over_the_table(tmp_path: Path) -> None:
    path = tmp_path / "contradicting.mmdb"
    write_country_db(path, {"5.144.0.0/14": "DE"}, continents={"DE": "AS"})
    assert GeoDatabase(str(path)).lookup(ip("5.145.2.3")) == Location("DE", "AS")


def test_country_unknown_to_the_table_has_no_continent(tmp_path: Path) -> None:
    path = tmp_path / "odd.mmdb"
    write_country_db(path, {"36.96.0.0/11": "XY"})
    assert GeoDatabase(str(path)).lookup(CN_V4) == Location("XY", None)


@pytest.mark.parametrize(("country", "continent"), [
    ("CN", "AS"), ("DE", "EU"), ("US", "NA"), ("BR", "SA"), ("AU", "OC"), ("ZA", "AF"),
    ("AQ", "AN"), ("RU", "EU"), ("TR", "AS"), ("EG", "AF"), ("de", "EU"),
])
def test_continent_of(country: str, continent: str) -> None:
    assert continent_of(country) == continent


@pytest.mark.parametrize("country", [None, "", "ZZ", "XX", "EUR"])
def test_continent_of_unknown_is_none(country: str | None) -> None:
    assert continent_of(country) is None


def test_country_table_covers_every_assigned_code() -> None:
    assert len(COUNTRY_CONTINENT) == 250                    # 249 ISO 3166-1 codes + XK (Kosovo)
    assert all(len(code) == 2 and code.isupper() for code in COUNTRY_CONTINENT)
    assert set(COUNTRY_CONTINENT.values()) == {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}


# -- reloading ------------------------------------------------------------------

def test_reopens_after_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"})
    db = GeoDatabase(str(path), check_interval=TINY)
    assert db.lookup(CN_V4) == CN
    write_country_db(tmp_path / "geo.mmdb.new", {"36.96.0.0/11": "DE"})
    os.replace(tmp_path / "geo.mmdb.new", path)
    wait_for(db, CN_V4, DE)                  # the cached CN answer is dropped on reopen


def test_reopens_after_in_place_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"})
    db = GeoDatabase(str(path), check_interval=TINY)
    assert db.lookup(CN_V4) == CN
    inode = path.stat().st_ino
    write_country_db(path, {"36.96.0.0/11": "DE", "8.0.0.0/9": "US"})
    assert path.stat().st_ino == inode
    wait_for(db, CN_V4, DE)
    assert db.lookup(ip("8.8.8.8")) == Location("US", "NA")


def test_checks_the_file_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"})
    db = GeoDatabase(str(path), check_interval=3600)
    write_country_db(tmp_path / "geo.mmdb.new", {"36.96.0.0/11": "DE"})
    os.replace(tmp_path / "geo.mmdb.new", path)
    assert look_up_across_intervals(db, CN_V4) == {CN}


def test_corrupt_replacement_keeps_the_old_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"})
    db = GeoDatabase(str(path), check_interval=TINY)
    assert db.lookup(CN_V4) == CN
    with caplog.at_level(logging.WARNING, logger="router.geo"):
        (tmp_path / "geo.mmdb.new").write_bytes(b"this is not a MaxMind database" * 100)
        os.replace(tmp_path / "geo.mmdb.new", path)
        wait_for_warning(db, caplog, "cannot be opened")
        assert look_up_across_intervals(db, CN_V4) == {CN}
    assert len(warnings(caplog)) == 1                        # once, not at every check
    write_country_db(path, {"36.96.0.0/11": "DE"})            # fixed later: picked up
    wait_for(db, CN_V4, DE)


def test_vanished_file_keeps_the_old_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {"36.96.0.0/11": "CN"})
    db = GeoDatabase(str(path), check_interval=TINY)
    assert db.lookup(CN_V4) == CN
    with caplog.at_level(logging.WARNING, logger="router.geo"):
        path.unlink()
        wait_for_warning(db, caplog, "missing")
        assert look_up_across_intervals(db, CN_V4) == {CN}
    assert len(warnings(caplog)) == 1


def test_missing_file_at_startup_is_unknown_until_it_appears(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "geo.mmdb"
    with caplog.at_level(logging.WARNING, logger="router.geo"):
        db = GeoDatabase(str(path), check_interval=TINY)
        assert look_up_across_intervals(db, CN_V4) == {UNKNOWN}
    assert len(warnings(caplog)) == 1
    write_country_db(path, {"36.96.0.0/11": "CN"})
    wait_for(db, CN_V4, CN)
