"""Choosing the shop's store: the URL as logs show it, and a Redis URL without the redis package installed."""

from __future__ import annotations

import sys

import pytest

from meshlet_shop.inventory.stock import InProcessStock
from meshlet_shop.inventory.stock import open_storage as open_stock
from meshlet_shop.orders.store import InProcessOrders
from meshlet_shop.orders.store import open_storage as open_orders
from meshlet_shop.shared_store import StoreSetupError, where


def test_logs_show_the_store_without_its_password() -> None:
    assert where("redis://:s3cret@redis:6379/0") == "redis://redis:6379/0"
    assert where("rediss://user:s3cret@[::1]:6380/2") == "rediss://[::1]:6380/2"


def test_memory_is_the_in_process_store() -> None:
    assert isinstance(open_stock("memory"), InProcessStock)
    assert isinstance(open_orders("memory"), InProcessOrders)


def test_a_redis_url_without_the_redis_package_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import redis.asyncio now raises ImportError
    for open_storage in (open_stock, open_orders):
        with pytest.raises(StoreSetupError, match=r"pip install 'meshlet\[shop-redis\]'"):
            open_storage("redis://127.0.0.1:1/0")
