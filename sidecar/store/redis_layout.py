"""The fleet's data in Redis: every key name, the Lua scripts that write them, and the format
of a public-key registration (docs/scale-out.md, "Key layout").

Fleet-wide keys share the hash tag `{PREFIX}` and a task's keys the tag `{t:TASK}`, so each
script touches the keys of one hash slot only and is atomic on a Redis Cluster too. Both the
store (`sidecar.store.redis`, writes through the outbox) and the fleet reader
(`sidecar.fleet`) use these; nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..revocations import FleetKey

KEY_MARGIN = 60.0
"""Seconds a current signing key stays registered beyond max_ttl without a refresh."""
FLEET_KEY_TYPES = {("OKP", "EdDSA"), ("OKP", "Ed25519"), ("EC", "ES256")}


class Keys:
    """Every Redis key name (docs/scale-out.md, "Key layout")."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        fleet = "{" + prefix + "}"
        self.feed = f"{fleet}:feed"
        self.revocations = f"{fleet}:revocations"
        self.keyset = f"{fleet}:keys"
        self.epoch = f"{fleet}:epoch"
        self._fleet = fleet

    def key(self, kid: str) -> str:
        return f"{self._fleet}:key:{kid}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:task"

    def task_grants(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:grants"

    def grant(self, task_id: str, grant_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:grant:{grant_id}"


# Lua: each script touches keys of one hash slot only, so it is atomic on a Cluster too.
_EXTEND = """
local function extend(key, at)
  if redis.call('PEXPIRETIME', key) < at then redis.call('PEXPIREAT', key, at) end
end
"""
REGISTER = (
    _EXTEND
    + """
-- KEYS: hash [, index]  ARGV: expires_ms, now_ms, index member, field, value, ...
local at = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], at)
if #KEYS > 1 then
  redis.call('ZADD', KEYS[2], at, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
  extend(KEYS[2], at)
end
return 1
"""
)
UPDATE = """
-- KEYS: hash  ARGV: field, value, ...  (never creates a key that would not expire)
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""
PUBLISH = (
    _EXTEND
    + """
-- KEYS: revocation index, stream  ARGV: member, expires_ms, now_ms, minid, detail
local at = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
extend(KEYS[1], at)
return redis.call('XADD', KEYS[2], 'MINID', ARGV[4], '*',
  'kind', 'rev', 'm', ARGV[1], 'x', ARGV[2], 'd', ARGV[5])
"""
)
REGISTER_KEY = (
    _EXTEND
    + """
-- KEYS: key, key index, stream  ARGV: kid, value, expires_ms, now_ms, minid
local at = tonumber(ARGV[3])
local old = redis.call('SET', KEYS[1], ARGV[2], 'PXAT', at, 'GET')
redis.call('ZADD', KEYS[2], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
extend(KEYS[2], at)
if not old then
  redis.call('XADD', KEYS[3], 'MINID', ARGV[5], '*', 'kind', 'key', 'kid', ARGV[1])
end
return 1
"""
)
SNAPSHOT = """
-- KEYS: revocation index, stream, epoch, key index  ARGV: now_ms, epoch candidate, full
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local epoch = redis.call('GET', KEYS[3])
local last, first = '', ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'recorded-first-entry-id' then first = info[i + 1] end
  end
end
local revs, kids = {}, {}
if ARGV[3] == '1' then
  revs = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')
  kids = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[1], '+inf')
end
return {epoch, last, first, revs, kids}
"""


def key_value(jwk: Mapping[str, str], owner: str, expires_at: float) -> str:
    """The registration of a public key: the JWK, who holds its private half, its expiry."""
    public = {k: v for k, v in jwk.items() if k != "d"}  # never a private member, whatever
    return json.dumps(
        {"jwk": public, "sidecar": owner, "exp": round(expires_at, 3)}, separators=(",", ":")
    )


def parse_key(kid: str, value: str | None) -> FleetKey | None:
    """A key registration read from Redis; None unless it is a well-formed public key."""
    if not value:
        return None
    try:
        document = json.loads(value)
        jwk = {str(k): str(v) for k, v in document["jwk"].items()}
        owner = str(document["sidecar"])
        expires_at = float(document["exp"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    # Only the asymmetric keys sidecars sign with, public members only: a registration
    # carrying a private member, a symmetric key or another algorithm is refused outright.
    if (
        jwk.get("kid") != kid
        or (jwk.get("kty"), jwk.get("alg")) not in FLEET_KEY_TYPES
        or {"d", "k", "p", "q"} & set(jwk)
    ):
        return None
    return FleetKey(jwk, expires_at, owner)
