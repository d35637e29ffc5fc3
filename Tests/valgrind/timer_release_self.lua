-- A timer.after callback that releases its own handle and collects garbage, and a
-- timer.every callback that releases itself and another timer (issue 9, class 1).
local fired = 0
stage "s" {
  open = function(ctx)
    local t
    t = timer.after(0, function()
      fired = fired + 1
      t:release(); t = nil
      collectgarbage(); collectgarbage()
    end)
    local a, b
    a = timer.every(0.001, function()
      fired = fired + 1
      a:release(); a = nil
      if b then b:release(); b = nil end
      collectgarbage(); collectgarbage()
    end)
    b = timer.every(0.001, function() fired = fired + 1 end)
    timer.after(0, function() collectgarbage(); collectgarbage() end)
  end,
  process = function(ctx, e)
    local spin = timer.now() + 0.002
    while timer.now() < spin do end
    return e
  end,
}
local events = {}
for i = 1, 20 do events[i] = { id = i } end
local r = pipeline("p", { "s" }):run{ input = events }
assert(r.emitted == 20)
assert(fired >= 2, fired)
collectgarbage(); collectgarbage()
print("ok")
