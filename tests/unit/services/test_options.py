"""The shop's command line: flags beat SHOP_* variables, which beat the defaults; bad values exit 2 naming them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshlet_shop.faults import Faults
from meshlet_shop.plain import parse_options


def test_defaults() -> None:
    options = parse_options("inventory", "", [], {})
    assert (options.host, options.port, options.instance_id) == ("127.0.0.1", 50052, "inventory-50052")
    assert (options.faults, options.faults_file) == (Faults(), None)


def test_flags_beat_the_environment() -> None:
    env = {"SHOP_PORT": "6000", "SHOP_ERROR_RATE": "0.5", "SHOP_ERROR_CODE": "internal", "SHOP_FAULTS_FILE": "f.json"}
    options = parse_options("payments", "", ["--port", "7000", "--latency-ms", "20"], env)
    assert (options.port, options.instance_id, options.faults_file) == (7000, "payments-7000", Path("f.json"))
    assert options.faults == Faults(0.5, "INTERNAL", 20.0)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--port", "http"], {}, "--port"),
        (["--error-rate", "2"], {}, "--error-rate"),
        (["--error-code", "OK"], {}, "--error-code"),
        (["--latency-ms", "-5"], {}, "--latency-ms"),
        (["--colour"], {}, "--colour"),
        ([], {"SHOP_ERROR_RATE": "lots"}, "SHOP_ERROR_RATE"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options("orders", "", argv, env)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_orders_and_inventory_keep_their_state_in_memory_unless_given_a_redis_url() -> None:
    assert parse_options("inventory", "", [], {}).store == "memory"
    url = "redis://redis:6379/0"
    assert parse_options("orders", "", [], {"SHOP_STORE": url}).store == url
    assert parse_options("inventory", "", ["--store", "rediss://[::1]:6380/2"], {"SHOP_STORE": url}).store == (
        "rediss://[::1]:6380/2"
    )


@pytest.mark.parametrize("store", ["postgres://db/shop", "redis://", "redis://redis:port/0", "redis://redis/zero"])
def test_a_bad_store_url_exits_2_naming_the_variable(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options("orders", "", [], {"SHOP_STORE": store})
    assert exited.value.code == 2
    assert "SHOP_STORE" in capsys.readouterr().err


def test_only_the_stateful_services_take_a_store(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_options("payments", "", ["--store", "redis://redis:6379/0"], {})
    assert "--store" in capsys.readouterr().err


def test_plain_apps_import_nothing_of_meshlet() -> None:
    """inventory and payments are apps that know nothing of the mesh: the sidecar does it all for them."""
    code = (
        "import sys, meshlet_shop.inventory.__main__, meshlet_shop.payments.__main__\n"
        "leaked = sorted(m for m in sys.modules if m == 'meshlet' or m.startswith('meshlet.'))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
