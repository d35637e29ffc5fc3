-- A database stage with cleanup, on a real SQLite file (exercise 2 of the design notes).
--   scopelua run scripts/db_cleanup.lua [events.jsonl] [out.db]
-- Events go into SQLite in transactions of 500. A batch that hits a bad event is rolled
-- back as a whole (the transaction is released with the error), the script goes on with
-- the next batch, and the connection, statement and input file are released at the end
-- whatever happens.
local input = arg[1] or "scripts/data/events.jsonl"
local path = arg[2] or "out/events.db"

local db <close> = assert(sql.open(path))                  -- owns its statements and transactions
db:exec("DROP TABLE IF EXISTS events")
db:exec("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT NOT NULL, kind TEXT, amount REAL)")
local insert <close> = db:prepare("INSERT INTO events VALUES (?, ?, ?, ?)")

local src <close> = assert(fs.open(input))
local batch, stored, lost = {}, 0, 0

local function flush()
  local ok, err = pcall(function()
    local tx <close> = db:transaction()                      -- commits at the end of the block...
    for _, e in ipairs(batch) do insert:exec(e.id, e.user, e.kind, e.amount) end
  end)                                                       -- ...or rolls back if it ends by error
  if ok then stored = stored + #batch else
    lost = lost + #batch
    io.stderr:write("batch rolled back: ", tostring(err), "\n")
  end
  batch = {}
end

for line in src:lines() do
  local e = json.decode(line)
  if e.id == 1234 then e.user = nil end                      -- a bad event: NOT NULL fails
  batch[#batch + 1] = e
  if #batch == 500 then flush() end
end
flush()

local n = db:first("SELECT count(*) AS n FROM events").n
print(("stored %d events (%d in rolled-back batches); table has %d rows"):format(stored, lost, n))
