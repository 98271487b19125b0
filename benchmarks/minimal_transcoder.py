"""The floor for an HTTP -> gRPC JSON transcoder in Python, which the edge benchmark measures meshlet-edge against.

Two routes to one method, ``GET /v1/echo/{message}`` and ``POST /v1/echo`` (body ``*``), to
``meshlet_api.echo.v1.Echo/Echo``; protobuf's proto3 JSON mapping both ways (json_format, as the edge uses it); a
gzip-compressed answer when the caller accepts gzip and it is at least 1 KiB (the edge's default
``compression.min_bytes``). Nothing else: one plain grpc.aio channel to one address, no discovery, deadline
policy, retries, breakers, metrics, tracing, request ids or validation. An upstream failure is a bare 502.

Served by one of two HTTP server libraries, so the benchmark can price the library apart from the edge's work:

- ``aiohttp``: a ``web.Application`` with one catch-all route, as meshlet-edge uses aiohttp;
- ``uvicorn``: a bare ASGI callable under uvicorn with its httptools (llhttp) parser, served in this process's
  loop (``Server.serve``), so the gRPC channel shares the loop as it would in the edge.

``python -m benchmarks.minimal_transcoder --server aiohttp|uvicorn --listen 127.0.0.1:PORT --upstream HOST:PORT``
prints ``listening on PORT`` once it serves and stops on SIGTERM. It runs on meshlet's loop choice (uvloop where
installed, ``MESHLET_LOOP``), as the edge does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import json_format

from meshlet.runtime import run
from meshlet_api.echo.v1 import echo_pb2

ECHO = "/meshlet_api.echo.v1.Echo/Echo"
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6  # zlib's default
TIMEOUT_S = 5.0
JSON = "application/json"

Answer = tuple[int, bytes, list[tuple[str, str]]]


class Transcoder:
    """The work every HTTP server library here shares: route, JSON -> message, call, message -> JSON, gzip."""

    def __init__(self, upstream: str) -> None:
        self.channel = grpc.aio.insecure_channel(upstream)
        self.echo = self.channel.unary_unary(
            ECHO,
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoReply.FromString,
        )

    async def answer(self, method: str, path: str, body: bytes, accept_encoding: str) -> Answer:
        if method == "GET" and path.startswith("/v1/echo/"):
            request = echo_pb2.EchoRequest(message=unquote(path.removeprefix("/v1/echo/")))
        elif method == "POST" and path == "/v1/echo":
            try:
                request = json_format.ParseDict(json.loads(body), echo_pb2.EchoRequest())
            except (ValueError, json_format.ParseError) as error:
                return 400, str(error).encode(), [("content-type", "text/plain")]
        else:
            return 404, b"no route\n", [("content-type", "text/plain")]
        try:
            reply = await self.echo(request, timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return 502, f"{error.code().name}: {error.details()}\n".encode(), [("content-type", "text/plain")]
        data = json.dumps(json_format.MessageToDict(reply), separators=(",", ":")).encode()
        headers = [("content-type", JSON)]
        if len(data) >= GZIP_MIN_BYTES and "gzip" in accept_encoding.lower():
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
            data = packer.compress(data) + packer.flush()
            headers += [("content-encoding", "gzip"), ("vary", "Accept-Encoding")]
        return 200, data, headers

    async def close(self) -> None:
        await self.channel.close()


# ------------------------------------------------------------------------------------------ aiohttp


async def serve_aiohttp(transcoder: Transcoder, host: str, port: int, stop: asyncio.Event) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if request.can_read_body else b""
        accept = request.headers.get("Accept-Encoding", "")
        status, data, headers = await transcoder.answer(request.method, request.rel_url.raw_path, body, accept)
        return web.Response(status=status, body=data, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"listening on {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------------------ uvicorn (ASGI)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def asgi_app(transcoder: Transcoder) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        accept = next((v.decode() for k, v in scope["headers"] if k == b"accept-encoding"), "")
        path = scope["raw_path"].decode().partition("?")[0]
        status, data, headers = await transcoder.answer(scope["method"], path, b"".join(chunks), accept)
        raw = [(k.encode(), v.encode()) for k, v in headers] + [(b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    return app


async def serve_uvicorn(transcoder: Transcoder, host: str, port: int, stop: asyncio.Event) -> None:
    import uvicorn

    config = uvicorn.Config(
        asgi_app(transcoder), host=host, port=port, http="httptools", lifespan="off", access_log=False,
        log_level="warning", server_header=False, date_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())  # it also stops by itself on SIGTERM (its own handler)
    while not server.started:
        if serving.done():
            await serving  # it failed to start: raise why
            return
        await asyncio.sleep(0.01)
    print(f"listening on {port}", flush=True)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.should_exit = True
    await serving


# ------------------------------------------------------------------------------------------ main

SERVERS = {"aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn}


async def main_async(server: str, listen: str, upstream: str) -> int:
    host, _, port = listen.rpartition(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transcoder = Transcoder(upstream)
    try:
        await SERVERS[server](transcoder, host, int(port), stop)
    finally:
        await transcoder.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minimal_transcoder", description=__doc__)
    parser.add_argument("--server", choices=sorted(SERVERS), default="aiohttp")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    return run(main_async(args.server, args.listen, args.upstream), prog="minimal_transcoder")


if __name__ == "__main__":
    sys.exit(main())
