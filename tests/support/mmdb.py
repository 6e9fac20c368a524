"""Real MaxMind DB files for tests, generated with mmdb-writer instead of checked-in binaries.

Records have the shape of MaxMind's GeoLite2 data (continent, country,
registered_country, and city for City databases; geoname ids as uint32),
so geoip2's model classes parse them exactly as they parse the real files.
Like the rest of the harness this imports nothing from the router: the
continents written here come from the small table below, not from the code
under test.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from os import PathLike
from typing import Any

from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

# Real GeoNames names, continents and ids for the countries tests use; any
# other code gets its code as name, no continent and a stand-in id.
_COUNTRIES: Mapping[str, tuple[str, str, int]] = {
    "AU": ("Australia", "OC", 2077456),
    "BR": ("Brazil", "SA", 3469034),
    "CN": ("China", "AS", 1814991),
    "DE": ("Germany", "EU", 2921044),
    "FR": ("France", "EU", 3017382),
    "JP": ("Japan", "AS", 1861060),
    "US": ("United States", "NA", 6252001),
    "ZA": ("South Africa", "AF", 953987),
}
_CONTINENTS: Mapping[str, tuple[str, int]] = {
    "AF": ("Africa", 6255146),
    "AN": ("Antarctica", 6255152),
    "AS": ("Asia", 6255147),
    "EU": ("Europe", 6255148),
    "NA": ("North America", 6255149),
    "OC": ("Oceania", 6255151),
    "SA": ("South America", 6255150),
}

Continents = Mapping[str, str | None]

_PAD_CHUNK = 8 * 1024 * 1024       # one padding string; the format's limit is ~16 MiB


def write_country_db(path: str | PathLike[str], networks: Mapping[str, str],
                     database_type: str = "GeoLite2-Country", *, ip_version: int = 6,
                     continents: Continents | None = None, padding: int = 0) -> None:
    """Write a Country database mapping each CIDR to a country code.

    ``continents`` overrides the continent written for a country (None: no
    continent in its records), to test records that lack or contradict one.
    ``padding`` adds about that many bytes of records under 198.18.0.0/15
    (benchmarking space, never a client's country), for a file the size of a
    real City database that is still written in a fraction of a second.
    """
    records = {cidr: _country_record(iso, continents) for cidr, iso in networks.items()}
    for i in range(-(-padding // _PAD_CHUNK)):
        size = min(_PAD_CHUNK, padding - i * _PAD_CHUNK)
        records[f"198.18.{i}.0/24"] = {"padding": f"{i}:".ljust(size, "x")}   # distinct: not deduplicated
    _write(path, database_type, ip_version, records)


def write_city_db(path: str | PathLike[str], networks: Mapping[str, tuple[str, str]],
                  database_type: str = "GeoLite2-City", *, ip_version: int = 6,
                  continents: Continents | None = None) -> None:
    """Write a City database mapping each CIDR to (country code, English city name)."""
    records = {}
    for cidr, (iso, city) in networks.items():
        records[cidr] = _country_record(iso, continents) | {
            "city": {"geoname_id": MmdbU32(_stand_in_id(city)), "names": {"en": city}},
        }
    _write(path, database_type, ip_version, records)


def _write(path: str | PathLike[str], database_type: str, ip_version: int,
           records: Mapping[str, dict[str, Any]]) -> None:
    """IPv6 databases hold IPv4 networks under ::/96, as MaxMind's own files do."""
    writer = MMDBWriter(ip_version=ip_version, database_type=database_type, languages=["en"],
                        description="goproxy-router test data", ipv4_compatible=ip_version == 6)
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))


def _country_record(iso: str, continents: Continents | None) -> dict[str, Any]:
    name, continent, geoname_id = _COUNTRIES.get(iso) or (iso, None, _stand_in_id(iso))
    if continents is not None and iso in continents:
        continent = continents[iso]
    country = {"geoname_id": MmdbU32(geoname_id), "iso_code": iso, "names": {"en": name}}
    record: dict[str, Any] = {"country": country, "registered_country": country}
    if continent is not None:
        continent_name, continent_id = _CONTINENTS[continent]
        record["continent"] = {"code": continent, "geoname_id": MmdbU32(continent_id),
                               "names": {"en": continent_name}}
    return record


def _stand_in_id(name: str) -> int:
    """A stable uint32 id for names without a real GeoNames id here."""
    return zlib.crc32(name.encode())
