"""`meshlet trace` over a span file the pipeline really wrote: the JSON-lines exporter, reading it back, choosing
the trace worth showing, and the waterfall a user reads (span names, attempts with endpoints, retries inline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from meshlet.cli import main
from meshlet.config import TelemetryConfig
from meshlet.telemetry.tracing import build_tracing
from meshlet.telemetry.waterfall import load_spans, pick_trace, render_waterfall, traces
from tests.pipeline.conftest import GET, A, B
from tests.pipeline.scripted import unavailable
from tests.pipeline.test_tracing import TracedRig


async def write_spans(path: Path) -> TracedRig:
    """Two calls to inventory through a traced pipeline: one answered at once, one after a retry."""
    tracing = build_tracing(TelemetryConfig(span_file=path), service="checkout", env={})
    assert tracing is not None
    rig = TracedRig(tracing=tracing)
    rig.serve(A, B)
    try:
        await rig.unary(GET)
        rig.transport.then(unavailable())
        await rig.unary(GET)
    finally:
        await rig.close()
        tracing.shutdown()  # flushes the file
    return rig


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")


def rendered(path: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["trace", *args, "--spans", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_span_file_holds_every_span_with_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    await write_spans(path)

    grouped = traces(load_spans([path]))

    assert sorted(len(spans) for spans in grouped.values()) == [2, 3]  # call + attempt; call + two attempts
    for spans in grouped.values():
        (root,) = [span for span in spans if span.parent_id is None]
        assert root.service == "checkout"
        assert all(span.parent_id == root.span_id for span in spans if span is not root)


async def test_meshlet_trace_shows_the_retried_trace_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spans.jsonl"
    rig = await write_spans(path)

    code, out, _ = rendered(path, capsys=capsys)

    assert code == 0
    assert "→ shop.inventory.v1.Inventory/GetStock" in out  # the call (an INTERNAL span), marked as outgoing
    first, second = rig.attempts[1:]
    assert f"attempt 1 → {first.endpoint.address}:{first.endpoint.port}" in out
    assert f"attempt 2 → {second.endpoint.address}:{second.endpoint.port}" in out
    assert "retry.scheduled" in out
    assert "UNAVAILABLE" in out
    assert "1 retries" in out
    assert out.count("✗ UNAVAILABLE: Socket closed") == 1, "why attempt 1 failed, under it and only there"


async def test_meshlet_trace_finds_a_trace_by_its_id_prefix_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spans.jsonl"
    await write_spans(path)
    grouped = traces(load_spans([path]))
    quiet = next(trace_id for trace_id, spans in grouped.items() if len(spans) == 2)
    assert pick_trace(grouped) != quiet

    code, out, _ = rendered(path, quiet[:8], capsys=capsys)
    assert code == 0
    assert f"trace {quiet}" in out
    assert "attempt 2" not in out

    code, out, _ = rendered(path, "--list", capsys=capsys)
    assert code == 0
    assert all(trace_id in out for trace_id in grouped)


async def test_meshlet_trace_explains_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spans.jsonl"
    await write_spans(path)

    code, _, err = rendered(path, "ffffffff", capsys=capsys)
    assert code == 1
    assert "--list" in err

    code, _, err = rendered(tmp_path / "missing.jsonl", capsys=capsys)
    assert code == 2
    assert "missing.jsonl" in err

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n{}\n")
    code, _, err = rendered(garbage, capsys=capsys)
    assert code == 2
    assert "garbage.jsonl:1" in err


async def test_the_waterfall_renders_in_a_narrow_terminal(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    await write_spans(path)
    grouped = traces(load_spans([path]))
    console = Console(width=80, record=True, force_terminal=False)

    console.print(render_waterfall(grouped[pick_trace(grouped) or ""], width=10))

    text = console.export_text()
    assert "attempt 2 → 127.0.0.1:500" in text
    assert "UNAVAILABLE" in text


async def test_meshlet_trace_takes_the_trace_id_after_the_span_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--spans a.jsonl b.jsonl 32bd`: argparse hands the id to --spans; it is still the id."""
    path, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    await write_spans(path)
    other.write_text("")
    grouped = traces(load_spans([path]))
    quiet = next(trace_id for trace_id, spans in grouped.items() if len(spans) == 2)

    code = main(["trace", "--spans", str(path), str(other), quiet[:6]])

    out = capsys.readouterr().out
    assert code == 0
    assert f"trace {quiet}" in out


async def test_meshlet_trace_names_the_argument_that_is_neither_a_file_nor_an_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spans.jsonl"
    await write_spans(path)

    code = main(["trace", "--spans", str(path), str(tmp_path / "gone.jsonl")])
    assert code == 2
    assert f"{tmp_path / 'gone.jsonl'}: no such span file" in capsys.readouterr().err

    code = main(["trace", "not-an-id", "--spans", str(path)])
    assert code == 2
    assert "'not-an-id' is neither a trace id (hex digits) nor a span file" in capsys.readouterr().err

    code = main(["trace", "--spans", str(path), "32bd", "77aa"])
    assert code == 2
    assert "2 trace ids given (32bd, 77aa)" in capsys.readouterr().err


async def test_meshlet_trace_in_a_pipe_prints_whole_rows_not_80_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS")
    path = tmp_path / "spans.jsonl"
    rig = await write_spans(path)

    code, out, _ = rendered(path, capsys=capsys)

    assert code == 0
    lines = out.splitlines()
    assert 80 < max(map(len, lines)) < 300, "the rows' own width: not cut at 80, not padded to the console's"
    second = rig.attempts[2].endpoint
    assert f"attempt 2 → {second.address}:{second.port} after" in out
    assert "…" not in out
