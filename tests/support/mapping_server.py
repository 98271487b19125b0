"""A plain grpc.aio server (no meshlet in it) for meshlet.mapping.v1 (protos/meshlet_api/mapping/v1), run as its own
process by tests/integration/test_edge_mapping.py: ``python -m tests.support.mapping_server --port N``.

Every Library method answers a ``Received`` holding its full name and the request's bytes exactly as they came off
the wire (handlers take raw bytes, nothing re-encodes them), so a test decodes them and sees how the edge bound each
field; ``Mirror`` and ``MirrorBooks`` answer those bytes as their reply. ``Faults.Fail`` ends the call with the
status code named in its request, with a google.rpc.Status in the trailers carrying an ErrorInfo and a FaultDetail
(a detail type only the mapping protos know). The test registers the process in the dev agent itself."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from meshlet_api.mapping.v1 import mapping_pb2

DETAILS_KEY = "grpc-status-details-bin"
MIRRORS = ("Mirror", "MirrorBooks")


def _received(method: str) -> Any:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return mapping_pb2.Received(method=method, request=request).SerializeToString()

    return handle


async def _mirror(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    asked = mapping_pb2.FailRequest.FromString(request)
    code = grpc.StatusCode[asked.code]
    status = status_pb2.Status(code=code.value[0], message=asked.message)
    info = error_details_pb2.ErrorInfo(
        reason="ASKED_TO_FAIL", domain="mapping.meshlet.test", metadata={"code": asked.code}
    )
    status.details.add().Pack(info)
    status.details.add().Pack(mapping_pb2.FaultDetail(hint="as asked", attempt=9007199254740993))
    await context.abort(code, asked.message, ((DETAILS_KEY, status.SerializeToString()),))
    raise AssertionError("abort returned")  # pragma: no cover


def handlers() -> list[grpc.GenericRpcHandler]:
    """One generic handler per service, every method taking and answering raw bytes."""
    found: list[grpc.GenericRpcHandler] = []
    for service in mapping_pb2.DESCRIPTOR.services_by_name.values():
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            full = f"/{service.full_name}/{method.name}"
            if method.name in MIRRORS:
                behaviour: Any = _mirror
            elif service.name == "Faults":
                behaviour = _fail
            else:
                behaviour = _received(full)
            methods[method.name] = grpc.unary_unary_rpc_method_handler(behaviour)
        found.append(grpc.method_handlers_generic_handler(service.full_name, methods))
    return found


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers())
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"mapping server listening on {args.port}", flush=True)
    await server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
