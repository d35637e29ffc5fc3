-- A script strips the metatable of open handles, then they are collected or left to
-- the end of the run (issue 9, class 15).
local f = fs.open("meta.txt", "w")
debug.setmetatable(f, nil)
f = nil
collectgarbage(); collectgarbage()
local t = timer.measure("meta")
debug.setmetatable(t, nil)
scope(function()
  local g = fs.open("meta2.txt", "w")
  debug.setmetatable(g, nil)
  local u = timer.measure("meta")
  debug.setmetatable(u, {})
end)
local kept = fs.open("meta3.txt", "w")
debug.setmetatable(kept, nil)
collectgarbage(); collectgarbage()
print("ok")
