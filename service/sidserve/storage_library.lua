#!lua name=sidserve___TAG__
-- The `sidserve` Redis Function library: the one place that reads and writes SID buckets in Redis
-- (sidserve/storage.py loads it with FUNCTION LOAD and documents the key layout). storage.py fills
-- in the tag of the library and function names: a hash of this file, so a changed library loads
-- beside the old one (rolling deploys) and loading the same code twice is a no-op.

-- KEYS: the bucket of each ID; ARGV: fingerprints (f bytes each, concatenated), f, value width w.
-- Returns {values (w bytes per ID, zeros when unknown), found ('1' or '0' per ID)}.
local function read(keys, args)
  local fields, f, w = args[1], tonumber(args[2]), tonumber(args[3])
  local zero = string.rep('\0', w)
  local values, found = {}, {}
  local call, sub = redis.call, string.sub
  for i = 1, #keys do
    local v = call('HGET', keys[i], sub(fields, i * f - f + 1, i * f))
    if v then
      if #v ~= w then
        return redis.error_reply('ERR sidserve: ' .. #v .. '-byte value in ' .. keys[i] .. ', expected ' .. w)
      end
      values[i] = v
      found[i] = '1'
    else
      values[i] = zero
      found[i] = '0'
    end
  end
  return {table.concat(values), table.concat(found)}
end

-- Update notices: a write may pass ARGV channel and the n items' IDs as records (2-byte
-- little-endian length, then the ID; codec.id_records). The records of the items whose stored
-- value changed ('u') are then PUBLISHed on the channel, in the same atomic call as the write.
-- Returns the n records, nil without a channel, false when they do not parse (checked before
-- anything is written: an error after a write would not undo it).
local function id_records(channel, ids, n)
  if not channel then return nil end
  local records, pos = {}, 1
  for i = 1, n do
    local lo, hi = string.byte(ids, pos, pos + 1)
    if not hi then return false end
    local stop = pos + 1 + lo + 256 * hi
    records[i] = string.sub(ids, pos, stop)
    pos = stop + 1
  end
  if pos ~= #ids + 1 then return false end
  return records
end

