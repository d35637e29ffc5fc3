-- Arguments bound to a statement that is still stepping must stay valid while the
-- loop body makes garbage and collects it (issue 9, class 2).
local db <close> = assert(sql.open(":memory:"))
db:exec("CREATE TABLE t(k, v)")
for i = 1, 50 do db:exec("INSERT INTO t VALUES (?, ?)", ("key"):rep(100) .. i, i) end
local q <close> = db:prepare("SELECT v FROM t WHERE k > ?")
for round = 1, 5 do
  local n = 0
  for r in db:rows("SELECT v FROM t WHERE k > ?", ("key"):rep(99) .. round) do
    n = n + 1
    local junk = {}
    for j = 1, 200 do junk[j] = ("junk" .. j):rep(50) end
    collectgarbage(); collectgarbage()
  end
  assert(n == 50, n)
  n = 0
  for r in q:rows(("key"):rep(99) .. round) do
    n = n + 1
    collectgarbage(); collectgarbage()
  end
  assert(n == 50, n)
end
print("ok")
