"""Which event loop a meshlet process runs on: MESHLET_LOOP against whether uvloop is installed."""

from __future__ import annotations

import asyncio
import os

import pytest

from meshlet.errors import ConfigError
from meshlet.runtime import LoopChoice, choose_loop, loop_factory, run


@pytest.mark.parametrize("unset", [None, "", "auto", " AUTO "])
def test_auto_runs_uvloop_where_it_is_installed(unset: str | None) -> None:
    assert choose_loop(unset, uvloop_available=True).name == "uvloop"


def test_auto_falls_back_to_asyncio_where_uvloop_is_missing() -> None:
    choice = choose_loop("auto", uvloop_available=False)
    assert choice.name == "asyncio"
    assert "not installed" in choice.reason  # the start-up line says why this process is on the slower loop


@pytest.mark.parametrize("installed", [True, False])
def test_asyncio_by_name_is_asyncio_whatever_is_installed(installed: bool) -> None:
    assert choose_loop("asyncio", uvloop_available=installed) == LoopChoice("asyncio", "MESHLET_LOOP=asyncio")


def test_uvloop_by_name_is_uvloop() -> None:
    assert choose_loop("uvloop", uvloop_available=True) == LoopChoice("uvloop", "MESHLET_LOOP=uvloop")


def test_uvloop_by_name_where_it_is_missing_is_an_error_not_a_silent_fallback() -> None:
    with pytest.raises(ConfigError) as error:
        choose_loop("uvloop", uvloop_available=False)
    assert "MESHLET_LOOP" in str(error.value)
    assert "pip install uvloop" in str(error.value)


@pytest.mark.parametrize("bogus", ["bogus", "uv", "trio", "asyncio,uvloop"])
def test_any_other_value_names_the_variable_the_value_and_the_choices(bogus: str) -> None:
    with pytest.raises(ConfigError) as error:
        choose_loop(bogus, uvloop_available=True)
    message = str(error.value)
    assert "MESHLET_LOOP" in message
    assert repr(bogus) in message
    assert "asyncio, uvloop or auto" in message


@pytest.mark.parametrize(("name", "loop_module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_runs_main_on_the_chosen_loop(
    monkeypatch: pytest.MonkeyPatch, name: str, loop_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def loop_of_main() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.setenv("MESHLET_LOOP", name)
    with caplog.at_level("INFO", logger="meshlet.runtime"):
        assert run(loop_of_main(), prog="test").startswith(loop_module)
    [line] = [record for record in caplog.records if record.name == "meshlet.runtime"]
    assert getattr(line, "loop", None) == name  # one line at start, naming the loop the process runs on
    assert getattr(line, "loop_class", "").startswith(loop_module)


def test_a_bad_value_exits_2_with_one_line_and_never_starts_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = False

    async def main() -> None:
        nonlocal started
        started = True

    monkeypatch.setenv("MESHLET_LOOP", "bogus")
    with pytest.raises(SystemExit) as exited:
        run(main(), prog="meshlet-sidecar")  # closed unstarted: no "never awaited" warning (warnings are errors)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meshlet-sidecar: invalid config: MESHLET_LOOP = 'bogus'")
    assert not started


def test_asyncio_is_asyncio_own_default_loop() -> None:
    assert loop_factory(LoopChoice("asyncio", "")) is None


async def test_the_tests_run_on_the_loop_meshlet_test_loop_names() -> None:
    """`make test` reruns the pipeline and sidecar suites with MESHLET_TEST_LOOP=uvloop: make sure they are."""
    wanted = os.environ.get("MESHLET_TEST_LOOP", "asyncio")
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == wanted