local function publish_updates(channel, records, status, n)
  if not records then return end
  local updated = {}
  for i = 1, n do
    if status[i] == 'u' then updated[#updated + 1] = records[i] end
  end
  -- pcall: the write is applied by now, so a refused notice (an ACL user without this channel)
  -- must not turn it into an error; readers that cannot subscribe fall back to their short TTL.
  if #updated > 0 then redis.pcall('PUBLISH', channel, table.concat(updated)) end
end

-- KEYS: the bucket of each item; ARGV: fingerprints, values (w bytes each), f, w[, channel, IDs].
-- Returns one status per item: 'c' created, 'u' updated, 'n' unchanged. All or nothing: the first
-- pass only reads (a wrong key type fails there), the second only writes.
local function write(keys, args)
  local fields, values, f, w = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local n = #keys
  if #fields ~= n * f or #values ~= n * w then
    return redis.error_reply('ERR sidserve: arguments do not match ' .. n .. ' keys')
  end
  local records = id_records(args[5], args[6], n)
  if records == false then return redis.error_reply('ERR sidserve: malformed ID records') end
  local status, pending = {}, {}
  for i = 1, n do
    local field = string.sub(fields, i * f - f + 1, i * f)
    local new = string.sub(values, i * w - w + 1, i * w)
    local slot = keys[i] .. '\n' .. field
    local old = pending[slot]
    if old == nil then old = redis.call('HGET', keys[i], field) end
    if not old then status[i] = 'c' elseif old == new then status[i] = 'n' else status[i] = 'u' end
    pending[slot] = new
  end
  for i = 1, n do
    if status[i] ~= 'n' then
      redis.call('HSET', keys[i], string.sub(fields, i * f - f + 1, i * f), string.sub(values, i * w - w + 1, i * w))
    end
  end
  publish_updates(args[5], records, status, n)
  return table.concat(status)
end

-- Collision index (SIDSERVE_COLLISION_INDEX): a value is the packed codes (w - 4 bytes), then k,
-- the item's collision index, uint32 little-endian. A counter bucket maps packed codes to the
-- next k of that SID (keys in the same {version:group} tag as the buckets).
local function le32(k)
  return string.char(k % 256, math.floor(k / 256) % 256, math.floor(k / 65536) % 256, math.floor(k / 16777216))
end

-- KEYS: the bucket of each of the n items, then (single Redis) the counter bucket of each item's
-- SID; ARGV: fingerprints, values (w bytes each: codes, then a k used only without counter
-- keys), f, w[, channel, IDs] (update notices, as for write). An item whose stored codes equal the new ones keeps its value and k ('n'); any
-- other gets the SID counter's next k (or the k given) and 'c' / 'u'. Returns {statuses, each
-- item's k (4 bytes)}. All or nothing like write: the first pass only reads, the second writes.
local function write_indexed(keys, args)
  local fields, values, f, w = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local sub, cw, n = string.sub, w - 4, #fields / f
  local counters = #keys == 2 * n
  if (#keys ~= n and not counters) or #values ~= n * w then
    return redis.error_reply('ERR sidserve: arguments do not match ' .. #keys .. ' keys')
  end
  local records = id_records(args[5], args[6], n)
  if records == false then return redis.error_reply('ERR sidserve: malformed ID records') end
  local status, out, pending, next_k, drawn_by = {}, {}, {}, {}, {}
  for i = 1, n do
    local field = sub(fields, i * f - f + 1, i * f)
    local new = sub(values, i * w - w + 1, i * w)
    local codes = sub(new, 1, cw)
    local slot = keys[i] .. '\n' .. field
    local old = pending[slot]
    if old == nil then old = redis.call('HGET', keys[i], field) end
    if old and #old ~= w then
      return redis.error_reply('ERR sidserve: ' .. #old .. '-byte value in ' .. keys[i] .. ', expected ' .. w)
    end
    if old and sub(old, 1, cw) == codes then
      status[i], out[i] = 'n', old
    else
      if old then status[i] = 'u' else status[i] = 'c' end
      if counters then
        local counter = keys[n + i] .. '\n' .. codes
        local k = next_k[counter]
        if k == nil then k = tonumber(redis.call('HGET', keys[n + i], codes) or 0) end
        if k >= 4294967296 then return redis.error_reply('ERR sidserve: collision index overflow') end
        next_k[counter], drawn_by[counter] = k + 1, i
        new = codes .. le32(k)
      end
      out[i] = new
    end
    pending[slot] = out[i]
  end
  local ks = {}
  for i = 1, n do
    if status[i] ~= 'n' then redis.call('HSET', keys[i], sub(fields, i * f - f + 1, i * f), out[i]) end
    ks[i] = sub(out[i], cw + 1, w)
  end
  for counter, i in pairs(drawn_by) do
    redis.call('HSET', keys[n + i], sub(out[i], 1, cw), string.format('%d', next_k[counter]))
  end
  publish_updates(args[5], records, status, n)
  return {table.concat(status), table.concat(ks)}
end

-- KEYS: the counter bucket of each SID (one slot); ARGV: the SIDs' packed codes (cw bytes each),
-- cw. Draws each SID's next k (HINCRBY: no two calls get the same k). Returns the k's, 4 bytes each.
local function draw(keys, args)
  local codes, cw = args[1], tonumber(args[2])
  if #codes ~= #keys * cw then
    return redis.error_reply('ERR sidserve: arguments do not match ' .. #keys .. ' keys')
  end
  local ks = {}
  for i = 1, #keys do
    local k = redis.call('HINCRBY', keys[i], string.sub(codes, i * cw - cw + 1, i * cw), 1) - 1
    if k >= 4294967296 then return redis.error_reply('ERR sidserve: collision index overflow') end
    ks[i] = le32(k)
  end
  return table.concat(ks)
end

redis.register_function{function_name='sidserve_read___TAG__', callback=read, flags={'no-writes'}}
redis.register_function('sidserve_write___TAG__', write)
redis.register_function('sidserve_write_indexed___TAG__', write_indexed)
redis.register_function('sidserve_draw___TAG__', draw)
