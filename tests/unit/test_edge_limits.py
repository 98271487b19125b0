"""The edge's rate-limit arithmetic (meshlet_edge.limits.decision), the consumer it charges, plan selection and
the in-process store: pure, with the time as an argument."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from meshlet.config import load_config
from meshlet.config.fields import REDACTED
from meshlet.config.schema import EdgeConfig
from meshlet.errors import ConfigError
from meshlet_edge.caller import Caller
from meshlet_edge.limits.consumer import client_address, consumer_of, networks
from meshlet_edge.limits.decision import Outcome, Plan, Quota, decide, headers, refill, retry_after_s, window_span
from meshlet_edge.limits.memory_store import MemoryStore
from meshlet_edge.limits.policy import Limits, plan_of
from meshlet_edge.limits.redis_store import outcome_of, script_call


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


BUCKET_ONLY = Plan("default", 2.0, 4, ())
QUOTAS = Plan("pro", None, 0, (Quota("minute", 3), Quota("day", 5)))


def test_a_new_bucket_is_full_and_refills_at_its_rate_up_to_its_burst() -> None:
    assert refill(BUCKET_ONLY, None, None, 100.0) == 4.0
    assert refill(BUCKET_ONLY, 0.0, 100.0, 101.0) == 2.0
    assert refill(BUCKET_ONLY, 0.0, 100.0, 200.0) == 4.0


def test_a_clock_behind_the_last_charge_adds_nothing_and_takes_nothing() -> None:
    assert refill(BUCKET_ONLY, 1.5, 100.0, 99.0) == 1.5


def test_the_bucket_refuses_what_it_cannot_pay_and_charges_nothing_then() -> None:
    assert decide(BUCKET_ONLY, 1.0, (), 1) == Outcome(None, 0.0, ())
    refused = decide(BUCKET_ONLY, 0.5, (), 1)
    assert refused == Outcome("rate", 0.5, ())
    assert retry_after_s(BUCKET_ONLY, refused, 1, 0.0) == pytest.approx(0.25)


def test_every_window_is_charged_together_or_none_is() -> None:
    assert decide(QUOTAS, 0.0, (2, 4), 1) == Outcome(None, None, (3, 5))
    assert decide(QUOTAS, 0.0, (2, 5), 1) == Outcome("day", None, (2, 5))  # the minute is not charged either
    assert decide(QUOTAS, 0.0, (3, 0), 1) == Outcome("minute", None, (3, 0))
    both = Plan("both", 1.0, 1, (Quota("minute", 1),))
    assert decide(both, 1.0, (1,), 1) == Outcome("minute", 1.0, (1,))  # the bucket keeps its token


def test_a_cost_counts_as_that_many_requests() -> None:
    assert decide(QUOTAS, 0.0, (1, 1), 2) == Outcome(None, None, (3, 3))
    assert decide(QUOTAS, 0.0, (2, 1), 2).refused_by == "minute"


def test_windows_are_calendar_windows_in_utc() -> None:
    minute = window_span("minute", at("2026-12-07T23:59:42"))
    assert (minute.start, minute.end, minute.label) == (
        at("2026-12-07T23:59:00"),
        at("2026-12-08T00:00:00"),
        "202612072359",
    )
    day = window_span("day", at("2026-12-07T23:59:42"))
    assert (day.start, day.end, day.label) == (at("2026-12-07T00:00:00"), at("2026-12-08T00:00:00"), "20261207")


@pytest.mark.parametrize(
    ("moment", "start", "end"),
    [
        ("2026-02-28T23:59:59", "2026-02-01", "2026-03-01"),
        ("2028-02-29T12:00:00", "2028-02-01", "2028-03-01"),  # a leap year's February
        ("2026-12-31T23:59:59", "2026-12-01", "2027-01-01"),  # into the next year
        ("2027-01-01T00:00:00", "2027-01-01", "2027-02-01"),  # the first instant belongs to the new month
    ],
)
def test_a_month_runs_from_the_first_to_the_first_of_the_next(moment: str, start: str, end: str) -> None:
    span = window_span("month", at(moment))
    assert (span.start, span.end) == (at(start + "T00:00:00"), at(end + "T00:00:00"))


def test_headers_name_the_tightest_limit_and_list_every_policy() -> None:
    plan = Plan("default", 10.0, 10, (Quota("day", 10000),))
    now = at("2026-12-07T12:00:00")
    found = headers(plan, Outcome(None, 9.0, (3,)), now)
    assert found == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "9",
        "RateLimit-Reset": "1",
        "RateLimit-Policy": "10;w=1, 10000;w=86400",
    }
    found = headers(plan, Outcome("day", 9.0, (10000,)), now)
    assert (found["RateLimit-Limit"], found["RateLimit-Remaining"], found["RateLimit-Reset"]) == ("10000", "0", "43200")


def test_the_redis_script_gets_one_key_per_window_and_returns_an_outcome() -> None:
    keys, args = script_call("ip:203.0.113.7", QUOTAS, 1, at("2026-12-07T23:59:42"))
    assert keys == [
        "meshlet:edge:limit:{ip:203.0.113.7}",
        "meshlet:edge:limit:{ip:203.0.113.7}:minute:202612072359",
        "meshlet:edge:limit:{ip:203.0.113.7}:day:20261207",
    ]
    assert args[1:] == [1, "0", 0, "pro", 1, 3, 18, 5, 18, "minute", "day"]
    assert outcome_of([b"", b"", 3, 5]) == Outcome(None, None, (3, 5))
    assert outcome_of([b"rate", b"0.5"]) == Outcome("rate", 0.5, ())


TRUSTED = networks(["10.0.0.0/8", "fd00::/8"])


def test_the_peer_is_the_client_unless_it_is_a_trusted_proxy() -> None:
    assert client_address("203.0.113.7", ["1.2.3.4"], TRUSTED) == "203.0.113.7"  # an untrusted peer's header is ignored
    assert client_address("203.0.113.7", ["1.2.3.4"], ()) == "203.0.113.7"
    assert client_address("10.0.0.2", [], TRUSTED) == "10.0.0.2"


def test_behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() -> None:
    spoofed = ["6.6.6.6, 198.51.100.9, 10.0.0.3"]  # the client wrote 6.6.6.6 itself
    assert client_address("10.0.0.2", spoofed, TRUSTED) == "198.51.100.9"
    assert client_address("10.0.0.2", ["198.51.100.9", "10.0.0.3"], TRUSTED) == "198.51.100.9"  # two headers
    assert client_address("10.0.0.2", ["10.0.0.9, 10.0.0.3"], TRUSTED) == "10.0.0.9"  # all trusted: the farthest
    assert client_address("10.0.0.2", ["garbage, 10.0.0.3"], TRUSTED) == "10.0.0.3"
    assert client_address("::ffff:10.0.0.2", ["[2001:db8::1]:443"], TRUSTED) == "2001:db8::1"


def test_an_authenticated_caller_is_its_own_consumer_with_its_plan() -> None:
    key = Caller("acme", "api_key", "pro", frozenset(), {})
    assert consumer_of(key, "203.0.113.7") == ("api_key:acme", "pro")
    assert consumer_of(Caller("u1", "jwt", None, frozenset(), {}), "203.0.113.7") == ("jwt:u1", None)
    assert consumer_of(Caller("", "anonymous", None, frozenset(), {}), "203.0.113.7") == ("ip:203.0.113.7", None)
    assert consumer_of(None, "203.0.113.7") == ("ip:203.0.113.7", None)


def _limits(**plans: dict[str, int]) -> Limits:
    return Limits(
        EdgeConfig.model_validate({"plans": plans, "limits": {"routes": [{"match": "GET /free/**", "cost": 0}]}})
    )


def test_a_plan_comes_from_the_credentials_else_default() -> None:
    limits = _limits(default={"rate_per_s": 5, "per_day": 100}, pro={"rate_per_s": 100, "burst": 200})
    assert limits.plan("pro") == Plan("pro", 100.0, 200, ())
    assert limits.plan(None) == Plan("default", 5.0, 5, (Quota("day", 100),))
    assert limits.plan("retired") == limits.plan(None)  # a key's plan since removed from the config
    assert limits.cost("GET", "/free/x", "/a.B/C") == 0
    assert limits.cost("GET", "/paid/x", "/a.B/C") == 1


def test_a_plan_name_no_plan_has_falls_back_to_default_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    limits = _limits(default={"per_minute": 1}, pro={"per_minute": 3})
    with caplog.at_level("WARNING", logger="meshlet.edge.limits"):
        found = [limits.plan("platinum") for _ in range(3)] + [limits.plan("gold"), limits.plan("pro")]
    assert [plan.name for plan in found] == ["default", "default", "default", "default", "pro"]
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 2, logged  # once per unknown name, however many requests name it
    assert "no plan 'platinum' in edge.plans" in logged[0]
    assert "no plan 'gold'" in logged[1]


def test_plans_need_a_default_and_a_burst_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="default"):
        EdgeConfig.model_validate({"plans": {"pro": {"rate_per_s": 1}}})
    with pytest.raises(ValueError, match="rate_per_s"):
        EdgeConfig.model_validate({"plans": {"default": {"burst": 3}}})
    with pytest.raises(ValueError, match="Redis URL"):
        EdgeConfig.model_validate({"limits": {"store": "redis:/nohost"}})
    assert (
        plan_of("x", EdgeConfig.model_validate({"plans": {"default": {"rate_per_s": 0.5}}}).plans["default"]).burst == 1
    )


def test_the_memory_store_charges_all_or_nothing_and_starts_each_window_afresh() -> None:
    store = MemoryStore()
    plan = Plan("pro", 1.0, 2, (Quota("minute", 3),))
    now = at("2026-12-07T23:59:58")
    outcomes = [asyncio.run(store.charge("c", plan, 1, now)) for _ in range(3)]
    assert [o.refused_by for o in outcomes] == [None, None, "rate"]
    assert outcomes[2] == Outcome("rate", 0.0, (2,))  # the refusal charged the minute nothing
    later = asyncio.run(store.charge("c", plan, 1, now + 1.0))
    assert later == Outcome(None, 0.0, (3,))
    next_minute = asyncio.run(store.charge("c", plan, 1, now + 3.0))  # 00:00:01, a new minute
    assert next_minute == Outcome(None, 1.0, (1,))
    assert asyncio.run(store.plan_of("c")) == "pro"


def test_the_memory_store_forgets_the_least_recent_consumer_past_its_bound() -> None:
    store = MemoryStore(max_consumers=2)
    plan = Plan("default", None, 0, (Quota("day", 1),))
    for consumer in ("a", "b", "c"):
        store.charge_now(consumer, plan, 1, 0.0)
    assert store.charge_now("a", plan, 1, 0.0).refused_by is None  # forgotten, so starting afresh
    assert store.charge_now("c", plan, 1, 0.0).refused_by == "day"


def test_a_redis_password_never_shows_in_config() -> None:
    config = load_config(overrides={"edge.limits.store": "redis://:s3cret@redis:6379/0"})
    assert config.redacted()["edge"]["limits"]["store"] == f"redis://{REDACTED}@redis:6379/0"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"edge.plans": {"pro": {"rate_per_s": 1}}}, "edge.plans"),
        ({"edge.plans": {"default": {"per_day": 0}}}, "edge.plans.default.per_day"),
        ({"edge.limits.store": "memcached://x"}, "edge.limits.store"),
        ({"edge.limits.on_store_error": "maybe"}, "edge.limits.on_store_error"),
        ({"edge.limits.trusted_proxies": ["10.0.0.0/33"]}, "edge.limits.trusted_proxies"),
    ],
)
def test_a_bad_limits_config_names_its_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=overrides)
    assert raised.value.path.startswith(field), raised.value


def test_a_bad_route_pattern_is_a_config_error_naming_it() -> None:
    config = load_config(overrides={"edge.plans": {"default": {"per_day": 1}}, "edge.limits.routes": [{"match": "x"}]})
    with pytest.raises(ConfigError, match=r"edge\.limits\.routes\[0\]\.match"):
        Limits(config.edge)


def test_an_ipv6_client_is_charged_as_its_64_not_each_address() -> None:
    """A host owns a whole /64: rotating its addresses must not give it a fresh bucket per request."""
    first, rotated = consumer_of(None, "2001:db8:1:2::1"), consumer_of(None, "2001:db8:1:2:aaaa:bbbb:cccc:dddd")
    assert first == rotated == ("ip:2001:db8:1:2::/64", None)
    assert consumer_of(None, "2001:db8:1:3::1") == ("ip:2001:db8:1:3::/64", None)
    assert consumer_of(None, "198.51.100.9") == ("ip:198.51.100.9", None)
    assert consumer_of(None, "unknown") == ("ip:unknown", None)
