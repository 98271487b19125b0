"""Descriptors of ``edge.services`` learnt from the upstreams' gRPC reflection (``edge.reflection: true``), in
place of ``edge.descriptor_sets``: asked once at start, before any route exists, since the route table is built
from them and never changes while the edge runs.

Each service is asked of its own upstream (``grpc.reflection.v1alpha``, which grpcio, grpc-go, grpc-java and
grpc-js serve; through a sidecar too) over the mesh's own channel: discovery, balancing and mTLS as any call, but
no spans, metrics or access log lines on either side. An upstream not up yet, or one that cannot describe the
service yet, is asked again until ``edge.reflection_timeout``; a service still undescribed then ends the start
with `NotDescribed`, naming it, its upstream and the last answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshlet.call import MESH_OWN_METADATA

log = logging.getLogger("meshlet.edge")

ASK_TIMEOUT_S = 5.0
RETRY_S = 0.5
Files = dict[str, descriptor_pb2.FileDescriptorProto]
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class NotDescribed(Exception):
    """A service no upstream described in time: the edge cannot build its routes."""


class Undescribable(Exception):
    """The reflection service answered, but not with the service's descriptors."""


async def learn_pool(
    services: Mapping[str, str],
    channel: Callable[[str], grpc.aio.Channel],
    timeout_s: float,
    *,
    waiting: set[str] | None = None,
) -> descriptor_pool.DescriptorPool:
    """A pool holding every service of `services` (gRPC service name -> upstream) and the files it imports, asked
    of each upstream's reflection service on `channel(upstream)`. `waiting` holds the services not described yet
    (the edge's /ready names them). Raises NotDescribed after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = set(services) if waiting is None else waiting
    pending.update(services)
    files: Files = {}
    last: dict[str, str] = {}
    while True:
        for service in sorted(pending):
            upstream = services[service]
            left = deadline - loop.time()
            try:
                found = await describe(channel(upstream), service, min(ASK_TIMEOUT_S, max(left, 0.05)), files)
            except grpc.aio.AioRpcError as error:
                last[service] = f"{error.code().name}: {error.details()}"
                continue
            except Undescribable as error:
                last[service] = str(error)
                continue
            files.update(found)
            pending.discard(service)
            log.info("learnt %s from %s's reflection service", service, upstream)
        if not pending:
            return pool_of(files)
        if loop.time() >= deadline:
            service = sorted(pending)[0]
            raise NotDescribed(
                f"no descriptors of {service} from upstream {services[service]}'s reflection service within "
                f"{timeout_s:g}s (edge.reflection_timeout); last answer: {last.get(service, 'none')}: start the "
                "upstream with reflection on, or give the service's descriptors in edge.descriptor_sets instead"
            )
        await asyncio.sleep(min(RETRY_S, max(deadline - loop.time(), 0)))


async def describe(channel: grpc.aio.Channel, service: str, timeout_s: float, known: Mapping[str, object]) -> Files:
    """The file declaring `service` and every file it imports that is not `known` yet."""
    info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    files = await _ask(info, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service), timeout_s)
    if not any(f"{file.package}.{s.name}".lstrip(".") == service for file in files.values() for s in file.service):
        raise Undescribable(f"its answer does not declare the service {service}")
    while missing := sorted(_imports(files.values()) - set(files) - set(known)):
        for name in missing:
            files.update(await _ask(info, reflection_pb2.ServerReflectionRequest(file_by_filename=name), timeout_s))
            if name not in files:
                raise Undescribable(f"it does not send {name}, which {service}'s files import")
    return files


async def _ask(info: grpc.aio.StreamStreamMultiCallable, request: object, timeout_s: float) -> Files:
    files: Files = {}
    async for reply in info(iter([request]), timeout=timeout_s, metadata=MESH_OWN_METADATA):
        if reply.HasField("error_response"):
            error = reply.error_response
            raise Undescribable(f"{_CODE_NAMES.get(error.error_code, error.error_code)}: {error.error_message}")
        for data in reply.file_descriptor_response.file_descriptor_proto:
            try:
                file = descriptor_pb2.FileDescriptorProto.FromString(data)
            except DecodeError as decode:
                raise Undescribable(f"it sent what is no FileDescriptorProto ({decode})") from None
            files[file.name] = file
    return files


def _imports(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> set[str]:
    return {name for file in files for name in file.dependency}


def pool_of(files: Files) -> descriptor_pool.DescriptorPool:
    """A pool of `files`, each added after the files it imports (a pool refuses a file whose imports it lacks)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        for imported in files[name].dependency:
            add(imported)
        pool.Add(files[name])

    for name in sorted(files):
        add(name)
    return pool
