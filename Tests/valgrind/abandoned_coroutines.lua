-- Coroutines suspended while they hold handles (a <close> file, a timer, a rows loop,
-- a transaction) and then abandoned: inside a scope (which releases what they
-- acquired) and at the top level (the collector reclaims the coroutine, then the
-- handles).
local db = assert(sql.open(":memory:"))
db:exec("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)")
local function holder(i)
  return coroutine.create(function()
    local f <close> = assert(fs.open("co" .. i % 3 .. ".txt", "w"))
    local t <close> = timer.measure("co")
    local tx = db:transaction()
    for r in db:rows("SELECT x FROM t") do
      f:write(r.x)
      coroutine.yield(r.x)
    end
  end)
end
for i = 1, 30 do
  scope(function()
    local co = holder(i)
    assert(coroutine.resume(co))
  end)
end
local kept = {}
for i = 1, 30 do
  local co = holder(i)
  assert(coroutine.resume(co))
  if i % 3 == 0 then kept[#kept + 1] = co end
end
collectgarbage(); collectgarbage()
kept = nil
collectgarbage(); collectgarbage()
db:release()
collectgarbage()
print("ok")
