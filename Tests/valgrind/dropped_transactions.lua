-- Transactions and savepoints dropped without a release, reclaimed by the collector
-- while new ones are being made on the same connection (issue 9, class 16): every
-- transaction the script uses correctly still commits. The collector runs all the
-- time (pause 0), so finalizers run inside db:transaction() and db:exec().
collectgarbage("incremental", 0, 100)
local db <close> = assert(sql.open("tx.db"))
db:exec("CREATE TABLE t(x)")
local failed = {}
local function correct(i)
  local ok, e = pcall(function()
    local tx <close> = db:transaction()
    db:exec("INSERT INTO t VALUES (?)", i)
  end)
  if not ok then failed[#failed + 1] = e end
end
-- Top-level transactions, each with a dropped savepoint inside.
for i = 1, 300 do
  do
    local tx <close> = db:transaction()
    db:exec("INSERT INTO t VALUES (?)", -i)
    db:transaction()                      -- a savepoint, dropped
  end
  correct(i)
end
-- Savepoints dropped inside one long transaction, correctly used ones in between.
do
  local outer <close> = db:transaction()
  for i = 1, 2000 do
    db:transaction()                      -- dropped
    correct(1000 + i)
  end
end
collectgarbage(); collectgarbage()
-- A dropped transaction after all that, then new ones.
db:transaction()
collectgarbage(); collectgarbage()
correct(5000)
collectgarbage(); collectgarbage()
assert(#failed == 0, #failed .. " correctly used transactions failed, the first: " .. tostring(failed[1]))
print("ok")
