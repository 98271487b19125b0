"""Learn methods from a gRPC reflection service (``grpc.reflection.v1alpha``, which grpcio, grpc-go, grpc-java
and grpc-js serve): the local app's, over the sidecar's channel to it, or an upstream's, through the mesh.

Asking happens in the background and fills a MethodTable; a call never waits for it. A service without
reflection, or one that is down, is asked again later (see AskSchedule), and meanwhile its methods take the
generic path. The questions carry the mesh's mark (meshlet.call.MESH_OWN_METADATA): no span, metric or access
log line on either side counts them as the users' calls, so an upstream without reflection is no error of its.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshlet.call import MESH_OWN_METADATA
from meshlet.deadline import Clock
from meshlet_sidecar.method_kinds import AskSchedule, MethodInfo, MethodTable, methods_in, parse_files

log = logging.getLogger("meshlet.sidecar")

ASK_TIMEOUT_S = 5.0
# Answers that will not change soon: no reflection service there, or the upstream's intentions do not let us ask
# (allow /grpc.reflection.v1alpha.ServerReflection/* from this service, or give the sidecar descriptor sets).
REFUSALS = frozenset(
    {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)


async def ask_methods(channel: grpc.aio.Channel, timeout_s: float = ASK_TIMEOUT_S) -> dict[str, MethodInfo]:
    """Every method of every service the reflection service behind `channel` lists. Raises grpc.aio.AioRpcError
    (no reflection service, unreachable) or ValueError (an answer that is not a descriptor)."""
    info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    services: list[str] = []
    async for reply in info(iter([listing]), timeout=timeout_s, metadata=MESH_OWN_METADATA):
        _check(reply)
        services += [service.name for service in reply.list_services_response.service]
    if not services:
        return {}
    asks = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=name) for name in services]
    files = []
    async for reply in info(iter(asks), timeout=timeout_s, metadata=MESH_OWN_METADATA):
        if reply.HasField("error_response"):  # one service it cannot describe: learn the others
            log.debug("reflection cannot describe %s: %s", reply.original_request.file_containing_symbol, reply)
            continue
        files += parse_files(reply.file_descriptor_response.file_descriptor_proto)
    return methods_in(files)


def _check(reply: Any) -> None:
    if reply.HasField("error_response"):
        raise ValueError(f"reflection refused to list services: {reply.error_response.error_message}")


class ReflectionLearner:
    """Fills `table` from the reflection service on `channel()` (called per question, so an upstream's channel
    may be built lazily), when asked to (`ask()`) and whenever the table misses a method, as the schedule
    allows."""

    def __init__(
        self,
        name: str,
        table: MethodTable,
        channel: Callable[[], grpc.aio.Channel],
        *,
        clock: Clock = time.monotonic,
        schedule: AskSchedule | None = None,
    ) -> None:
        self.name = name
        self.table = table
        self._channel = channel
        self._clock = clock
        self._schedule = schedule or AskSchedule()
        self._task: asyncio.Task[None] | None = None
        self._last_failure = ""  # said once at info level; the same failure again only at debug
        table.on_miss(self._missed)

    def ask(self) -> None:
        """Ask now, in the background, unless a question is out or the schedule says wait."""
        if self._schedule.may_ask(self._clock()):
            self._schedule.asked()
            self._task = asyncio.get_running_loop().create_task(self._ask())

    def _missed(self, path: str) -> None:
        self.ask()

    async def _ask(self) -> None:
        try:
            methods = await ask_methods(self._channel())
        except asyncio.CancelledError:
            self._schedule.failed(self._clock())
            raise
        except (grpc.aio.AioRpcError, ValueError) as error:
            refused = isinstance(error, grpc.aio.AioRpcError) and error.code() in REFUSALS
            wait = (self._schedule.refused if refused else self._schedule.failed)(self._clock())
            reason = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.aio.AioRpcError) else error
            level = logging.DEBUG if str(reason) == self._last_failure else logging.INFO
            self._last_failure = str(reason)
            log.log(
                level,
                "cannot learn %s's methods from its reflection service (%s); its calls take the generic path, "
                "asking again in %.0fs or more",
                self.name,
                reason,
                wait,
            )
            return
        except Exception:  # never let a background question take anything down
            self._schedule.failed(self._clock())
            log.exception("learning %s's methods failed", self.name)
            return
        self._schedule.answered(self._clock())
        self._last_failure = ""
        if self.table.learn(methods):  # handlers built while these were unknown are rebuilt on their next call
            log.info("learnt %d methods of %s from its reflection service", len(methods), self.name)

    async def wait_answer(self) -> None:
        """Wait for the question in flight, if any, to be answered or to fail."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<ReflectionLearner {self.name}: {self.table!r}>"
