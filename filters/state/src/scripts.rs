//! The Lua scripts that do all the counting, atomically, inside Redis.
//!
//! A script runs alone on its Redis node, so a check and the update it allows can never be
//! split by another gateway's call: 200 concurrent hits on a limit of 50 admit exactly 50. Time
//! is Redis's `TIME`, so the gateways' and services' clocks never matter. Every key a script
//! touches is passed in `KEYS` and shares one consumer's hash tag ([`crate::keys`]), so Redis
//! Cluster runs each script on the one node that owns the slot.
//!
//! A counter is a hash per budget or limit: `w` the start of its window (ms since the epoch),
//! `n` the window's length (ms), `u` the usage in that window, including held reservations, and
//! `r:<id>` the amount each held reservation took. A sorted set beside it holds each held
//! reservation's expiry. Before deciding anything, a script returns the expired reservations'
//! amounts to the counter (so an unsettled reservation is reclaimed by the next call on that
//! budget after its TTL), and drops a counter whose window has ended. Counters expire in Redis
//! at the end of their window.
//!
//! Amounts are Lua numbers (doubles): the service refuses amounts of 2^53 and more.

/// The part every script begins with: `now` and `load`.
macro_rules! prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The usage of counter h (expiries x) in its window of win ms that holds now, once the
-- reservations past their TTL are returned; a counter of an earlier window is dropped.
local function load(h, x, win)
  local start = now - (now % win)
  if tonumber(redis.call('HGET', h, 'w')) ~= start or tonumber(redis.call('HGET', h, 'n')) ~= win then
    redis.call('DEL', h, x)
    return 0, start
  end
  local used = tonumber(redis.call('HGET', h, 'u')) or 0
  local expired = redis.call('ZRANGEBYSCORE', x, '-inf', now)
  if #expired > 0 then
    for _, id in ipairs(expired) do
      local held = tonumber(redis.call('HGET', h, 'r:' .. id))
      if held then
        used = used - held
        redis.call('HDEL', h, 'r:' .. id)
      end
    end
    redis.call('ZREMRANGEBYSCORE', x, '-inf', now)
    redis.call('HSET', h, 'u', used)
  end
  return used, start
end
"
    };
}

/// Charges an amount to several counters at once, or to none.
///
/// KEYS: per counter, its hash then its expiry set. ARGV: mode (`hit`, `reserve` or `lease`),
/// reservation id, TTL in ms, then per counter: limit, window in ms, amount.
/// `lease` (one counter) first cuts the amount to what the lease rule grants.
///
/// Returns `admitted`, then per counter: remaining after the call, ms until its window resets,
/// 1 if it refused, and the amount charged.
pub const CHARGE: &str = concat!(
    prelude!(),
    r"
local mode, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = #KEYS / 2
local used, start, limit, win, amount, over = {}, {}, {}, {}, {}, {}
local admitted = 1
for i = 1, n do
  limit[i] = tonumber(ARGV[3 * i + 1])
  win[i] = tonumber(ARGV[3 * i + 2])
  amount[i] = tonumber(ARGV[3 * i + 3])
  used[i], start[i] = load(KEYS[2 * i - 1], KEYS[2 * i], win[i])
  if mode == 'lease' then
    -- A quarter of what is left, at least 1 while anything is: leases shrink to nothing as
    -- the budget runs out, and never hand out more than remains.
    local left = limit[i] - used[i]
    amount[i] = math.max(0, math.min(amount[i], left, math.max(1, math.floor(left / 4))))
  end
  over[i] = used[i] + amount[i] > limit[i]
  if over[i] then
    admitted = 0
  end
end
local out = {admitted}
for i = 1, n do
  local h, x = KEYS[2 * i - 1], KEYS[2 * i]
  local charged = 0
  if admitted == 1 and amount[i] > 0 then
    charged = amount[i]
    used[i] = used[i] + charged
    local finish = start[i] + win[i]
    redis.call('HSET', h, 'w', start[i], 'n', win[i], 'u', used[i])
    redis.call('PEXPIREAT', h, finish)
    if mode == 'reserve' then
      redis.call('HSET', h, 'r:' .. id, charged)
      redis.call('ZADD', x, now + ttl, id)
      redis.call('PEXPIREAT', x, finish)
    end
  end
  table.insert(out, math.max(0, limit[i] - used[i]))
  table.insert(out, start[i] + win[i] - now)
  table.insert(out, over[i] and 1 or 0)
  table.insert(out, charged)
end
return out
"
);

/// Ends a reservation on several counters.
///
/// KEYS: per counter, its hash then its expiry set. ARGV: reservation id, `settle` or
/// `release`, then per counter the signed difference to charge (settle).
///
/// Returns per counter 1 if the reservation was still held there, else 0.
pub const SETTLE: &str = concat!(
    prelude!(),
    r"
local id, release = ARGV[1], ARGV[2] == 'release'
local out = {}
for i = 1, #KEYS / 2 do
  local h, x = KEYS[2 * i - 1], KEYS[2 * i]
  local found = 0
  local win = tonumber(redis.call('HGET', h, 'n'))
  if win then
    local used = load(h, x, win)
    local held = tonumber(redis.call('HGET', h, 'r:' .. id))
    if held then
      local diff = -held
      if not release then
        diff = math.max(tonumber(ARGV[2 + i]), -held)
      end
      redis.call('HSET', h, 'u', used + diff)
      redis.call('HDEL', h, 'r:' .. id)
      redis.call('ZREM', x, id)
      found = 1
    end
  end
  table.insert(out, found)
end
return out
"
);
