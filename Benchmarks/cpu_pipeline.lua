-- A CPU-bound pipeline for `bench.py workers`: per event, string work on its fields, a
-- 64-bit FNV-1a hash computed in Lua over a string built from the event (4 rounds over
-- about 60 bytes: some 250 multiply-xor steps), and a small aggregation in ctx.state. No
-- file, no database: what it measures is the stages' CPU time, and what the engine adds
-- around it (reading, dispatching, decoding, encoding, writing in order).
--   scopelua run Benchmarks/cpu_pipeline.lua --input events.jsonl --output out.jsonl [--workers N]
--   lua5.4 Benchmarks/cpu_pipeline.lua < events.jsonl > out.jsonl     (the same work in plain Lua, lua-cjson)
-- Deterministic: an event's output depends on that event only, so any number of workers
-- writes the same bytes. Each stage state prints its totals when it closes (on stderr:
-- `cpu: events=... xor=... cents=...`, with `worker N: ` in front with workers); the sums of
-- events and cents and the xor of the xors over the workers are the same for any N.
local byte, format, lower, upper, gsub = string.byte, string.format, string.lower, string.upper, string.gsub
local concat = table.concat

local FNV_OFFSET = -3750763034362895579   -- 0xcbf29ce484222325 as a signed 64-bit integer
local FNV_PRIME = 1099511628211           -- 0x100000001b3; products wrap around (Lua 5.4 integers)
local ROUNDS = 4

local function fnv1a(s, h)
  for i = 1, #s do
    h = (h ~ byte(s, i)) * FNV_PRIME
  end
  return h
end

-- The work on one event (the same in both drivers). `agg` is the stage's aggregation.
local function transform(e, agg)
  local user, kind = e.user, e.kind
  local tags = concat(e.tags, ",")
  e.label = (gsub(format("%s/%s/%s", lower(user), upper(kind), tags), "[aeiouAEIOU]", "_"))
  e.key = format("%s-%08d-%s", upper(user), e.id, (gsub(kind, "(%w)(%w*)", function(a, b) return upper(a) .. b end)))
  local s = format("%d|%s|%s|%.2f|%d|%s|%s", e.id, user, kind, e.amount, e.ts, tags, e.label)
  local h = FNV_OFFSET
  for round = 1, ROUNDS do
    h = fnv1a(s, h ~ round)
  end
  e.hash = format("%016x", h)
  agg.events = agg.events + 1
  agg.xor = agg.xor ~ h
  agg.cents = agg.cents + math.floor(e.amount * 100 + 0.5)
  local k = agg.kinds[kind] or 0
  agg.kinds[kind] = k + 1
  return e
end

local function totals(agg)
  return format("cpu: events=%d xor=%016x cents=%d click=%d view=%d buy=%d", agg.events, agg.xor, agg.cents,
    agg.kinds.click or 0, agg.kinds.view or 0, agg.kinds.buy or 0)
end

local function new_agg() return { events = 0, xor = 0, cents = 0, kinds = {} } end

if stage then
  stage "cpu" {
    open = function(ctx) ctx.state.agg = new_agg() end,
    process = function(ctx, e) return transform(e, ctx.state.agg) end,
    close = function(ctx)
      io.stderr:write(ctx.workers > 1 and ("worker " .. ctx.worker .. ": ") or "", totals(ctx.state.agg), "\n")
    end,
  }
  pipeline "cpu_pipeline" { "cpu" }
else
  -- Plain Lua 5.4: the same transform over stdin, each event encoded to stdout.
  local cjson = require("cjson")
  local decode, encode, write = cjson.decode, cjson.encode, io.write
  local agg = new_agg()
  for line in io.stdin:lines() do
    write(encode(transform(decode(line), agg)), "\n")
  end
  io.stderr:write(totals(agg), "\n")
end
