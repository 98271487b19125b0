"""An app as the sidecar finds it: the echo service on plain grpc.aio, importing nothing of meshlet. Sidecar
tests run it in-process (``async with plain_app() as app``) or as its own process
(``python -m tests.support.plain_app --port N``, which prints ``listening on PORT`` once it serves).

Every call is recorded in ``app.seen`` (method, request metadata, remaining deadline). Request metadata steers it:

- ``x-echo-fail: CODE`` fails the call with CODE, a message, a trailer ``x-app-trailer: failed`` and rich
  error details (a google.rpc.Status holding an ErrorInfo with reason ``ECHO_FAILED``, domain ``echo.test``);
  ``x-echo-fail-details: TEXT`` makes TEXT the message, and ``x-echo-fail-meshlet: REASON`` makes the ErrorInfo
  meshlet's own (domain ``meshlet.dev``), as an app that passes on its sidecar's refusal of its own call;
- ``x-echo-metadata: 1`` echoes every ``x-`` request header back, as initial metadata (``initial-<key>``)
  and as trailing metadata (``trailing-<key>``); ``-bin`` keys keep their suffix and bytes;
- ``x-echo-hang: 1`` never answers: the call waits until it is cancelled (recorded in ``app.cancelled``);
- ``x-echo-end-after: N`` ends a BidiStream with OK after N requests, whether or not the caller is done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

ERROR_DOMAIN = "echo.test"
ERROR_REASON = "ECHO_FAILED"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # above grpc's default 4 MB, so tests can show a proxy does not impose that


@dataclass(frozen=True)
class Seen:
    method: str
    metadata: dict[str, Any]
    time_remaining: float | None


@dataclass
class PlainEchoApp(echo_pb2_grpc.EchoServicer):
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cancellation: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set it to let calls with x-echo-hold finish

    async def _arrive(self, method: str, context: Any) -> dict[str, Any]:
        metadata = dict(context.invocation_metadata() or ())
        self.seen.append(Seen(method, metadata, context.time_remaining()))
        if metadata.get("x-echo-metadata"):
            echoed = [(key, value) for key, value in metadata.items() if key.startswith("x-")]
            await context.send_initial_metadata([(f"initial-{key}", value) for key, value in echoed])
            context.set_trailing_metadata([(f"trailing-{key}", value) for key, value in echoed])
        if metadata.get("x-echo-hang"):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(method)
                self.cancellation.set()
                raise
        if metadata.get("x-echo-hold"):
            await self.release.wait()
        code = metadata.get("x-echo-fail")
        if code:
            message = metadata.get("x-echo-fail-details", f"{method} failed as asked ({code})")
            await _fail(context, grpc.StatusCode[code], message, metadata.get("x-echo-fail-meshlet"))
        return metadata

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._arrive("Echo", context)
        return echo_pb2.EchoReply(message=request.message, payload=request.payload, served_by="plain")

    async def EchoOnce(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._arrive("EchoOnce", context)
        return echo_pb2.EchoReply(message=request.message, payload=request.payload, served_by="plain")

    async def ServerStream(  # noqa: N802
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        await self._arrive("ServerStream", context)
        for i in range(3):
            yield echo_pb2.EchoReply(message=f"{request.message}-{i}", served_by="plain")

    async def ClientStream(self, request_iterator: Any, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._arrive("ClientStream", context)
        messages = [request.message async for request in request_iterator]
        return echo_pb2.EchoReply(message="+".join(messages), served_by="plain")

    async def BidiStream(self, request_iterator: Any, context: Any) -> AsyncIterator[echo_pb2.EchoReply]:  # noqa: N802
        metadata = await self._arrive("BidiStream", context)
        end_after = int(metadata.get("x-echo-end-after", 0))
        received = 0
        async for request in request_iterator:
            yield echo_pb2.EchoReply(message=request.message, served_by="plain")
            received += 1
            if received == end_after:
                return


async def _fail(context: Any, code: grpc.StatusCode, message: str, meshlet_reason: str | None = None) -> None:
    detail = any_pb2.Any()
    if meshlet_reason:  # what the app's own sidecar said about a call the app made (meshlet.errors.DOMAIN)
        info = error_details_pb2.ErrorInfo(reason=meshlet_reason, domain="meshlet.dev", metadata={"upstream": "c-svc"})
    else:
        info = error_details_pb2.ErrorInfo(reason=ERROR_REASON, domain=ERROR_DOMAIN, metadata={"by": "plain-app"})
    detail.Pack(info)
    status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))
    await context.abort(status.code, status.details, (*status.trailing_metadata, ("x-app-trailer", "failed")))


@contextlib.asynccontextmanager
async def plain_app(port: int = 0, *, with_reflection: bool = False) -> AsyncIterator[PlainEchoApp]:
    """The app serving on 127.0.0.1:`port` (0: a free one, in ``app.port``) until the block ends; with
    `with_reflection`, grpcio's reflection service describes its Echo service."""
    app = PlainEchoApp()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    echo_pb2_grpc.add_EchoServicer_to_server(app, server)
    if with_reflection:
        echo_service = echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name
        reflection.enable_server_reflection([echo_service, reflection.SERVICE_NAME], server)
    app.port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield app
    finally:
        await server.stop(None)


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="the echo service on plain grpc.aio, for sidecar tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reflection", action="store_true", help="serve grpc.reflection.v1alpha")
    args = parser.parse_args(argv)
    async with plain_app(args.port, with_reflection=args.reflection) as app:
        print(f"listening on {app.port}", flush=True)
        await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(sys.argv[1:])))
