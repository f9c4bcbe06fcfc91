-- Presence of one channel (docs/protocol.md section 11): the logic of
-- gateway.core.presence.PresenceTable, atomically inside Redis.
--
-- KEYS (all hash-tagged by the channel, so one slot in a Redis Cluster):
--   1 entries zset:   member -> expiry (ms, Redis TIME)
--   2 counts hash:    member -> connections of that entry
--   3 totals hash:    sub -> connections of that sub in the cluster
--   4 subs zset:      subs with a total > 0, all scored 0 (sorted by ZRANGEBYLEX)
--   5 anonymous:      string, anonymous connections and poll clients
-- A member is "<kind><len(owner)>:<owner><id>": kind "s" (id = sub) or "a"
-- (anonymous); owner = a node id, or "" for a long-poll lease.
--
-- ARGV[1] = "u" (update) or "q" (query), followed by "s" in a Redis Cluster (events
-- go out with SPUBLISH); ARGV[2] = the pub/sub channel that
-- join/leave events go to ("P" .. JSON ["join","alice","leave","bob",...]).
--   update: ARGV[3..] = member, count, ttl_ms, ... (count 0 removes; an expiry
--           only ever moves later).  Returns the number of events.
--   query:  ARGV[3] = limit, ARGV[4] = after ("" for the start).  Returns
--           {count, anonymous, more (0/1), sub, connections, sub, connections, ...}.
-- Both first remove expired entries (their leaves are published).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local events = {}

local function set(member, count, expiry)
  local kind = string.sub(member, 1, 1)
  local colon = string.find(member, ':', 2, true)
  local n = tonumber(string.sub(member, 2, colon - 1))
  local id = string.sub(member, colon + 1 + n)
  local old = tonumber(redis.call('HGET', KEYS[2], member) or '0')
  if count > 0 then
    redis.call('HSET', KEYS[2], member, count)
    redis.call('ZADD', KEYS[1], 'GT', expiry, member)
  else
    redis.call('HDEL', KEYS[2], member)
    redis.call('ZREM', KEYS[1], member)
  end
  local delta = count - old
  if delta == 0 then
    return
  end
  if kind == 's' then
    local before = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    local total = before + delta
    if total > 0 then
      redis.call('HSET', KEYS[3], id, total)
      if before <= 0 then
        redis.call('ZADD', KEYS[4], 0, id)
        events[#events + 1] = 'join'
        events[#events + 1] = id
      end
    elseif before > 0 then
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      events[#events + 1] = 'leave'
      events[#events + 1] = id
    end
  else
    local anon = tonumber(redis.call('GET', KEYS[5]) or '0') + delta
    if anon > 0 then
      redis.call('SET', KEYS[5], anon)
    else
      redis.call('DEL', KEYS[5])
    end
  end
end

-- Sweep: entries past their expiry leave (bounded per call; the rest next time).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 10000)
for _, member in ipairs(expired) do
  set(member, 0, 0)
end

local result
if string.sub(ARGV[1], 1, 1) == 'u' then
  local longest = 0
  for i = 3, #ARGV, 3 do
    local ttl = tonumber(ARGV[i + 2])
    if ttl > longest then
      longest = ttl
    end
    set(ARGV[i], tonumber(ARGV[i + 1]), now + ttl)
  end
  -- Keys of a channel whose every node died go away on their own.
  local keep = longest + 1000
  for k = 1, 5 do
    local left = redis.call('PTTL', KEYS[k])
    if left >= 0 and left < keep then
      redis.call('PEXPIRE', KEYS[k], keep)
    elseif left == -1 then
      redis.call('PEXPIRE', KEYS[k], keep)
    end
  end
  result = #events / 2
else
  local limit = tonumber(ARGV[3])
  local start = '-'
  if ARGV[4] ~= '' then
    start = '(' .. ARGV[4]
  end
  local subs = redis.call('ZRANGEBYLEX', KEYS[4], start, '+', 'LIMIT', 0, limit + 1)
  local more = 0
  if #subs > limit then
    more = 1
    subs[#subs] = nil
  end
  result = {redis.call('ZCARD', KEYS[4]), tonumber(redis.call('GET', KEYS[5]) or '0'), more}
  if #subs > 0 then
    local counts = redis.call('HMGET', KEYS[3], unpack(subs))
    for i, sub in ipairs(subs) do
      result[#result + 1] = sub
      result[#result + 1] = tonumber(counts[i] or '0')
    end
  end
end

if #events > 0 then
  redis.call(string.sub(ARGV[1], 2, 2) == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[2], 'P' .. cjson.encode(events))
end
return result
