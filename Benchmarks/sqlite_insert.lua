-- Insert N rows through a prepared statement, committing every 1000 rows.
--   scopelua run Benchmarks/sqlite_insert.lua OUT.db [N]
local path, n = arg[1], tonumber(arg[2]) or 100000
os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
local db <close> = assert(sql.open(path))
db:exec("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)")
local insert <close> = db:prepare("INSERT INTO events VALUES (?, ?, ?, ?, ?)")
local kinds = {"click", "view", "buy"}
for batch = 0, n - 1, 1000 do
  local tx <close> = db:transaction()
  for i = batch, math.min(batch + 999, n - 1) do
    insert:exec(i, "u" .. (i % 1000), kinds[i % 3 + 1], (i % 10000) / 100, i % 16)
  end
end
print(("rows=%d"):format(db:first("SELECT count(*) AS n FROM events").n))
