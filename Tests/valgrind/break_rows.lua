-- Leaving db:rows / stmt:rows loops early: break, break with the loop variable
-- captured (Lua 5.4.4 skips the closing value then), error, return, goto, and a loop
-- abandoned inside a coroutine; the statements are finalized by whoever gets there
-- first (<close>, the scope, the connection).
local db <close> = assert(sql.open("rows.db"))
db:exec("CREATE TABLE t(x, s)")
local ins = db:prepare("INSERT INTO t VALUES (?, ?)")
for i = 1, 200 do ins:exec(i, ("s"):rep(i)) end
local q = db:prepare("SELECT x, s FROM t WHERE x > ? ORDER BY x")

for round = 1, 20 do
  for r in db:rows("SELECT x FROM t") do break end
  for r in q:rows(round) do local keep = function() return r end; break end
  pcall(function() for r in db:rows("SELECT x FROM t WHERE x > ?", round) do error("in loop") end end)
  local function first() for r in q:rows(0) do return r.x end end
  assert(first() == 1)
  for r in db:rows("SELECT s FROM t") do goto next end
  ::next::
  scope(function()
    local co = coroutine.wrap(function()
      for r in db:rows("SELECT x FROM t") do
        local capture = function() return r end
        coroutine.yield(r.x)
      end
    end)
    co()
  end)
  collectgarbage()
end
-- DROP TABLE succeeds only once no statement is left running on t.
db:exec("CREATE TABLE u(y)")
q:release(); ins:release()
collectgarbage(); collectgarbage()
db:exec("DROP TABLE t")
print("ok")
