"""Is this upstream answer a real one? Checks for bodies before they reach a client or the cache.

An upstream that answers 200 with garbage is worse than one that fails: the go
command would trust it. Small metadata answers are checked whole before a
byte is sent; a zip is checked for its end-of-central-directory record while
its last chunk is held back, so a zip cut short at a clean boundary is caught
too.
"""

from __future__ import annotations

import gzip
import json
import zlib

# Small kinds are read whole (bounded) and validated before anything is sent.
SMALL_KINDS = frozenset({"list", "info", "mod", "latest"})
SMALL_BODY_LIMIT = 16 << 20            # the go command's own limit for go.mod and friends

_EOCD = b"PK\x05\x06"
ZIP_TAIL = 22 + 0xFFFF                 # EOCD record plus the longest comment


def is_identity(content_encoding: str | None) -> bool:
    return (content_encoding or "identity").strip().lower() == "identity"


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """The identity bytes of a small answer (an upstream may ignore Accept-Encoding: identity).

    Raises ValueError when the body does not decode.
    """
    try:
        return _decoded(body, content_encoding)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{content_encoding} body does not decode") from exc


def _decoded(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def small_body_problem(kind: str, body: bytes, content_encoding: str | None,
                       expected_version: str | None) -> str | None:
    """Why a list/.info/.mod/@latest body is not a valid answer, or None if it is."""
    try:
        data = decode_body(body, content_encoding)
    except ValueError as exc:
        return str(exc)
    if kind in ("info", "latest"):
        try:
            info = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return "not JSON"
        version = info.get("Version") if isinstance(info, dict) else None
        if not isinstance(version, str) or not version:
            return "no Version in the JSON"
        if expected_version is not None and version != expected_version:
            return f"Version {version!r} is not the requested {expected_version!r}"
    elif kind == "mod":
        if not data.strip():
            return "empty go.mod"
    elif kind == "list":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "version list is not UTF-8 text"
    return None


def zip_tail_problem(tail: bytes, total: int) -> str | None:
    """Why the last bytes of a zip do not end a zip archive, or None if they do."""
    if total < 22:
        return f"zip of {total} bytes is too short to be a zip"
    position = tail.rfind(_EOCD)
    if position < 0:
        return "zip has no end-of-central-directory record (cut short?)"
    comment_length = int.from_bytes(tail[position + 20:position + 22], "little")
    if position + 22 + comment_length != len(tail):
        return "zip end-of-central-directory record does not end the body (cut short?)"
    return None


class ZipTail:
    """Keeps the last bytes of a streamed zip for `zip_tail_problem`."""

    __slots__ = ("_tail", "total")

    def __init__(self) -> None:
        self._tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._tail += chunk
        if len(self._tail) > 2 * ZIP_TAIL:
            del self._tail[:-ZIP_TAIL]

    def problem(self) -> str | None:
        return zip_tail_problem(bytes(self._tail[-ZIP_TAIL:]), self.total)
