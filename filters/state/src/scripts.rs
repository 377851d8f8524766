//! The Lua scripts that do all the counting, atomically, inside Redis.
//!
//! A script runs alone on its Redis node, so a check and the update it allows can never be
//! split by another gateway's call: 200 concurrent hits on a limit of 50 admit exactly 50. Time
//! is Redis's `TIME`, so the gateways' and services' clocks never matter. Every key a script
//! touches is passed in `KEYS` and shares one consumer's hash tag ([`crate::keys`]), so Redis
//! Cluster runs each script on the one node that owns the slot.
//!
//! The limiter is GCRA, as in the rate-limit filter (`filters/rate-limit/src/gcra.rs`), so a
//! limit means the same whether it is counted in one Envoy or in Redis: `amount` per `period`
//! refills one unit every `interval = period / amount` and holds at most `burst` units
//! (`capacity = interval * burst`); a charge of `c` units moves the theoretical arrival time
//! (TAT) `c * interval` later and is admitted while `TAT - now <= capacity`. No window
//! boundary lets twice the limit through. Times are microseconds since the epoch (Lua numbers
//! are doubles, exact to 2^53: microseconds fit until the year 2255, nanoseconds do not).
//!
//! A counter is a hash per budget or limit: `t` the TAT, `i` the interval it was charged with,
//! and `r:<id>` the units each held reservation took. A sorted set beside it holds each held
//! reservation's expiry. Before deciding anything, a script gives back the units of expired
//! reservations (so an unsettled reservation is reclaimed by the next call on that budget after
//! its TTL). Both keys expire once the bucket is full again and no reservation is held.

/// The part every script begins with: `now`, `load` and `keep`.
macro_rules! prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- The TAT of counter h (expiries x), never before now, once the reservations past their TTL
-- have given their units back: at most 256 per call, so one script never blocks Redis for
-- long; any left are returned by the next calls, and until then the budget only looks fuller.
local function load(h, x)
  local tat = math.max(now, tonumber(redis.call('HGET', h, 't')) or 0)
  local expired = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, 256)
  if #expired > 0 then
    local interval = tonumber(redis.call('HGET', h, 'i')) or 0
    for _, id in ipairs(expired) do
      local held = tonumber(redis.call('HGET', h, 'r:' .. id))
      if held then
        tat = math.max(now, tat - held * interval)
        redis.call('HDEL', h, 'r:' .. id)
      end
      redis.call('ZREM', x, id)
    end
    redis.call('HSET', h, 't', tat)
  end
  return tat
end

-- Keeps h and x until the bucket is full again and the last reservation has expired.
local function keep(h, x, tat)
  local last = redis.call('ZRANGE', x, -1, -1, 'WITHSCORES')
  local horizon = tat
  if last[2] then
    horizon = math.max(horizon, tonumber(last[2]))
  end
  local at = math.ceil(horizon / 1000) + 1000
  redis.call('PEXPIREAT', h, at)
  if last[2] then
    redis.call('PEXPIREAT', x, at)
  end
end
"
    };
}

/// Charges units to several counters at once, or to none.
///
/// KEYS: per counter, its hash then its expiry set. ARGV: mode (`hit`, `reserve` or `lease`),
/// reservation id, TTL in ms, then per counter: interval (µs), capacity (µs), units. `lease`
/// (one counter) first cuts the units to what the lease rule grants.
///
/// Returns `admitted`, then per counter: units remaining, ms until the bucket is full, 1 if it
/// refused, units charged, ms until the refused charge would fit.
pub const CHARGE: &str = concat!(
    prelude!(),
    r"
local mode, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = #KEYS / 2
local tat, interval, capacity, amount, after, over = {}, {}, {}, {}, {}, {}
local admitted = 1
for i = 1, n do
  interval[i] = tonumber(ARGV[3 * i + 1])
  capacity[i] = tonumber(ARGV[3 * i + 2])
  amount[i] = tonumber(ARGV[3 * i + 3])
  tat[i] = load(KEYS[2 * i - 1], KEYS[2 * i])
  if mode == 'lease' then
    -- A quarter of what is left, at least 1 while anything is: leases shrink to nothing as
    -- the budget runs out, and never hand out more than remains.
    local left = math.floor((capacity[i] - (tat[i] - now)) / interval[i])
    amount[i] = math.max(0, math.min(amount[i], left, math.max(1, math.floor(left / 4))))
  end
  after[i] = tat[i] + amount[i] * interval[i]
  over[i] = after[i] - now > capacity[i]
  if over[i] then
    admitted = 0
  end
end
local out = {admitted}
for i = 1, n do
  local h, x = KEYS[2 * i - 1], KEYS[2 * i]
  local charged, retry = 0, 0
  if admitted == 1 and amount[i] > 0 then
    charged = amount[i]
    tat[i] = after[i]
    redis.call('HSET', h, 't', tat[i], 'i', interval[i])
    if mode == 'reserve' then
      redis.call('HSET', h, 'r:' .. id, charged)
      redis.call('ZADD', x, now + ttl * 1000, id)
    end
    keep(h, x, tat[i])
  end
  if over[i] then
    retry = math.ceil((after[i] - capacity[i] - now) / 1000)
  end
  table.insert(out, math.max(0, math.floor((capacity[i] - (tat[i] - now)) / interval[i])))
  table.insert(out, math.ceil((tat[i] - now) / 1000))
  table.insert(out, over[i] and 1 or 0)
  table.insert(out, charged)
  table.insert(out, retry)
end
return out
"
);

/// Ends a reservation on several counters.
///
/// KEYS: per counter, its hash then its expiry set. ARGV: reservation id, `settle` or
/// `release`, then per counter the signed difference in units to charge (settle).
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
  local interval = tonumber(redis.call('HGET', h, 'i'))
  if interval then
    local tat = load(h, x)
    local held = tonumber(redis.call('HGET', h, 'r:' .. id))
    if held then
      local diff = -held
      if not release then
        diff = math.max(tonumber(ARGV[2 + i]), -held)
      end
      -- As the filter's adjust: a charge starts from now at the earliest, a refund never
      -- moves the TAT before now.
      tat = math.max(now, tat + diff * interval)
      redis.call('HSET', h, 't', tat)
      redis.call('HDEL', h, 'r:' .. id)
      redis.call('ZREM', x, id)
      keep(h, x, tat)
      found = 1
    end
  end
  table.insert(out, found)
end
return out
"
);
