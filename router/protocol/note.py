"""Signed notes (golang.org/x/mod/sumdb/note): the checksum database's signed tree heads.

A verifier key is ``<name>+<8 hex digits>+<base64 of 0x01 and a 32-byte Ed25519 key>``;
the hex digits are the first 4 bytes (big-endian) of SHA-256(name, "\\n", encoded key).
A note is UTF-8 text (no control characters but newline) ending in a newline, a blank
line, then signature lines ``— <name> <base64 of 4-byte key hash and signature>``,
each signing the text. `open_note` accepts a note only with a valid signature by the
given key; anything else raises NoteError with the reason. Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["Note", "NoteError", "Verifier", "open_note", "parse_verifier_key"]

ALG_ED25519 = 1
MAX_SIGNATURES = 100                    # the Go client's bound on work per note
_SIG_PREFIX = "\u2014 "                 # an em dash and a space


class NoteError(Exception):
    """A malformed key or note, or one not signed by the expected key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_hash(name: str, encoded_key: bytes) -> int:
    """The 32-bit id of a key: the first 4 bytes of SHA-256(name "\\n" key)."""
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + encoded_key).digest()[:4], "big")


@dataclass(frozen=True, slots=True)
class Verifier:
    """A parsed verifier key: a database name, its key hash and Ed25519 public key."""

    name: str
    key_hash: int
    public_key: bytes               # the raw 32-byte Ed25519 key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if `signature` is this key's Ed25519 signature of `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse ``<name>+<hash>+<key>``, or raise NoteError saying what is wrong."""
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"verifier key {vkey!r} is not <name>+<hash>+<key>")
    name, hash_hex, key64 = parts
    if not _valid_name(name):
        raise NoteError(f"verifier key name {name!r} is empty or has a space")
    if len(hash_hex) != 8 or any(c not in "0123456789abcdefABCDEF" for c in hash_hex):
        raise NoteError(f"verifier key hash {hash_hex!r} is not 8 hex digits")
    try:
        key = base64.b64decode(key64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise NoteError(f"verifier key {vkey!r}: the key is not base64") from e
    if not key:
        raise NoteError(f"verifier key {vkey!r} has an empty key")
    if int(hash_hex, 16) != key_hash(name, key):
        raise NoteError(f"verifier key {vkey!r}: the hash does not match the name and key")
    if key[0] != ALG_ED25519:
        raise NoteError(f"verifier key {vkey!r}: unknown algorithm {key[0]}")
    if len(key) != 33:
        raise NoteError(f"verifier key {vkey!r}: an Ed25519 key is 32 bytes, not {len(key) - 1}")
    return Verifier(name, int(hash_hex, 16), key[1:])


@dataclass(frozen=True, slots=True)
class Note:
    """A verified note: its text and the names of the keys that signed it."""

    text: str
    signers: tuple[str, ...]


def open_note(msg: bytes, verifier: Verifier) -> Note:
    """Check that `msg` is a well-formed note signed by `verifier`; return its text.

    Signatures by other keys are ignored (a note may carry several), as the
    go command does; a signature by this key that does not verify is an error.
    """
    try:
        text_all = msg.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError("malformed note: not UTF-8") from e
    if any(c < " " and c != "\n" for c in text_all):
        raise NoteError("malformed note: a control character")
    split = text_all.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, sigs = text_all[:split + 1], text_all[split + 2:]
    if not sigs.endswith("\n"):
        raise NoteError("malformed note: no signature, or the last line has no newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"malformed note: signature line {line[:80]!r}")
        name, _, sig64 = line[len(_SIG_PREFIX):].partition(" ")
        try:
            sig = base64.b64decode(sig64, validate=True)
        except (binascii.Error, ValueError):
            sig = b""
        if not _valid_name(name) or len(sig) < 5:
            raise NoteError(f"malformed note: signature line {line[:80]!r}")
        if name != verifier.name or int.from_bytes(sig[:4], "big") != verifier.key_hash:
            continue                    # another key's signature
        if not verifier.verify(text.encode(), sig[4:]):
            raise NoteError(f"invalid signature by {verifier.name}: the note was altered "
                            f"or signed by another key")
        verified = True
    if not verified:
        raise NoteError(f"note not signed by {verifier.name}+{verifier.key_hash:08x}")
    return Note(text, (verifier.name,))
