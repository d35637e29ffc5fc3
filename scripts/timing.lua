-- Exercise 3: timing measurement inside a scope.
--   scopelua run scripts/timing.lua --input scripts/data/events.jsonl --output none --report
-- timer.measure is a resource like any other: released at the end of its block (or of
-- the event's task scope if the code forgets), it records the elapsed time under its
-- label; --report (or p:run's report table) shows count, total, p50, p99 and max.
stage "score" {
  process = function(ctx, e)
    local t <close> = timer.measure("score")          -- released when process returns
    local s = 0
    for i = 1, 50 do s = s + (e.amount * i) % 7 end
    e.score = s
    if e.kind == "buy" then
      local slow = timer.measure("buy_lookup")          -- no <close>: the task scope releases it
      for i = 1, 200 do s = s + i % 3 end
    end
    return e
  end,
}

pipeline "timed" { "score" }
