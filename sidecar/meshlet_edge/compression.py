"""Response compression: the coding a client's ``Accept-Encoding`` allows (RFC 9110 12.5.3: q-values, ``q=0``
refuses, ``*`` stands for the codings not named), brotli first where the ``brotli`` package is installed (an
optional extra, smaller for JSON), else gzip, and the compressing itself. Pure."""

from __future__ import annotations

import functools
import importlib
import zlib
from types import ModuleType


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


brotli = _optional("brotli")  # an optional extra: offered only where it is installed
GZIP_LEVEL = 6  # zlib's default: most of level 9's gain on JSON for a third of its CPU
BROTLI_QUALITY = 4  # for bodies made per request; 11 (the default) is for static assets compressed once
OFFERED: tuple[str, ...] = ("br", "gzip") if brotli is not None else ("gzip",)  # in order of preference
COMPRESSIBLE = ("text/", "application/json", "application/javascript", "application/x-ndjson", "application/yaml")


@functools.lru_cache(maxsize=256)  # clients send a handful of distinct headers: parsed once each
def choose_coding(accept_encoding: str | None, offered: tuple[str, ...] = OFFERED) -> str | None:
    """The offered coding the client weighs highest (the first offered among equals), or None for identity."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if name == "x-gzip":
            name = "gzip"
        if name:
            weights[name] = _q(params)
    best: tuple[float, str] | None = None
    for coding in offered:
        weight = weights.get(coding, weights.get("*", 0.0))
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, coding)
    return None if best is None else best[1]


def _q(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value)))
            except ValueError:
                return 0.0  # a malformed weight refuses rather than guesses
    return 1.0


def is_compressible(content_type: str) -> bool:
    return content_type.startswith(COMPRESSIBLE) or content_type.endswith("+json")


def compress(body: bytes, coding: str) -> bytes:
    if coding == "br":
        assert brotli is not None
        compressed: bytes = brotli.compress(body, quality=BROTLI_QUALITY)
        return compressed
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing, no mtime
    return packer.compress(body) + packer.flush()
