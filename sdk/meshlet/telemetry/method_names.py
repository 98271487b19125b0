"""Which method paths metrics and span names call by their name: only methods that exist.

Method paths come from callers, and anyone may invent them. A path is named when the face knows the method
(the sidecar from descriptor sets or reflection; the SDK from its servicers and its stubs) or once a call to it
ended other than UNIMPLEMENTED (a refusal by the mesh itself proves nothing); every other path is ``(unknown)``.
So 600 invented paths add one label value, not 600, and the methods that do exist keep their names however much
junk came first. A backstop bounds the paths named by their answers alone (a server that answers any path OK, or
a caller that gives up before the UNIMPLEMENTED comes back).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from meshlet.errors import MeshError

UNKNOWN_METHOD = "(unknown)"
MAX_ANSWERED = 512  # per direction and service: paths named because they were answered, beyond those known


def every_method(path: str) -> bool:
    """What the SDK declares: its stubs' calls are the app's own code, and its server's stages see only the
    methods its servicers serve (grpc answers UNIMPLEMENTED for the others itself)."""
    return True


class MethodNames:
    """One direction and service's named methods: `declared` (called per path not named yet) says what the face
    knows (the sidecar: its descriptor sets and reflection answers; the SDK: everything); answered paths are
    remembered."""

    __slots__ = ("_answered", "_declared")

    def __init__(self, declared: Callable[[str], bool] = every_method) -> None:
        self._declared = declared
        self._answered: set[str] = set()

    def named(self, path: str, answered: bool = False) -> bool:
        """Whether `path` goes by its name; `answered`: a call to it has just proven the method exists."""
        if path in self._answered or self._declared(path):
            return True
        if answered and len(self._answered) < MAX_ANSWERED:
            self._answered.add(path)
            return True
        return False


def proves_method(code: grpc.StatusCode | str) -> bool:
    """Whether a call that reached a server and ended with `code` (or its name) shows that the method exists."""
    return code is not grpc.StatusCode.UNIMPLEMENTED and code != "UNIMPLEMENTED"


def answered(error: BaseException | None) -> bool:
    """Whether an outbound call or attempt that ended with `error` (None: OK) shows that the method exists: it
    did not end UNIMPLEMENTED, nor refused by this mesh (a MeshError: nothing was asked of the upstream)."""
    if isinstance(error, MeshError):
        return False
    if isinstance(error, grpc.aio.AioRpcError):
        return proves_method(error.code())
    return True
