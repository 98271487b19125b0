"""Entity tags for the edge's safe reads (RFC 9110 8.8.3 and 13.1.2): a GET of a method declared
``idempotency_level = NO_SIDE_EFFECTS`` is answered with a strong ``ETag``, a hash of the JSON bytes before any
content coding, and a request whose ``If-None-Match`` names it (weak comparison, lists and ``*``) gets a 304.

Compression changes the bytes but not what they mean: an answer the edge compresses carries the same tag made weak
(``W/"..."``), as nginx does, so that no strong tag ever names two byte sequences (RFC 9110 8.8.3: a content-coded
representation is another representation), while weak comparison, the one ``If-None-Match`` uses, still matches
the gzip and the identity forms of one answer. ``Vary: Accept-Encoding`` is sent either way. Pure."""

from __future__ import annotations

import hashlib
import re

_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def strong_etag(body: bytes) -> str:
    """A strong tag of exactly these bytes (BLAKE2b, 128 bits: collisions are not a concern at any scale)."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def weaken(etag: str) -> str:
    return etag if etag.startswith("W/") else "W/" + etag


def opaque(etag: str) -> str:
    """The tag without its weakness: what weak comparison compares."""
    return etag.removeprefix("W/")


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names `etag` (so the answer is a 304 for a GET): ``*``, or any listed tag equal to
    it under weak comparison. A malformed header names nothing (the full answer is sent, as RFC 9110 13.1.2 wants
    of a condition that cannot be evaluated)."""
    if not if_none_match:
        return False
    text = if_none_match.strip()
    if text == "*":
        return True
    wanted = opaque(etag)
    position = 0
    while position < len(text):
        found = _TAG.match(text, position)
        if found is None:
            return False
        if f'"{found.group(2)}"' == wanted:
            return True
        position = found.end()
    return False
