-- A tour of runtime-owned resources.
--   scopelua run --report scripts/tour.lua [events.jsonl] [out.log]
-- Every file and timer below is owned by a scope and released exactly once, newest
-- first, even if a line makes the script fail half-way.
local input = arg[1] or "scripts/data/events.jsonl"
local output = arg[2] or "out/tour.log"

local lines, bytes = scope(function()
  -- `<close>` releases `src` when this function returns. `log` has no `<close>`: the
  -- scope owns it and releases it when the scope ends, after the deferred function
  -- below (newest first), so that function can still write to it.
  local src <close> = assert(fs.open(input))
  local log = assert(fs.open(output, "w"))
  defer(function(err)
    log:write(err and ("failed: " .. tostring(err)) or "done", "\n")
  end)

  local n, total = 0, 0
  for line in src:lines() do
    local t <close> = timer.measure("line")   -- recorded in the run report
    n, total = n + 1, total + #line
    log:write(n, "\t", #line, "\n")
  end
  return n, total
end)

print(("%d lines, %d bytes from %s; log in %s"):format(lines, bytes, input, output))
