"""Reading a request body, within what one client may cost the edge: its media type must be JSON, its coding
identity or gzip, and its size, after decompression, at most ``edge.max_body_bytes``. A gzip body is inflated
as it arrives, never more than the limit (and one chunk) at a time, so a compression bomb is refused with a
413 having cost a bounded amount of memory. A client that stops sending mid-body is answered 408 and cut off
after `READ_IDLE_S` without a byte, one that trickles it after `READ_TOTAL_S` (aiohttp's own timer, which cuts a
slow client off, stops once the headers are in).

A request without ``Content-Type`` is read as JSON, as grpc-gateway and Envoy's transcoder read it; one that
names another type (``curl -d``'s form encoding included) is a 415."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from aiohttp import web

from meshlet.http_limits import HEADER_TIMEOUT_S

READ_IDLE_S = HEADER_TIMEOUT_S  # as long as a client may take over its headers
READ_TOTAL_S = 60.0  # the whole body: 1 MiB at 17 KB/s, a phone on a poor link
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
    if coding == "identity":
        body = bytearray()

        def keep(chunk: bytes) -> None:
            body.extend(chunk)
            if len(body) > max_bytes:
                raise BodyRefused(413, "body", f"the body is larger than {max_bytes} bytes: send a smaller one")

        await _each_chunk(request, keep)
        return bytes(body)
    inflater = Inflater(max_bytes)
    await _each_chunk(request, inflater.feed)
    return inflater.finish()


async def _each_chunk(request: web.Request, take: Callable[[bytes], None]) -> None:
    """Hand each chunk of the body to `take` as it arrives, within READ_IDLE_S of the last and READ_TOTAL_S."""
    content = request.content
    if content.is_eof():  # the whole body came with the headers (a small one mostly does): no wait, no timer
        take(content.read_nowait())
        return
    loop = asyncio.get_running_loop()
    give_up = loop.time() + READ_TOTAL_S
    try:
        async with asyncio.timeout(None) as timer:
            while True:
                timer.reschedule(min(give_up, loop.time() + READ_IDLE_S))
                chunk = await request.content.readany()
                if not chunk:
                    return
                take(chunk)
    except TimeoutError:
        what = f"the body stalled for {READ_IDLE_S:g} s or took over {READ_TOTAL_S:g} s: send it at once"
        raise BodyRefused(408, "body", what) from None


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
