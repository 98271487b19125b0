"""The floor for a Python proxy: a grpc.aio server that relays every method, as raw bytes, to one upstream.

No policies at all: no discovery, deadlines beyond passing the caller's on, retries, breakers, authorization,
rate limits or metrics. Every method is served by one generic stream-stream handler with identity
serializers (a unary call is a stream of one), or with ``--unary`` by a unary-unary one (right for unary
methods only: the floor for the sidecar's unary fast path); metadata passes through minus the hop headers, and
status, details and trailers come back unchanged. One channel to the upstream. The sidecar benchmark runs two
of these with mTLS between them, so what the sidecar costs above this pair is what its policies and plumbing cost.

    python -m benchmarks.raw_proxy --listen 127.0.0.1:P --upstream 127.0.0.1:Q [--unary] \
        [--server-tls CERT,KEY,CA] [--upstream-tls CERT,KEY,CA --upstream-name DNS]

Prints ``listening on PORT`` once it serves; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

# Imports nothing of meshlet (whose package pulls in config, Consul and HTTP clients): the floor's RSS is
# grpc's and Python's alone.
NO_DEADLINE_S = 1e6  # grpc.aio reports a huge time_remaining() for a call without a deadline
HOP_HEADERS = frozenset({"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "user-agent", "te", "content-type"})
RawHandler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]
RawUnaryHandler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def forwardable(metadata: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """Metadata minus what belongs to one HTTP/2 hop (the deadline travels as the call's timeout)."""
    return tuple((k, v) for k, v in metadata or () if k not in HOP_HEADERS and not k.startswith(":"))


class RawMethods(grpc.GenericRpcHandler):
    """Every method path served by a raw-bytes stream-stream handler, made once per path."""

    def __init__(self, make_handler: Callable[[str], grpc.RpcMethodHandler]) -> None:
        self._make_handler = make_handler
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method not in self._handlers:
            self._handlers[method] = self._make_handler(method)
        return self._handlers[method]


def _pem_triple(text: str) -> tuple[bytes, bytes, bytes]:
    cert, key, ca = (Path(part).read_bytes() for part in text.split(","))
    return cert, key, ca


class RawProxy:
    """Relays every call on one upstream channel; `handler_for` is what RawMethods asks for per method path."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def handler_for(self, method: str) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self._relay(method))

    def unary_handler_for(self, method: str) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(self._relay_unary(method))

    def _relay_unary(self, method: str) -> RawUnaryHandler:
        upstream = self._channel.unary_unary(method)  # no serializers: bytes in, bytes out

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            remaining = context.time_remaining()
            call = upstream(
                request,
                timeout=remaining if remaining is not None and remaining < NO_DEADLINE_S else None,
                metadata=forwardable(context.invocation_metadata()),
            )
            try:
                reply: bytes = await call
            except grpc.aio.AioRpcError as failed:
                await context.abort(failed.code(), failed.details() or "", forwardable(failed.trailing_metadata()))
            headers = await call.initial_metadata()
            if headers:
                await context.send_initial_metadata(forwardable(headers))
            trailers = await call.trailing_metadata()
            if trailers:
                context.set_trailing_metadata(forwardable(trailers))
            return reply

        return relay

    def _relay(self, method: str) -> RawHandler:
        upstream = self._channel.stream_stream(method)  # no serializers: bytes in, bytes out

        async def relay(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            remaining = context.time_remaining()
            call = upstream(
                requests,
                timeout=remaining if remaining is not None and remaining < NO_DEADLINE_S else None,
                metadata=forwardable(context.invocation_metadata()),
            )
            try:
                headers = await call.initial_metadata()
                if headers:
                    await context.send_initial_metadata(forwardable(headers))
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as failed:
                await context.abort(failed.code(), failed.details() or "", forwardable(failed.trailing_metadata()))
            finally:
                call.cancel()  # the caller went away, or the call is over (then a no-op)
            trailers = await call.trailing_metadata()
            if trailers:
                context.set_trailing_metadata(forwardable(trailers))

        return relay

    def __repr__(self) -> str:
        return f"<RawProxy upstream={self._channel!r}>"


def upstream_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if not args.upstream_tls:
        return grpc.aio.insecure_channel(args.upstream, options=options)
    cert, key, ca = _pem_triple(args.upstream_tls)
    options.append(("grpc.ssl_target_name_override", args.upstream_name))
    return grpc.aio.secure_channel(args.upstream, grpc.ssl_channel_credentials(ca, key, cert), options=options)


async def serve(args: argparse.Namespace) -> None:
    channel = upstream_channel(args)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    proxy = RawProxy(channel)
    server.add_generic_rpc_handlers((RawMethods(proxy.unary_handler_for if args.unary else proxy.handler_for),))
    if args.server_tls:
        cert, key, ca = _pem_triple(args.server_tls)
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port(args.listen, credentials)
    else:
        port = server.add_insecure_port(args.listen)
    await server.start()
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await channel.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--unary", action="store_true", help="serve every method as unary (unary methods only)")
    parser.add_argument("--server-tls", metavar="CERT,KEY,CA", help="serve mTLS, requiring a client certificate")
    parser.add_argument("--upstream-tls", metavar="CERT,KEY,CA", help="dial the upstream with mTLS")
    parser.add_argument("--upstream-name", default="", help="the DNS SAN the upstream's certificate must carry")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
