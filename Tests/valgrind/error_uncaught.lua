-- exit: 1
-- An uncaught error with nested scopes, files, a transaction and defers still open:
-- the runtime releases every scope (the transaction rolls back) before it reports.
local db = sql.open("uncaught.db")
db:exec("CREATE TABLE t(x)")
local tx = db:transaction()
db:exec("INSERT INTO t VALUES (1)")
local log = fs.open("uncaught.log", "w")
log:setvbuf("full")
log:write("written before the error\n")
scope(function()
  defer(function(e) log:write("defer saw: ", tostring(e), "\n") end)
  local rows = db:prepare("SELECT x FROM t")
  for r in rows:rows() do
    scope(function()
      local t <close> = timer.measure("inner")
      error("uncaught in the middle")
    end)
  end
end)
