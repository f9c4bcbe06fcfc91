-- history.lua: a channel's top (epoch, latest seq) and its kept entries after a position.
--
-- KEYS[1]  the channel's meta hash: field "e" = epoch, field "s" = latest seq
-- KEYS[2]  the channel's history list, oldest entry first
-- ARGV[1]  a fresh epoch, used only when the channel has no meta hash yet: the
--          epoch is fixed here so that a subscriber of an empty channel and the
--          channel's first publication agree on it
-- ARGV[2]  the epoch of the position to continue from; "" when no entries are wanted
-- ARGV[3]  the seq of that position
-- ARGV[4]  expiry of the meta hash in seconds (refreshed by every read)
-- ARGV[5]  the writer (see publish.lua ARGV[9]): a meta hash last written under
--          another writer gets a fresh epoch, as a missing one does
--
-- Returns  {epoch, top, now, entry...}: the channel's epoch and latest seq, Redis
--          TIME in ms, then the kept entries ("<seq>:<ts>:<epoch>:<body>", oldest
--          first) whose seq is above ARGV[3], when ARGV[2] is the current epoch
--          and ARGV[3] is behind the top; otherwise no entries.  The caller drops
--          entries older than the history ttl and decides whether they continue
--          the position without a gap.

if redis.replicate_commands then
  redis.replicate_commands()
end

local meta, hist = KEYS[1], KEYS[2]

local writer = ARGV[5] or ""
local epoch = redis.call("HGET", meta, "e")
if epoch and writer ~= "" and redis.call("HGET", meta, "w") ~= writer then
  epoch = false
end
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call("DEL", hist)
  redis.call("HSET", meta, "e", epoch, "s", 0)
  if writer ~= "" then
    redis.call("HSET", meta, "w", writer)
  end
else
  top = tonumber(redis.call("HGET", meta, "s")) or 0
end
redis.call("EXPIRE", meta, ARGV[4])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {epoch, top, now}

local since = tonumber(ARGV[3]) or 0
if ARGV[2] ~= epoch or since >= top or since < 0 then
  return out
end

local head = redis.call("LINDEX", hist, 0)
if not head then
  return out
end
local first = tonumber(string.match(head, "^(%d+):"))
local start = since + 1 - first
if start < 0 then
  -- History no longer reaches back to the position: one entry shows the gap.
  local entries = redis.call("LRANGE", hist, 0, 0)
  out[4] = entries[1]
  return out
end
local entries = redis.call("LRANGE", hist, start, -1)
for i = 1, #entries do
  out[3 + i] = entries[i]
end
return out
