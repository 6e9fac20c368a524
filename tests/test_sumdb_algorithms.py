"""The checksum-database algorithms (protocol/dirhash, note, tlog) against the Go tools.

The values come from the Go team's own code: tests/support/sumdb/ (golang.org/x/mod's
dirhash, note, tlog and sumdb server) emits vectors and serves a real signed
database on 127.0.0.1, and the real go command verifies modules against it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from goproxy_router.protocol.dirhash import DirhashError, hash1, hash_go_mod, hash_zip
from goproxy_router.protocol.note import NoteError, key_hash, open_note, parse_verifier_key
from goproxy_router.protocol.tlog import (
    Tile,
    TlogError,
    Tree,
    check_record,
    check_tree,
    parse_lookup,
    parse_tile_path,
    parse_tree,
    record_hash,
    record_proof,
    record_proof_tiles,
    tree_hash,
    tree_proof,
    tree_proof_tiles,
)
from tests.conftest import GoEnv
from tests.support import Module, ModuleTree, ThreadedFakeProxy, add_ballast, random_dag, write_main_module
from tests.support.sumdb import SumdbServer, build_sumdbtest, go_vectors, write_modules


def _modules() -> list[Module]:
    """Varied modules: requirements, upper case (escaped paths), binary and non-ASCII files."""
    dag = random_dag(9, 3, seed=1414, prefix="example.com/sumdb")
    extra = [
        Module("example.com/Upper/Case", "v1.0.0-Pre.1", files={"docs/ünïcode.txt": "héllo\n"}),
        add_ballast(Module("example.com/big", "v0.2.0"), size=300_000, seed=7),
        Module("example.com/empty/v2", "v2.0.0", files={"empty.txt": b"", "sub/dir/x.go": "package dir\n"}),
        Module("example.com/incompat", "v3.1.0+incompatible"),
    ]
    return [*dag.tree, *extra]


@pytest.fixture(scope="session")
def sumdb_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sumdbtest(tmp_path_factory.mktemp("sumdbtest"))


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return _modules()


@pytest.fixture(scope="module")
def module_dir(modules: list[Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_modules(tmp_path_factory.mktemp("modules"), modules)


@pytest.fixture(scope="module")
def vectors(sumdb_binary: Path, module_dir: Path) -> dict[str, Any]:
    return go_vectors(sumdb_binary, module_dir)


@pytest.fixture
def sumdb_server(sumdb_binary: Path, module_dir: Path, tmp_path: Path) -> Iterator[SumdbServer]:
    with SumdbServer(sumdb_binary, module_dir, tmp_path) as server:
        yield server


# --- dirhash ------------------------------------------------------------------------------

def test_h1_of_zips_and_go_mods_equals_the_go_tools(modules: list[Module], vectors: dict[str, Any]) -> None:
    assert len(vectors["h1"]) == 2 * len(modules)
    for m in modules:
        assert hash_zip(m.zip) == vectors["h1"][f"{m.path} {m.version}"], m.key
        assert hash_zip(io.BytesIO(m.zip)) == vectors["h1"][f"{m.path} {m.version}"], m.key
        assert hash_go_mod(m.mod) == vectors["h1"][f"{m.path} {m.version}/go.mod"], m.key


def test_h1_refusals() -> None:
    with pytest.raises(DirhashError, match="newline"):
        hash1([("a\nb", b"")])
    with pytest.raises(DirhashError, match="twice"):
        hash1([("a", b"1"), ("a", b"2")])
    with pytest.raises(DirhashError, match="cannot read the zip"):
        hash_zip(b"PK not a zip")
    assert hash1([("b", b"2"), ("a", b"1")]) == hash1([("a", b"1"), ("b", b"2")])


# --- notes --------------------------------------------------------------------------------

def test_note_from_go_verifies_and_tampering_is_refused(vectors: dict[str, Any]) -> None:
    verifier = parse_verifier_key(vectors["vkey"])
    signed = vectors["note"].encode()
    note = open_note(signed, verifier)
    assert parse_tree(note.text) == Tree(vectors["tree_size"], base64.b64decode(vectors["tree_hash"]))

    size = vectors["tree_size"]
    tampered = signed.replace(f"\n{size}\n".encode(), f"\n{size + 1}\n".encode())
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(tampered, verifier)
    with pytest.raises(NoteError, match="malformed note"):
        open_note(signed.replace(b"\n\n", b"\n"), verifier)
    with pytest.raises(NoteError, match="malformed note"):
        open_note(signed + b"trailing", verifier)


def _key_for(name: str) -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    encoded = b"\x01" + private.public_key().public_bytes_raw()
    return private, f"{name}+{key_hash(name, encoded):08x}+{base64.b64encode(encoded).decode()}"


def test_note_wrong_key_and_bad_keys_are_refused(vectors: dict[str, Any]) -> None:
    name = vectors["vkey"].split("+")[0]
    private, other = _key_for(name)
    with pytest.raises(NoteError, match="not signed by"):
        open_note(vectors["note"].encode(), parse_verifier_key(other))

    # A note this test signs with its own key: accepted by that key, with both signatures.
    text = b"go.sum database tree\n1\n" + base64.b64encode(bytes(32)) + b"\n"
    verifier = parse_verifier_key(other)
    sig = base64.b64encode(verifier.key_hash.to_bytes(4, "big") + private.sign(text)).decode()
    signed = text + f"\n\u2014 {name} {sig}\n".encode()
    assert open_note(signed, verifier).text == text.decode()
    with pytest.raises(NoteError, match="not signed by"):
        open_note(signed, parse_verifier_key(vectors["vkey"]))

    vkey = vectors["vkey"]
    for bad, why in [("nameonly", "<name>"), (vkey.replace("+", "+0", 1)[:-1], "hash"),
                     (f"other+{vkey.split('+', 1)[1]}", "does not match"),
                     (vkey[:-4] + "!!!!", "base64")]:
        with pytest.raises(NoteError, match=why):
            parse_verifier_key(bad)


# --- tlog ---------------------------------------------------------------------------------

def test_tile_paths() -> None:
    assert Tile(3, 4, 1234067, 1).path == "tile/3/4/x001/x234/067.p/1"
    assert Tile(3, 4, 1234067, 8).path == "tile/3/4/x001/x234/067"
    assert Tile(8, -1, 5, 256).path == "tile/8/data/005"
    for path in ["tile/3/4/x001/x234/067.p/1", "tile/8/0/000.p/17", "tile/8/data/x001/000", "tile/2/1/000"]:
        assert parse_tile_path(path).path == path
    for bad in ["tile/8/0/1", "tile/8/0/000.p/256", "tile/8/0/x000/001", "tile/0/0/000",
                "tile/8/0/001/002", "tile/8/-1/000", "tiles/8/0/000", "tile/8/0/000.p/0"]:
        with pytest.raises(TlogError, match="malformed tile path"):
            parse_tile_path(bad)


def _tiles(vectors: dict[str, Any], height: int) -> dict[Tile, bytes]:
    return {parse_tile_path(p): base64.b64decode(d) for p, d in vectors["tiles"].items()
            if p.startswith(f"tile/{height}/")}


def test_tree_hash_and_proofs_equal_the_go_tools(vectors: dict[str, Any]) -> None:
    tree = Tree(vectors["tree_size"], base64.b64decode(vectors["tree_hash"]))
    records = vectors["records"]
    assert tree_hash([record_hash(r["record"].encode()) for r in records]) == tree.hash
    for height in (2, 8):            # height 2: hashes rehashed across several tile levels
        tiles = _tiles(vectors, height)
        for r in records:
            assert set(record_proof_tiles(tree.size, r["index"], height)) <= set(tiles)
            proof = record_proof(tree.size, r["index"], tiles, height)
            assert [base64.b64encode(h).decode() for h in proof] == r["proof"]
            check_record(proof, tree, r["index"], record_hash(r["record"].encode()))
        old = Tree(vectors["old_size"], base64.b64decode(vectors["old_hash"]))
        assert set(tree_proof_tiles(tree.size, old.size, height)) <= set(tiles)
        proof = tree_proof(tree.size, old.size, tiles, height)
        assert [base64.b64encode(h).decode() for h in proof] == vectors["tree_proof"]
        check_tree(proof, tree, old)
        with pytest.raises(TlogError, match="does not extend"):
            check_tree(proof, tree, Tree(old.size, bytes(32)))
        with pytest.raises(TlogError, match="consistency proof"):
            check_tree(proof[:-1], tree, old)

    r = records[3]
    proof = [base64.b64decode(h) for h in r["proof"]]
    with pytest.raises(TlogError, match="not in the signed tree"):
        check_record(proof, tree, r["index"], record_hash(r["record"].encode() + b"x"))
    with pytest.raises(TlogError, match="too long"):
        check_record([*proof, bytes(32)], tree, r["index"], record_hash(r["record"].encode()))
    with pytest.raises(TlogError, match="not in a tree"):
        check_record(proof, tree, tree.size, record_hash(b""))


def test_tree_note_parsing() -> None:
    h = base64.b64encode(bytes(range(32))).decode()
    assert parse_tree(f"go.sum database tree\n12\n{h}\nextra\n") == Tree(12, bytes(range(32)))
    for bad in [f"go.sum database tree\n012\n{h}\n", f"go.sum database tree\n-1\n{h}\n",
                "go.sum database tree\n1\nAAAA\n", f"go.sum database tree v2\n1\n{h}\n",
                f"go.sum database tree\n1\n{h}"]:
        with pytest.raises(TlogError, match="malformed tree note"):
            parse_tree(bad)


def _lookup(server: SumdbServer, m: Module) -> tuple[int, bytes, bytes]:
    return parse_lookup(server.get(f"/lookup/{m.escaped_path}@{m.escaped_version}"))


@pytest.mark.parametrize("height", [8, 2])
def test_inclusion_from_the_go_servers_tiles(sumdb_server: SumdbServer, modules: list[Module],
                                             height: int) -> None:
    verifier = parse_verifier_key(sumdb_server.vkey)
    for m in modules:                       # each lookup adds a record: a tree of len(modules)
        _lookup(sumdb_server, m)
    m = modules[5]
    index, text, signed = _lookup(sumdb_server, m)
    assert text == (f"{m.path} {m.version} {hash_zip(m.zip)}\n"
                    f"{m.path} {m.version}/go.mod {hash_go_mod(m.mod)}\n").encode()
    tree = parse_tree(open_note(signed, verifier).text)
    assert tree.size == len(modules)
    tiles = {t: sumdb_server.get("/" + t.path) for t in record_proof_tiles(tree.size, index, height)}
    check_record(record_proof(tree.size, index, tiles, height), tree, index, record_hash(text))

    with pytest.raises(TlogError, match="not in the signed tree"):
        check_record(record_proof(tree.size, index, tiles, height), tree, index,
                     record_hash(text.replace(b"h1:", b"h1:A", 1)))
    good = record_proof(tree.size, index, tiles, height)
    for tile, data in tiles.items():        # every tile holds a hash the proof reads
        caught = 0
        for i in range(0, len(data), 32):
            altered = {**tiles, tile: data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]}
            proof = record_proof(tree.size, index, altered, height)
            if proof != good:
                with pytest.raises(TlogError, match="not in the signed tree"):
                    check_record(proof, tree, index, record_hash(text))
                caught += 1
        assert caught, tile.path
    first = next(iter(tiles))
    with pytest.raises(TlogError, match=r"bytes, not \d+ hashes"):
        record_proof(tree.size, index, {**tiles, first: tiles[first][:-1]}, height)
    with pytest.raises(TlogError, match="missing"):
        record_proof(tree.size, index, {t: d for t, d in tiles.items() if t != first}, height)


# --- the real go command ------------------------------------------------------------------

@pytest.mark.e2e
def test_go_command_verifies_against_the_go_sumdb(sumdb_binary: Path, go_env: GoEnv,
                                                  tmp_path: Path) -> None:
    """The server is real: the go command checks every module against it, and the go.sum
    it writes holds the hashes protocol/dirhash computes."""
    dag = random_dag(6, 3, seed=77, prefix="example.com/verified")
    module_dir = write_modules(tmp_path / "modules", dag.tree)
    with SumdbServer(sumdb_binary, module_dir, tmp_path) as server, \
            ThreadedFakeProxy(ModuleTree(dag.tree), name="upstream") as proxy:
        go_env.extra = {"GOSUMDB": server.gosumdb, "GONOSUMDB": "", "GOFLAGS": "-mod=mod -modcacherw"}
        main = write_main_module(tmp_path / "main", "example.com/main", dag.roots)
        r = go_env.run("build", "./...", cwd=main, goproxy=proxy.url)
        assert r.returncode == 0, r.stderr
        looked_up = {p for p in server.requests() if p.startswith("/lookup/")}
        assert looked_up == {f"/lookup/{m.escaped_path}@{m.escaped_version}"
                             for m in dag.tree if m.key in dag.expected_mods}
        gosum = set((main / "go.sum").read_text().splitlines())
        for m in dag.tree:
            if m.key in dag.expected_zips:
                assert f"{m.path} {m.version} {hash_zip(m.zip)}" in gosum
            if m.key in dag.expected_mods:
                assert f"{m.path} {m.version}/go.mod {hash_go_mod(m.mod)}" in gosum

        # With a fresh go.sum and module cache, an altered zip is caught by the database.
        victim = next(m for m in dag.tree if m.key in dag.expected_zips)
        altered = ModuleTree(m for m in dag.tree if m is not victim)
        altered.add(Module(victim.path, victim.version, requires=victim.requires,
                           files={"extra.txt": "not what the database saw\n"}))
        fresh = GoEnv(root=tmp_path / "goenv2", extra=go_env.extra)
        (fresh.root / "home").mkdir(parents=True)
        main2 = write_main_module(tmp_path / "main2", "example.com/main", dag.roots)
        with ThreadedFakeProxy(altered, name="altered") as bad:
            r = fresh.run("build", "./...", cwd=main2, goproxy=bad.url)
        assert r.returncode != 0
        assert "SECURITY ERROR" in r.stderr and f"{victim.path}@{victim.version}" in r.stderr, r.stderr


def test_lookup_answer_parsing() -> None:
    body = b"7\nexample.com/a v1.0.0 h1:x\nexample.com/a v1.0.0/go.mod h1:y\n\ngo.sum database tree\n"
    index, text, note = parse_lookup(body)
    assert (index, note) == (7, b"go.sum database tree\n")
    assert text == b"example.com/a v1.0.0 h1:x\nexample.com/a v1.0.0/go.mod h1:y\n"
    for bad, why in [(b"x\n", "record id"), (b"07\na\n\n", "record id"), (b"7\na\n", "blank line"),
                     (b"7\na\tb\n\n", "invalid record text")]:
        with pytest.raises(TlogError, match=why):
            parse_lookup(bad)
