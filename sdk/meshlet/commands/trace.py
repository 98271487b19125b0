"""``meshlet trace``: one trace from span files (``telemetry.span_file``) as a waterfall.

``--spans`` takes every word after it, so ``meshlet trace --spans a.jsonl b.jsonl 32bd`` hands the trace id to
it as a file: every word is therefore sorted here, wherever it was written. An existing file is a span file, a
word of hex digits that names no file is the trace id, anything else is an error that names the word.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

TRACE_ID = re.compile(r"[0-9a-fA-F]{1,32}")
BAR_MIN, BAR_MAX = 10, 60
TEXT_COLUMNS = 110  # what the columns beside the time line take at most
FULL_WIDTH = 10_000  # wider than any row: in a pipe nothing is cut


class UsageError(ValueError):
    """A command line that names no trace or no readable file: exit 2 with the message."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = commands.add_parser(
        "trace",
        help="show a trace as a waterfall, from span files",
        description="Show one trace from span files (telemetry.span_file) as a waterfall: spans under their "
        "parents on one time line, retry attempts with their endpoints, retries and breaker events inline. "
        "The trace id may come before or after the files.",
    )
    trace.add_argument(
        "words", nargs="*", metavar="TRACE_ID", help="a trace id or its prefix (default: the most retried, slowest)"
    )
    trace.add_argument(
        "--spans",
        nargs="+",
        type=Path,
        default=[Path(p) for p in os.environ.get("MESHLET_TELEMETRY__SPAN_FILE", "").split(os.pathsep) if p],
        metavar="PATH",
        help="span files, one per process (default: $MESHLET_TELEMETRY__SPAN_FILE)",
    )
    trace.add_argument("--list", action="store_true", help="list the traces in the files instead, one line each")


def sort_words(words: Sequence[str], spans: Sequence[Path]) -> tuple[str | None, list[Path]]:
    """The trace id and the span files among every word of the command line, wherever each was written."""
    ids: list[str] = []
    files: list[Path] = []
    for word, after_spans in [*((word, False) for word in words), *((str(path), True) for path in spans)]:
        if Path(word).is_file():
            files.append(Path(word))
        elif TRACE_ID.fullmatch(word):
            ids.append(word.lower())
        elif after_spans:
            raise UsageError(f"{word}: no such span file; pass the telemetry.span_file of each process")
        else:
            raise UsageError(f"{word!r} is neither a trace id (hex digits) nor a span file")
    if len(ids) > 1:
        raise UsageError(f"{len(ids)} trace ids given ({', '.join(ids)}) and no file by those names: pass one id")
    return (ids[0] if ids else None), files


def run(args: argparse.Namespace) -> int:
    """0 shown, 1 no such trace (or no spans), 2 bad input (no or unreadable files, an unknown word)."""
    from meshlet.telemetry.span_file import SpanFileError
    from meshlet.telemetry.waterfall import find_trace, load_spans, pick_trace, render_waterfall, trace_summary, traces

    try:
        trace_id, paths = sort_words(args.words, args.spans)
    except UsageError as error:
        print(f"meshlet trace: {error}", file=sys.stderr)
        return 2
    if not paths:
        print(
            "meshlet trace: no span files: pass --spans PATH... (the telemetry.span_file of each process)",
            file=sys.stderr,
        )
        return 2
    try:
        grouped = traces(load_spans(paths))
    except SpanFileError as error:
        print(f"meshlet trace: {error}", file=sys.stderr)
        return 2
    if not grouped:
        print(
            f"meshlet trace: no spans in {', '.join(map(str, paths))}: has the process made any calls?", file=sys.stderr
        )
        return 1
    console = output_console()
    if args.list:
        for spans in sorted(grouped.values(), key=lambda spans: spans[0].start_ns):
            console.print(trace_summary(spans), highlight=False)
        return 0
    chosen = find_trace(grouped, trace_id) if trace_id else pick_trace(grouped)
    if chosen is None:
        print(
            f"meshlet trace: no single trace {trace_id!r} in the files ({len(grouped)} traces): "
            "run `meshlet trace --list --spans ...` to see their ids",
            file=sys.stderr,
        )
        return 1
    bar = BAR_MAX if console.width >= FULL_WIDTH else max(BAR_MIN, min(BAR_MAX, console.width - TEXT_COLUMNS))
    console.print(render_waterfall(grouped[chosen], width=bar))
    return 0


def output_console() -> Console:
    """The terminal's width when writing to one; in a pipe or a file the rows' full width (rich would cut them
    at 80 columns), unless $COLUMNS says otherwise."""
    from rich.console import Console

    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(width=FULL_WIDTH)
