"""The questions the demo asks of the running mesh: does Consul answer, is a sidecar ready, does an SDK service
answer its gRPC health check, which instances pass their checks, what does a ``/metrics`` page say. Each answers
None (or False) instead of raising when nothing answers, because during a fault that is an answer too.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT = aiohttp.ClientTimeout(total=2.0)


class Probes:
    """One aiohttp session for every probe of one run; `consul_address` is ``http://host:port``."""

    def __init__(self, session: aiohttp.ClientSession, consul_address: str) -> None:
        self._session = session
        self.consul_address = consul_address.rstrip("/")
        token = os.environ.get("CONSUL_HTTP_TOKEN")
        self._consul_headers = {"X-Consul-Token": token} if token else {}

    async def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str] | None:
        try:
            async with self._session.get(url, timeout=TIMEOUT, headers=headers) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError):
            return None

    async def consul_answers(self) -> bool:
        answer = await self.get(f"{self.consul_address}/v1/status/leader", self._consul_headers)
        return answer is not None and answer[0] == 200

    async def ready(self, admin_url: str) -> bool:
        answer = await self.get(f"{admin_url}/ready")
        return answer is not None and answer[0] == 200

    async def passing(self, service: str) -> frozenset[str] | None:
        """``address:port`` of every instance of `service` that passes its checks; None if Consul did not answer."""
        url = f"{self.consul_address}/v1/health/service/{service}?passing=1"
        try:
            async with self._session.get(url, timeout=TIMEOUT, headers=self._consul_headers) as response:
                if response.status != 200:
                    return None
                entries = await response.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        found = set()
        for entry in entries:
            service_entry = entry.get("Service") or {}
            address = service_entry.get("Address") or (entry.get("Node") or {}).get("Address", "")
            found.add(f"{address}:{service_entry.get('Port')}")
        return frozenset(found)

    async def grpc_serving(
        self, target: str, credentials: grpc.ChannelCredentials, options: Sequence[tuple[str, str]]
    ) -> bool:
        """Whether the gRPC server at `target` answers grpc.health.v1 SERVING over mTLS."""
        async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def metrics(self, url: str) -> str | None:
        answer = await self.get(url)
        return answer[1] if answer is not None and answer[0] == 200 else None


@contextlib.contextmanager
def reserved_ports(host: str = "127.0.0.1") -> Iterator[Iterator[int]]:
    """Free ports, each bound until the block ends so that no two are the same; then released for the children.
    (Another process could take one in between: rare on loopback, and the child then fails loudly.)"""
    sockets: list[socket.socket] = []

    def ports() -> Iterator[int]:
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            yield int(sock.getsockname()[1])

    try:
        yield ports()
    finally:
        for sock in sockets:
            sock.close()
