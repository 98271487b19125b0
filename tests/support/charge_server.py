"""A server of non-idempotent raw-bytes methods that records every execution and can die right after one, for
tests that count executions across crashes: ``python -m tests.support.charge_server --name a --port N --log F``.

Methods (raw bytes, none declared idempotent anywhere, so the mesh treats them as not safe to re-send):

- ``Charge`` (unary): records ``<name> Charge <request>`` in the log, then answers the request back;
- ``Upload`` (client stream): reads the whole stream, records ``<name> Upload <first message> <count>``;
- ``Flood`` (client stream): reads and drops messages until the caller stops, records nothing (a busy writer
  sharing the connection).

With ``--relay-refusal REASON``, a Charge, once recorded, fails with a meshlet refusal of this very method as a
handler passes on the one a deeper server of the same method gave it (``context.abort`` with its code, details
and trailers): RATE_LIMITED or NO_HEALTHY_ENDPOINT naming an app, said by instance ``legacy-1``.

With ``--die-after-execution``, the process SIGKILLs itself right after recording a Charge or an Upload: the
server executed the call, and the caller never gets its answer. A supervisor (this module's parent process,
which imports grpc but never starts it, so forking is safe) then forks a fresh server on the same port at once,
so one test can crash the same endpoint hundreds of times; every server appends ``ready <name>`` to the log
when it serves. Records are single ``write(2)`` calls on an O_APPEND file: a SIGKILL cannot lose one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

SERVICE = "meshlet_test.charges.v1.Charges"
CHARGE = f"/{SERVICE}/Charge"
UPLOAD = f"/{SERVICE}/Upload"
FLOOD = f"/{SERVICE}/Flood"


def record(log_fd: int, line: str) -> None:
    os.write(log_fd, (line + "\n").encode())


async def serve(args: argparse.Namespace, log_fd: int) -> None:
    import grpc

    def executed(line: str) -> None:
        record(log_fd, line)
        if args.die_after_execution:
            os.kill(os.getpid(), signal.SIGKILL)

    async def charge(request: bytes, context: Any) -> bytes:
        executed(f"{args.name} Charge {request.decode()}")
        if args.relay_refusal:
            refusal = relayed_refusal(args.relay_refusal)
            await context.abort(refusal.code(), refusal.details(), tuple(refusal.trailing_metadata()))
        return request

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        messages = [message async for message in requests]
        first = messages[0].decode() if messages else ""
        executed(f"{args.name} Upload {first} {len(messages)}")
        return first.encode()

    async def flood(requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:
            pass
        return b""

    handlers = {
        "Charge": grpc.unary_unary_rpc_method_handler(charge),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Flood": grpc.stream_unary_rpc_method_handler(flood),
    }
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    record(log_fd, f"ready {args.name}")
    await server.wait_for_termination()


def relayed_refusal(reason: str) -> Any:
    """The refusal a deeper meshlet server of the same method (instance ``legacy-1``) answered."""
    from meshlet.errors import NoHealthyEndpoint, RateLimited

    said_by = {"method": CHARGE, "instance": "legacy-1"}
    if reason == "RATE_LIMITED":
        return RateLimited("caller is over its rate limit", metadata={"caller": "spiffe://x", **said_by}, pushback_ms=0)
    return NoHealthyEndpoint("the app did not take the call", metadata={"app": "127.0.0.1:1", **said_by})


def supervise(args: argparse.Namespace, log_fd: int) -> int:
    """Fork a server, and a new one each time the last one dies of a signal; stop with the server on SIGTERM."""
    child = 0

    def stop(signum: int, frame: Any) -> None:
        if child:
            os.kill(child, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            asyncio.run(serve(args, log_fd))
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL:
            return 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="the file every execution is appended to")
    parser.add_argument("--die-after-execution", action="store_true")
    parser.add_argument("--relay-refusal", choices=["RATE_LIMITED", "NO_HEALTHY_ENDPOINT"])
    args = parser.parse_args(argv)
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return supervise(args, log_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
