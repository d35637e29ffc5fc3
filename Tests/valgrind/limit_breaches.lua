-- Stages that breach their limits while they hold handles: an endless loop (inside a
-- coroutine and under a pcall that swallows errors), a memory bomb (through table
-- growth and through a string buffer), an instruction budget; each event is skipped
-- and what it acquired is released, the hook and the allocator's counting are undone
-- after each call, and the run goes on.
local db = assert(sql.open(":memory:"))
db:exec("CREATE TABLE t(x)")
stage "hostile" {
  limits = { time = 0.1, instructions = 5e6, memory = "4MB" },
  on_error = "skip",
  process = function(ctx, e)
    local f <close> = assert(fs.open("scratch.txt", "w"))
    local tx = db:transaction()
    local t = timer.measure("hostile")
    f:write(e.n)
    if e.kind == "loop" then
      pcall(function() while true do end end)
    elseif e.kind == "coroutine" then
      local co = coroutine.wrap(function() while true do coroutine.yield() end end)
      while true do pcall(co) end
    elseif e.kind == "table" then
      local big = {} for i = 1, 1e8 do big[i] = i end
    elseif e.kind == "string" then
      local ok = pcall(string.rep, "x", 64 * 1024 * 1024)
    elseif e.kind == "count" then
      local s = 0 for i = 1, 1e9 do s = s + i end
    end
    db:exec("INSERT INTO t VALUES (" .. e.n .. ")")
    tx:commit()
    return e
  end,
}
local p = pipeline "p" { "hostile" }
local kinds = { "loop", "ok", "coroutine", "table", "ok", "string", "count", "ok" }
local input = {}
for i, kind in ipairs(kinds) do input[i] = { n = i, kind = kind } end
local kept = {}
local report = p:run{ input = input, output = function(e) kept[#kept + 1] = e.n end }
assert(table.concat(kept, ",") == "2,5,8", table.concat(kept, ","))
assert(report.skipped == 5, report.skipped)
local b = report.stages.hostile.breaches
assert(b.time + b.instructions == 3 and b.memory == 2, ("%d %d %d"):format(b.time, b.instructions, b.memory))
local rows = {}
for r in db:rows("SELECT x FROM t ORDER BY x") do rows[#rows + 1] = r.x end
assert(table.concat(rows, ",") == "2,5,8", table.concat(rows, ","))
print("ok")
