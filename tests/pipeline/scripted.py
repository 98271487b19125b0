"""A scripted transport: EndpointChannels whose attempts never leave the process.

The send stage asks it whether an endpoint's channel is connected, then for its multicallable, exactly as it
asks grpc.aio; each invocation is recorded
as an `Attempt` (endpoint, method, metadata, timeout, the messages of a client stream) and answered from a
script: a reply, a failure raised as grpc.aio raises it (with chosen trailers such as grpc-retry-pushback-ms),
a `Stream` of reply messages, a Future the test resolves when it wants the attempt to end, or `refused()`: no
connection could be made, so the attempt ends before any call is started. Everything above
it is the real pipeline (httpx's MockTransport, Linkerd's mock_http).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc.aio import Metadata

from meshlet.call import Method
from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, explained_failure
from meshlet.transport.channels import EndpointChannels, NotConnected

EOF = grpc.aio.EOF
PUSHBACK = "grpc-retry-pushback-ms"


def failure(code: grpc.StatusCode, details: str = "", *, trailers: Sequence[tuple[str, str]] = ()) -> Exception:
    """A failed attempt as grpc.aio reports it."""
    error: Exception = grpc.aio.AioRpcError(code, Metadata(), Metadata(*trailers), details)
    return error


def unavailable(details: str = "Socket closed", *, pushback_ms: str | None = None) -> Exception:
    """UNAVAILABLE after the request may have reached the server (the connection dropped mid-call)."""
    trailers = () if pushback_ms is None else ((PUSHBACK, pushback_ms),)
    return failure(grpc.StatusCode.UNAVAILABLE, details, trailers=trailers)


@dataclass(frozen=True)
class Refused:
    endpoint: Endpoint


def refused(endpoint: Endpoint) -> Refused:
    """No connection to `endpoint` could be made: the attempt ends before its call starts, provably unsent."""
    return Refused(endpoint)


def reply_from(endpoint: Endpoint) -> bytes:
    """The reply an endpoint gives when its script says nothing else."""
    return f"reply from {endpoint}".encode()


class HandshakesFail:
    """An explainer (meshlet.security.handshake_failures in the mesh) that finds every endpoint it is asked about
    failing its TLS handshake."""

    def __init__(self) -> None:
        self.asked: list[Endpoint] = []

    async def __call__(self, failed: NotConnected, endpoint: Endpoint, timeout_s: float) -> grpc.aio.AioRpcError:
        self.asked.append(endpoint)
        info = {"peer": str(endpoint), "failure": "server_certificate_not_trusted"}
        return explained_failure(
            failed, f"TLS handshake with {endpoint} failed", ErrorReason.TLS_HANDSHAKE_FAILED, info
        )


@dataclass
class Stream:
    """A response stream's answer: these messages, then the end, or `error` raised in its place."""

    messages: Sequence[Any]
    error: Exception | None = None


@dataclass(eq=False)
class Attempt:
    """One attempt as the server side of the wire would see it."""

    endpoint: Endpoint
    method: str
    metadata: tuple[tuple[str, Any], ...]
    timeout: float | None
    request: Any
    sent: list[Any] | None = None  # a client stream's messages, as the server read them
    cancelled: bool = False

    def header(self, key: str) -> Any:
        return next((value for name, value in self.metadata if name == key), None)


class ScriptedCall:
    """What the multicallable returns: awaitable for a unary reply, `read()` for a response stream."""

    def __init__(self, attempt: Attempt, answer: Any, client_streaming: bool) -> None:
        self.attempt = attempt
        self._answer = answer
        self._client_streaming = client_streaming
        self._pending: deque[Any] | None = None
        self._error: Exception | None = None
        self._writes_done = asyncio.Event()
        self._callbacks: list[Any] = []

    async def write(self, message: Any) -> None:
        """A client stream written message by message (how the send stage writes them)."""
        if self.attempt.sent is None:
            self.attempt.sent = []
        self.attempt.sent.append(message)

    async def done_writing(self) -> None:
        self._writes_done.set()

    def add_done_callback(self, callback: Any) -> None:
        self._callbacks.append(callback)

    async def _resolve(self) -> Any:
        if self._client_streaming:
            if self.attempt.request is not None and self.attempt.sent is None:
                self.attempt.sent = [message async for message in self.attempt.request]
            elif self.attempt.request is None:
                await self._writes_done.wait()  # the server reads the whole request stream before it answers
                self.attempt.sent = self.attempt.sent or []
        answer = self._answer
        if isinstance(answer, asyncio.Future):
            answer = await answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    def __await__(self) -> Generator[Any, None, Any]:
        return self._resolve().__await__()

    async def read(self) -> Any:
        if self._pending is None:
            stream = await self._resolve()
            assert isinstance(stream, Stream), f"a response stream's script needs a Stream, not {stream!r}"
            self._pending, self._error = deque(stream.messages), stream.error
        if self._pending:
            return self._pending.popleft()
        if self._error is not None:
            raise self._error
        return EOF

    def cancel(self) -> bool:
        self.attempt.cancelled = True
        if isinstance(self._answer, asyncio.Future):
            self._answer.cancel()
        return True

    async def initial_metadata(self) -> Metadata:
        return Metadata()

    async def trailing_metadata(self) -> Metadata:
        return Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""


