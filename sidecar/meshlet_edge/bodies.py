"""Reading a request body, within what one client may cost the edge: its media type must be JSON, its coding
identity or gzip, and its size, after decompression, at most ``edge.max_body_bytes``. A gzip body is inflated
as it arrives, never more than the limit (and one chunk) at a time, so a compression bomb is refused with a
413 having cost a bounded amount of memory; a client that stops sending mid-body is cut off after
`READ_TIMEOUT_S` (aiohttp's own timer stops once the headers are in).

A request without ``Content-Type`` is read as JSON, as grpc-gateway and Envoy's transcoder read it; one that
names another type (``curl -d``'s form encoding included) is a 415."""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

READ_TIMEOUT_S = 30.0  # the whole body: 1 MiB at 35 KB/s, a phone on a poor link
CHUNK_BYTES = 64 * 1024
CODINGS = ("gzip",)  # besides identity; the 415 for another one says so in Accept-Encoding (RFC 9110 15.5.16)


class BodyRefused(Exception):
    """The body cannot be read: `status` is the HTTP answer (400, 408, 413, 415), `field` what is at fault."""

    def __init__(self, status: int, field: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.field = field
        self.description = description


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<x>+json``, with any parameters; None (no header) counts as JSON."""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, decoded; raises BodyRefused."""
    if not request.body_exists:
        return b""
    content_type = request.headers.get("Content-Type")
    if not is_json(content_type):
        raise BodyRefused(415, "Content-Type", f"the body is {content_type}: send application/json")
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("identity", "gzip", "x-gzip"):
        raise BodyRefused(415, "Content-Encoding", f"the body is {coding}-encoded: send it gzip-encoded or as is")
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BodyRefused(413, "body", f"the body is larger than {max_bytes} bytes: send a smaller one")
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            if coding == "identity":
                return await _read(request, max_bytes)
            return await _inflate(request, max_bytes)
    except TimeoutError:
        raise BodyRefused(408, "body", f"the body did not arrive within {READ_TIMEOUT_S:g} s: send it faster") from None


async def _read(request: web.Request, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise BodyRefused(413, "body", f"the body is larger than {max_bytes} bytes: send a smaller one")
    return bytes(body)


async def _inflate(request: web.Request, max_bytes: int) -> bytes:
    inflater = Inflater(max_bytes)
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        inflater.feed(chunk)
    return inflater.finish()


class Inflater:
    """gzip (one member or several, RFC 1952) inflated into at most `max_bytes`; raises BodyRefused."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._out = bytearray()
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - len(self._out) + 1  # one byte past the limit proves it is exceeded
            try:
                self._out += self._member.decompress(data, room)
            except zlib.error as error:
                what = f"the body is not valid gzip ({error}): send it as gzip or as is"
                raise BodyRefused(400, "body", what) from None
            if len(self._out) > self.max_bytes:
                raise BodyRefused(
                    413, "body", f"the body, decompressed, is larger than {self.max_bytes} bytes: send a smaller one"
                )
            if self._member.eof:
                data = self._member.unused_data
                if data:
                    self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                data = self._member.unconsumed_tail

    def finish(self) -> bytes:
        if not self._member.eof:
            raise BodyRefused(400, "body", "the gzip body ends before its stream does: send all of it")
        return bytes(self._out)
