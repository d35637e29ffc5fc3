-- analytics-1 on LuaJIT 2.1 (Lua 5.1: no <close>), with the Lua 5.1 builds of lua-cjson
-- and lua-sql-sqlite3 that Debian's packages ship: the fastest Lua a user could pick.
--   luajit Benchmarks/baseline_pipeline_jit.lua OUTDIR [--wal] < events.jsonl
-- Same work and output as baseline_pipeline.lua; resources are released by a
-- pcall-based helper instead of to-be-closed variables.
local cjson = require("cjson")
local luasql = require("luasql.sqlite3")

local outdir = assert(arg[1], "usage: luajit baseline_pipeline_jit.lua OUTDIR [--wal] < events.jsonl")
-- SQLite's default rollback journal, as a user gets it; --wal switches the database to
-- WAL, as scopelua's sql.open does for files (fewer disk syncs per commit).
local wal = arg[2] == "--wal"
local BATCH = 1000

-- using(object, release, body): body(object), then release(object, err) whether
-- body returned or raised; a raised error is raised again after the release.
local function using(object, release, body)
  local ok, result = pcall(body, object)
  release(object, (not ok) and result or nil)
  if not ok then error(result, 0) end
  return result
end

local function close_it(object) object:close() end

local function end_transaction(db, err)
  assert(db:execute(err == nil and "COMMIT" or "ROLLBACK"))
end

local decode, encode, format = cjson.decode, cjson.encode, string.format
-- lua-sql-sqlite3 has no prepared statements: every row is a formatted INSERT that
-- SQLite parses again. The values are not escaped: user and kind are generated tokens
-- (u0..u999, click, buy) and escaping them would only slow the baseline down; %.14g is
-- how Lua itself prints numbers and keeps the amounts (cents) exact. cjson writes an
-- empty tag list as {}: it cannot tell an empty array from an empty object.
local INSERT = "INSERT INTO events VALUES (%d, '%s', '%s', %.14g, %d)"
local seen, kept, kinds = 0, 0, {}

local function run(db, log, lines)
  -- one transaction per BATCH kept events; false once the input is exhausted
  local function batch(db)
    local stored = 0
    while stored < BATCH do
      local line = lines()
      if line == nil then return false end
      seen = seen + 1
      local e = decode(line)
      if e.kind ~= "view" then
        e.bucket = (tonumber(e.user:sub(2)) or 0) % 16
        e.managed = true
        log:write(encode(e), "\n")
        assert(db:execute(format(INSERT, e.id, e.user, e.kind, e.amount, e.bucket)))
        kept = kept + 1
        kinds[e.kind] = (kinds[e.kind] or 0) + 1
        stored = stored + 1
      end
    end
    return true
  end
  repeat
    assert(db:execute("BEGIN"))
  until not using(db, end_transaction, batch)
end

using(assert(luasql.sqlite3()), close_it, function(env)
  using(assert(env:connect(outdir .. "/analytics.db")), close_it, function(db)
    if wal then assert(db:execute("PRAGMA journal_mode=WAL")) end
    assert(db:execute("DROP TABLE IF EXISTS events"))
    assert(db:execute("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)"))
    using(assert(io.open(outdir .. "/events.log", "w")), close_it, function(log)
      run(db, log, io.stdin:lines())
    end)
  end)
end)
print(format("seen=%d kept=%d click=%d buy=%d", seen, kept, kinds.click or 0, kinds.buy or 0))
