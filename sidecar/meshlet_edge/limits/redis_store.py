"""The Redis store (``edge.limits.store: redis://HOST:PORT/DB``): every edge replica charges the same counters, so
a plan's limits hold across all of them. One round trip per request: a Lua script (run atomically by Redis)
refills the bucket, checks every window, and charges all of them or none, the steps of
meshlet_edge.limits.decision.decide; the time and the windows' labels come from the edge (replicas keep their
clocks in step with NTP; a clock a little behind never adds tokens).

Keys, per consumer (one hash tag, so a Redis Cluster keeps them on one shard): ``meshlet:edge:limit:{<consumer>}``
(a hash: the bucket's tokens and time, the consumer's last plan) and ``...:{<consumer>}:<window>:<label>`` (a
count), each expiring once it no longer matters.

Why not the ``limits`` library: its strategies are fixed, moving and sliding windows (no token bucket), its
fixed windows start at a consumer's first request rather than on the calendar (a month is not a fixed number
of seconds), and each limit is a separate hit, so "refused if any refuses, nothing charged then" across a bucket
and three windows would take several round trips and would not be atomic.

The client: meshlet_edge.redis_client, shared with the cache's Redis store.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshlet_edge.limits.decision import Outcome, Plan, window_span
from meshlet_edge.redis_client import redis_client, where

if TYPE_CHECKING:
    pass

PREFIX = "meshlet:edge:limit:"

# KEYS[1]: the consumer's hash; KEYS[2..]: one count per quota window.
# ARGV: now, cost, rate (0: no bucket), burst, plan, bucket ttl, then (limit, ttl) per window.
# Returns {refused_by ("" when allowed), tokens ("" without a bucket), count of each window...}.
SCRIPT = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local refused = ''
local tokens = burst
local updated = now
if rate > 0 then
  local state = redis.call('HMGET', KEYS[1], 't', 'u')
  if state[1] then
    tokens = tonumber(state[1])
    updated = tonumber(state[2])
    if now > updated then
      tokens = math.min(burst, tokens + (now - updated) * rate)
      updated = now
    end
  end
  if tokens < cost then refused = 'rate' end  -- decision.BUCKET
end
local used = {}
for i = 2, #KEYS do
  used[i - 1] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if refused == '' and used[i - 1] + cost > tonumber(ARGV[5 + 2 * (i - 1)]) then
    refused = ARGV[6 + 2 * (#KEYS - 1) + i - 1]
  end
end
if refused == '' and cost > 0 then
  local ttl = tonumber(ARGV[6])
  if rate > 0 then
    tokens = tokens - cost
    redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', updated), 'p', ARGV[5])
  else
    redis.call('HSET', KEYS[1], 'p', ARGV[5])
  end
  for i = 2, #KEYS do
    used[i - 1] = redis.call('INCRBY', KEYS[i], cost)
    local window_ttl = tonumber(ARGV[6 + 2 * (i - 1)])
    redis.call('EXPIRE', KEYS[i], window_ttl)
    if window_ttl > ttl then ttl = window_ttl end
  end
  redis.call('EXPIRE', KEYS[1], ttl)
end
local reply = {refused, rate > 0 and string.format('%.17g', tokens) or ''}
for i = 1, #used do reply[#reply + 1] = used[i] end
return reply
"""


class RedisStore:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.where = where(url)
        self._redis = redis_client(url, timeout_s, field="edge.limits.store")
        self._script = self._redis.register_script(SCRIPT)  # EVALSHA, and EVAL once after a Redis restart

    async def charge(self, consumer: str, plan: Plan, cost: int, now: float) -> Outcome:
        keys, args = script_call(consumer, plan, cost, now)
        reply = await self._script(keys=keys, args=args)
        return outcome_of(reply)

    async def plan_of(self, consumer: str) -> str | None:
        found = await self._redis.hget(_consumer_key(consumer), "p")
        return found.decode() if isinstance(found, bytes) else found

    async def close(self) -> None:
        await self._redis.aclose()


def _consumer_key(consumer: str) -> str:
    return PREFIX + "{" + consumer + "}"


def script_call(consumer: str, plan: Plan, cost: int, now: float) -> tuple[list[str], list[Any]]:
    """The script's KEYS and ARGV for one decision."""
    base = _consumer_key(consumer)
    keys = [base]
    limits: list[Any] = []
    names: list[str] = []
    for quota in plan.quotas:
        span = window_span(quota.window, now)
        keys.append(f"{base}:{quota.window}:{span.label}")
        limits += [quota.limit, max(1, math.ceil(span.end - now))]
        names.append(quota.window)
    bucket_ttl = max(1, math.ceil(plan.refill_s))
    args = [repr(now), cost, repr(plan.rate_per_s or 0), plan.burst, plan.name, bucket_ttl, *limits, *names]
    return keys, args


def outcome_of(reply: list[Any]) -> Outcome:
    refused, tokens, *used = reply
    refused_by = refused.decode() if isinstance(refused, bytes) else str(refused)
    tokens_text = tokens.decode() if isinstance(tokens, bytes) else str(tokens)
    return Outcome(
        refused_by or None,
        float(tokens_text) if tokens_text else None,
        tuple(int(count) for count in used),
    )
