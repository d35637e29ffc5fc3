-- Collections run from inside the runtime's own release work: a defer that collects
-- while its scope is being released (issue 9, class 1), with dropped handles for the
-- collector to find.
scope(function() defer(function() collectgarbage(); collectgarbage() end) end)
for i = 1, 20 do
  scope(function()
    local f = fs.open("d" .. i % 3 .. ".txt", "w")
    timer.measure("dropped in scope")
    defer(function() collectgarbage(); collectgarbage() end)
    fs.open("dropped" .. i % 3 .. ".txt", "w")
    defer(function() collectgarbage() end)
  end)
end
pcall(scope, function()
  defer(function() collectgarbage(); collectgarbage() end)
  local t = timer.measure("x")
  error("with a collecting defer")
end)
with_resource(timer.measure("w"), function() collectgarbage(); collectgarbage() end)
collectgarbage(); collectgarbage()
print("ok")