class _Multicallable:
    def __init__(self, transport: ScriptedChannels, endpoint: Endpoint, method: Method) -> None:
        self._transport = transport
        self._endpoint = endpoint
        self._method = method

    def __call__(
        self, request: Any = None, *, timeout: float | None = None, metadata: Any = None, wait_for_ready: Any = None
    ) -> ScriptedCall:
        attempt = Attempt(self._endpoint, self._method.path, tuple(metadata or ()), timeout, request)
        self._transport.attempts.append(attempt)
        answer = self._transport.answer(self._endpoint)
        return ScriptedCall(attempt, answer, self._method.client_streaming)


class _Channel:
    def __init__(self, transport: ScriptedChannels, endpoint: Endpoint) -> None:
        self._transport = transport
        self.endpoint = endpoint

    def is_ready(self) -> bool:
        return not isinstance(self._transport.peek(self.endpoint), Refused)

    async def connect(self, timeout_s: float, wait_for_ready: bool | None) -> None:
        if isinstance(self._transport.peek(self.endpoint), Refused):
            self._transport.answer(self.endpoint)
            self._transport.refusals.append(Refused(self.endpoint))
            raise NotConnected(grpc.StatusCode.UNAVAILABLE, f"could not connect to {self.endpoint}")

    def callable_for(self, method: Method) -> _Multicallable:
        return _Multicallable(self._transport, self.endpoint, method)


class ScriptedChannels(EndpointChannels):
    """The upstream's channels, answering from a script.

    An attempt takes the first answer queued with `then()` (whichever endpoint it lands on), else the next one
    queued for its endpoint with `script()`, else the endpoint's `always()` answer, else `reply_from(endpoint)`.
    """

    def __init__(self) -> None:
        super().__init__(factory=_no_network)
        self.attempts: list[Attempt] = []
        self.refusals: list[Refused] = []  # attempts that ended before their call: no connection
        self.retired: list[Endpoint] = []
        self._next: deque[Any] = deque()
        self._queued: defaultdict[Endpoint, deque[Any]] = defaultdict(deque)
        self._always: dict[Endpoint, Any] = {}
        self._held: list[asyncio.Future[Any]] = []

    def then(self, *answers: Any) -> None:
        self._next.extend(answers)

    def script(self, endpoint: Endpoint, *answers: Any) -> None:
        self._queued[endpoint].extend(answers)

    def always(self, endpoint: Endpoint, answer: Any) -> None:
        self._always[endpoint] = answer

    def peek(self, endpoint: Endpoint) -> Any:
        """The answer the next attempt to `endpoint` will take, left in place."""
        if self._next:
            return self._next[0]
        if self._queued[endpoint]:
            return self._queued[endpoint][0]
        return self._always.get(endpoint)

    def answer(self, endpoint: Endpoint) -> Any:
        if self._next:
            found = self._next.popleft()
        elif self._queued[endpoint]:
            found = self._queued[endpoint].popleft()
        else:
            found = self._always.get(endpoint, reply_from(endpoint))
        if isinstance(found, asyncio.Future):
            self._held.append(found)
        return found

    def to(self, endpoint: Endpoint) -> list[Attempt]:
        """The attempts that went to `endpoint`."""
        return [attempt for attempt in self.attempts if attempt.endpoint == endpoint]

    def get(self, endpoint: Endpoint) -> Any:
        return _Channel(self, endpoint)

    def retire(self, endpoint: Endpoint) -> None:
        self.retired.append(endpoint)

    async def close(self) -> None:
        """As the upstream closing its channels: attempts still held by the script end, cancelled."""
        for held in self._held:
            held.cancel()

    def __repr__(self) -> str:
        return f"<ScriptedChannels {len(self.attempts)} attempts>"


def _no_network(target: str, options: Any) -> grpc.aio.Channel:
    raise AssertionError(f"a pipeline test tried to dial {target}")
