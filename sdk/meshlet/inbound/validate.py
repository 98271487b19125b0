"""Stage: check the request against the buf.validate constraints of its proto; a request that breaks one is
refused INVALID_ARGUMENT with a google.rpc.BadRequest naming each field, rule and why, before the handler runs.

The one stage that reads the payload, and only where ``inbound.validate: true`` puts it in the list. Below the
rate limits (a refused caller costs no decoding) and inside the span and the metrics (an invalid request is a call
that was answered, traced and counted with its code). `decode` turns the call's request into its message: the
SDK's servicers get it typed already; the sidecar's raw bytes are parsed with the type its method table learnt (a
method whose descriptor it does not know gets no stage at all). A request stream is not checked in this slice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.errors import RequestInvalid
from meshlet.validation import Decode, RequestValidator, summary


class ValidateRequest:
    __slots__ = ("_decode", "_validator")

    def __init__(self, validator: RequestValidator, decode: Decode) -> None:
        self._validator = validator
        self._decode = decode

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        message = self._decode(call.request)
        if message is not None:
            bad = self._validator.check(message)
            if bad is not None:
                raise RequestInvalid(summary(message.DESCRIPTOR.name, bad), bad, method=call.method)
        return await next(call)
