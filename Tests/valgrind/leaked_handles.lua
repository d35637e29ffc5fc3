-- Handles of every kind dropped while open: the collector reclaims them, the runtime
-- reports the leak and releases them (also children after their connection, and a
-- connection after its children).
local function drop(i)
  fs.open("leak" .. i % 4 .. ".txt", "w"):write("x")
  io.open("io" .. i % 4 .. ".txt", "w"):write("y")
  timer.measure("dropped")
  local db = sql.open(":memory:")
  db:exec("CREATE TABLE t(x)")
  local s = db:prepare("INSERT INTO t VALUES (?)")
  s:exec(i)
  local tx = db:transaction()
  db:exec("INSERT INTO t VALUES (0)")
  if i % 2 == 0 then db = nil end  -- the connection before or with its children
end
for i = 1, 40 do
  drop(i)
  if i % 5 == 0 then collectgarbage() end
end
collectgarbage(); collectgarbage()
scope(function()
  for i = 1, 10 do drop(i) end
  collectgarbage()
end)
collectgarbage(); collectgarbage()
print("ok")
