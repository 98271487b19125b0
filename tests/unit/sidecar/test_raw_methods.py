"""Which handler a sidecar listener serves a method with, as its method table learns: the generic path while the
kind is unknown (asking the table to learn it), the unary fast path once it is known, and the right handler again
when the kind changes under a running sidecar (an app redeployed with that method streaming)."""

from __future__ import annotations

from typing import Any, NamedTuple

from meshlet.call import Cardinality
from meshlet.transport.raw import Built, RawMethods, generic_handler, unary_handler
from meshlet_sidecar.method_kinds import MethodInfo, MethodTable

ECHO = "/meshlet_api.echo.v1.Echo/Echo"
UNARY = MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)
STREAMING = MethodInfo(Cardinality.UNARY_STREAM, idempotent=True)


class Details(NamedTuple):
    """What grpc hands a generic handler for one call."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


async def never_called(*_: Any) -> Any:  # the handlers are chosen here, never run
    raise AssertionError("not run")


class Listener:
    """Builds handlers from `table` as the sidecar's listeners do, counting how often it is asked."""

    def __init__(self, table: MethodTable) -> None:
        self.table = table
        self.builds = 0

    def handler_for(self, method: str) -> Built:
        self.builds += 1
        known = self.table.get(method)
        if known is not None and known.kind is Cardinality.UNARY_UNARY:
            return unary_handler(never_called), self.table, False
        return generic_handler(never_called), self.table, known is None


def kind_served(methods: RawMethods, path: str = ECHO) -> str:
    handler = methods.service(Details(path))
    return "unary" if handler.unary_unary is not None else "generic"


def test_an_unknown_method_takes_the_generic_path_and_asks_the_table_on_every_call() -> None:
    table, asked = MethodTable(), list[str]()
    table.on_miss(asked.append)
    listener = Listener(table)
    methods = RawMethods(listener.handler_for)

    assert [kind_served(methods), kind_served(methods)] == ["generic", "generic"]
    assert asked == [ECHO, ECHO]
    assert listener.builds == 1


def test_a_method_learnt_unary_takes_the_fast_path_and_stops_asking() -> None:
    table, asked = MethodTable(), list[str]()
    table.on_miss(asked.append)
    listener = Listener(table)
    methods = RawMethods(listener.handler_for)
    kind_served(methods)

    table.learn({ECHO: UNARY})

    assert [kind_served(methods), kind_served(methods)] == ["unary", "unary"]
    assert asked == [ECHO]  # only the call made while the kind was unknown
    assert listener.builds == 2  # built again once, then kept


def test_a_method_whose_kind_changes_under_a_running_sidecar_gets_the_right_handler_again() -> None:
    table = MethodTable()
    table.learn({ECHO: UNARY})
    methods = RawMethods(Listener(table).handler_for)
    assert kind_served(methods) == "unary"

    table.learn({ECHO: STREAMING})

    assert kind_served(methods) == "generic"


def test_a_handler_with_nothing_to_learn_is_built_once() -> None:
    builds = []

    def final(method: str) -> Built:
        builds.append(method)
        return generic_handler(never_called), None, False

    methods = RawMethods(final)
    for _ in range(3):
        kind_served(methods)

    assert builds == [ECHO]
