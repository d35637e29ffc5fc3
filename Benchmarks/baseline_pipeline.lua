-- analytics-1 in plain Lua 5.4 with Debian's lua-cjson and lua-sql-sqlite3: what a
-- user would write without scopelua. Every resource is a <close> variable.
--   lua5.4 Benchmarks/baseline_pipeline.lua OUTDIR [--wal] < events.jsonl
-- Writes OUTDIR/events.log and OUTDIR/analytics.db and prints the counts
-- (seen=... kept=... click=... buy=...), as scripts/analytics.lua does.
local cjson = require("cjson")
local luasql = require("luasql.sqlite3")

local outdir = assert(arg[1], "usage: lua5.4 baseline_pipeline.lua OUTDIR [--wal] < events.jsonl")
-- SQLite's default rollback journal, as a user gets it; --wal switches the database to
-- WAL, as scopelua's sql.open does for files (fewer disk syncs per commit).
local wal = arg[2] == "--wal"
local BATCH = 1000

-- A to-be-closed guard: when the variable goes out of scope (normally or by an
-- error), release(object, err) runs.
local function guard(object, release)
  return setmetatable({ object = object }, {
    __close = function(self, err) release(self.object, err) end,
  })
end

local function close_it(object) object:close() end

-- One open transaction on conn: commits when its scope ends normally, rolls back
-- when an error ends it.
local function transaction(conn)
  assert(conn:execute("BEGIN"))
  return guard(conn, function(c, err)
    assert(c:execute(err == nil and "COMMIT" or "ROLLBACK"))
  end)
end

local env <close> = guard(assert(luasql.sqlite3()), close_it)
local conn <close> = guard(assert(env.object:connect(outdir .. "/analytics.db")), close_it)
local db = conn.object
if wal then assert(db:execute("PRAGMA journal_mode=WAL")) end
assert(db:execute("DROP TABLE IF EXISTS events"))
assert(db:execute("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)"))
local log <close> = guard(assert(io.open(outdir .. "/events.log", "w")), close_it)

local decode, encode, format = cjson.decode, cjson.encode, string.format
-- lua-sql-sqlite3 has no prepared statements: every row is a formatted INSERT that
-- SQLite parses again. The values are not escaped: user and kind are generated tokens
-- (u0..u999, click, buy) and escaping them would only slow the baseline down; %.14g is
-- how Lua itself prints numbers and keeps the amounts (cents) exact. cjson writes an
-- empty tag list as {}: it cannot tell an empty array from an empty object.
local INSERT = "INSERT INTO events VALUES (%d, '%s', '%s', %.14g, %d)"
local seen, kept, kinds = 0, 0, {}

-- Reads and handles up to BATCH kept events in one transaction; false at end of input.
local function batch(lines)
  local tx <close> = transaction(db)
  local stored = 0
  while stored < BATCH do
    local line = lines()
    if line == nil then return false end
    seen = seen + 1
    local e = decode(line)
    if e.kind ~= "view" then
      e.bucket = (tonumber(e.user:sub(2)) or 0) % 16
      e.managed = true
      log.object:write(encode(e), "\n")
      assert(db:execute(format(INSERT, e.id, e.user, e.kind, e.amount, e.bucket)))
      kept = kept + 1
      kinds[e.kind] = (kinds[e.kind] or 0) + 1
      stored = stored + 1
    end
  end
  return true
end

local lines = io.stdin:lines()
while batch(lines) do end
print(format("seen=%d kept=%d click=%d buy=%d", seen, kept, kinds.click or 0, kinds.buy or 0))
