-- publish.lua: order one publication, keep it in history and PUBLISH it, in one atomic step.
--
-- KEYS[1]  the channel's meta hash: field "e" = epoch, field "s" = latest seq
-- KEYS[2]  the channel's history list, oldest entry first
-- KEYS[3]  optional: the key remembering this publication's idempotency key
--          (same hash tag as the channel's other keys); value "<seq>:<epoch>:<ts>"
-- ARGV[1]  the Redis pub/sub channel to PUBLISH the entry on
-- ARGV[2]  body: the JSON object {"c": channel, "d": data, "f": sender or null}
-- ARGV[3]  a fresh epoch, used only when the channel has no meta hash (never
--          published on, idle past the meta ttl, or its keys were flushed)
-- ARGV[4]  history size: the most entries kept
-- ARGV[5]  history ttl in milliseconds: the oldest entry kept
-- ARGV[6]  expiry of the history list in seconds (an idle channel's history goes away)
-- ARGV[7]  expiry of the meta hash in seconds (refreshed on every publish)
-- ARGV[8]  how long the idempotency key is remembered, in milliseconds (used with KEYS[3])
-- ARGV[9]  the writer: the master's replication ID under Sentinel or Cluster, "" for
--          one Redis.  A meta hash last written under another writer (a replica was
--          promoted, or the slot moved) is treated as missing: that master may have
--          acked publications the data here never received, so the stream must not
--          go on with the same epoch and reuse their seqs (a silent gap).
-- ARGV[10] optional: "SPUBLISH" in a Redis Cluster (sharded pub/sub; ARGV[1] then
--          carries the channel's hash tag), else PUBLISH
--
-- Returns  {seq, epoch, ts}: the seq given to this publication, the channel's
--          epoch, and the acceptance time (Redis TIME, ms since the Unix epoch).
--          With KEYS[3] naming a key that holds a publication of the channel's
--          current epoch: {seq, epoch, ts, 1}, that first publication's values,
--          and nothing else is done (no seq, no history entry, no PUBLISH).  A
--          key left from an epoch that is gone (the meta hash was lost) does not
--          count: the publication is made anew and the key overwritten.
--
-- The entry stored in history and published is "<seq>:<ts>:<epoch>:<body>", so a
-- subscriber builds the publication from the message alone.  A new epoch starts
-- at seq 1 with an empty history: seqs are never renumbered within an epoch.

if redis.replicate_commands then
  redis.replicate_commands()
end

local meta, hist, idem = KEYS[1], KEYS[2], KEYS[3]

local writer = ARGV[9] or ""
local epoch = redis.call("HGET", meta, "e")
if epoch and writer ~= "" and redis.call("HGET", meta, "w") ~= writer then
  epoch = false
end
if idem and epoch then
  local first = redis.call("GET", idem)
  if first then
    local first_seq, first_epoch, first_ts = string.match(first, "^(%d+):([^:]+):(%d+)$")
    if first_epoch == epoch then
      return {tonumber(first_seq), first_epoch, tonumber(first_ts), 1}
    end
  end
end
if not epoch then
  epoch = ARGV[3]
  redis.call("DEL", hist)
  redis.call("HSET", meta, "e", epoch, "s", 0)
  if writer ~= "" then
    redis.call("HSET", meta, "w", writer)
  end
end
local seq = redis.call("HINCRBY", meta, "s", 1)

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ts = string.format("%d", now)

local entry = seq .. ":" .. ts .. ":" .. epoch .. ":" .. ARGV[2]
redis.call("RPUSH", hist, entry)
redis.call("LTRIM", hist, -tonumber(ARGV[4]), -1)

-- Drop entries older than the ttl from the head (entries are in ts order).
local oldest = now - tonumber(ARGV[5])
while true do
  local head = redis.call("LINDEX", hist, 0)
  if not head then break end
  local head_ts = tonumber(string.match(head, "^%d+:(%d+):"))
  if head_ts == nil or head_ts >= oldest then break end
  redis.call("LPOP", hist)
end

redis.call("EXPIRE", hist, ARGV[6])
redis.call("EXPIRE", meta, ARGV[7])
redis.call(ARGV[10] == "SPUBLISH" and "SPUBLISH" or "PUBLISH", ARGV[1], entry)
if idem then
  redis.call("SET", idem, seq .. ":" .. epoch .. ":" .. ts, "PX", ARGV[8])
end

return {seq, epoch, now}
