"""The edge's HTTP stages, composed once into the handler of each of its routes, and its header hooks.

A stage is ``async (request, next) -> response``: the shape of an aiohttp middleware, and of the mesh's call
pipeline (meshlet.pipeline), whose `compose` chains them here too. Composed once at start, a request pays one
coroutine frame per stage; aiohttp's own middlewares would cost a wrapper and a partial each, made again for every
request. A header hook adds headers to every answer, whole or streamed, just before it is sent; one
``on_response_prepare`` callback runs them all, in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from aiohttp import web

from meshlet.pipeline import Stage, compose

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HttpStage = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
HeaderHook = Callable[[web.Request, web.StreamResponse], None]
PrepareHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def staged(stages: Sequence[HttpStage], handler: Handler) -> Handler:
    """`handler` behind `stages` (``stages[0]`` sees the request first), as the coroutine function aiohttp wants."""
    chain = compose(cast(Sequence[Stage[web.Request]], stages), handler)

    async def handle(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await chain(request)
        return response

    return handle


def prepare_hook(hooks: Sequence[HeaderHook]) -> PrepareHook:
    """One ``on_response_prepare`` callback that runs `hooks` in order."""
    ordered = tuple(hooks)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for hook in ordered:
            hook(request, response)

    return add_headers
