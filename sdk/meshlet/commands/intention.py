"""``meshlet intention create|delete|list|check``: Consul's intentions from the command line, against the agent at
``CONSUL_HTTP_ADDR`` (with ``CONSUL_HTTP_TOKEN`` and ``CONSUL_CACERT``), the dev agent or a real Consul.

It behaves as ``consul intention`` does, so what is learnt here carries over: ``create`` refuses while an
intention for the pair exists unless ``--replace`` is given, and ``check`` prints ``Allowed`` or ``Denied`` and
exits 0 or 1 (2 when Consul cannot answer). It speaks the HTTP API's exact-pair endpoints
(``/v1/connect/intentions/exact``, ``/v1/connect/intentions``, ``/v1/connect/intentions/check``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2

Intention = Mapping[str, Any]

_PAIR_VERBS = (
    ("delete", "delete the intention SOURCE => DESTINATION"),
    ("check", "would SOURCE be allowed to call DESTINATION? prints Allowed (exit 0) or Denied (exit 1)"),
)


class IntentionFailed(Exception):
    """What went wrong, in one line that says what to do; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    intention = commands.add_parser(
        "intention",
        help="create, delete, list and check Consul intentions (as `consul intention` does)",
        description="Manage Consul's intentions (who may call whom) at $CONSUL_HTTP_ADDR, with $CONSUL_HTTP_TOKEN "
        "and $CONSUL_CACERT: the dev agent or a real Consul. SOURCE and DESTINATION are service names or '*'.",
    )
    verbs = intention.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser(
        "create",
        help="create an intention SOURCE => DESTINATION",
        description="Create an intention. Refused while one exists for the pair, unless --replace.",
    )
    action = create.add_mutually_exclusive_group()
    action.add_argument("--allow", dest="action", action="store_const", const="allow", help="allow (the default)")
    action.add_argument("--deny", dest="action", action="store_const", const="deny", help="deny")
    create.add_argument("--replace", action="store_true", help="replace the pair's intention if there is one")
    create.add_argument("--description", default="", help="free text stored with the intention")
    create.set_defaults(action="allow")
    pairs = [create, *(verbs.add_parser(verb, help=what, description=what) for verb, what in _PAIR_VERBS)]
    verbs.add_parser("list", help="list every intention", description="List every intention, in Consul's order.")
    for verb in pairs:
        verb.add_argument("source", metavar="SOURCE")
        verb.add_argument("destination", metavar="DESTINATION")


def run(args: argparse.Namespace) -> int:
    from meshlet import runtime
    from meshlet.config import load_config
    from meshlet.errors import ConfigError

    for word in ("source", "destination"):
        if not getattr(args, word, "x").strip():  # "$SOURCE" unset: asked of Consul, "" reads as a verdict
            print(
                f"meshlet intention {args.verb}: {word.upper()} is empty: give a service name or '*'", file=sys.stderr
            )
            return EXIT_ERROR
    try:
        consul = load_config(None).consul
    except ConfigError as error:
        print(f"meshlet intention: {error}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return runtime.run(_run(args, consul), prog="meshlet intention")
    except IntentionFailed as failure:
        print(f"meshlet intention {args.verb}: {failure}", file=sys.stderr)
        return failure.code


async def _run(args: argparse.Namespace, consul_config: Any) -> int:
    from meshlet.discovery.consul_client import consul_client

    token = consul_config.token.get_secret_value() if consul_config.token is not None else None
    cacert = str(consul_config.cacert) if consul_config.cacert is not None else None
    address = consul_config.address
    client = consul_client(address, token=token, ca_file=cacert)
    verb: Callable[[Any, argparse.Namespace], Awaitable[int]] = _VERBS[args.verb]
    try:
        return await verb(client.connect.intentions, args)
    except IntentionFailed:
        raise
    except Exception as error:  # py-consul and aiohttp raise many kinds; each is the agent's answer or absence
        code = EXIT_ERROR if args.verb == "check" else EXIT_FAILED
        raise IntentionFailed(f"Consul at {address} {_describe(error)}", code) from None
    finally:
        await client.close()


async def _create(intentions: Any, args: argparse.Namespace) -> int:
    source, destination, action = args.source, args.destination, args.action
    existing = await intentions.read(source, destination)
    if existing is not None and not args.replace:
        raise IntentionFailed(
            f"an intention {describe(existing)} already exists; to replace it run: meshlet intention create "
            f"--{action} --replace {shlex.quote(source)} {shlex.quote(destination)}"
        )
    await intentions.upsert(source, destination, action=action, description=args.description)
    print(f"Created: {source} => {destination} ({action})")
    return EXIT_OK


async def _delete(intentions: Any, args: argparse.Namespace) -> int:
    if await intentions.read(args.source, args.destination) is None:
        raise IntentionFailed(
            f"no intention {args.source} => {args.destination}: `meshlet intention list` shows the ones there are"
        )
    await intentions.delete(args.source, args.destination)
    print("Intention deleted.")
    return EXIT_OK


async def _list(intentions: Any, args: argparse.Namespace) -> int:
    print(render_table(await intentions.list() or []), end="")
    return EXIT_OK


async def _check(intentions: Any, args: argparse.Namespace) -> int:
    allowed = await intentions.check(args.source, args.destination)
    print("Allowed" if allowed else "Denied")
    return EXIT_OK if allowed else EXIT_FAILED


_VERBS: dict[str, Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
    "create": _create,
    "delete": _delete,
    "list": _list,
    "check": _check,
}


def describe(intention: Intention) -> str:
    """``web => db (allow)``, as Consul's CLI writes an intention; an L7 one has permissions instead of an action."""
    action = str(intention.get("Action") or "").lower() or "L7 permissions"
    return f"{intention.get('SourceName')} => {intention.get('DestinationName')} ({action})"


def render_table(intentions: list[Intention]) -> str:
    """Source, action, destination and precedence, one intention a line, in columns (``consul intention list``)."""
    rows = [("Source", "Action", "Destination", "Precedence")]
    rows += [
        (
            str(i.get("SourceName")),
            str(i.get("Action") or "L7").lower(),
            str(i.get("DestinationName")),
            str(i.get("Precedence", "")),
        )
        for i in intentions
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + f"  {row[3]}\n"
        for row in rows
    )


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) or "Cannot connect" in text:
        return f"cannot be reached ({text}): start `meshlet dev-agent` or set CONSUL_HTTP_ADDR to the agent's address"
    return f"refused the request: {text}"
