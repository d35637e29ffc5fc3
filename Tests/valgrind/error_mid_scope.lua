-- Errors half-way through scopes that hold files (fs.open, adopted io.open), a <close>
-- variable and defers that write to those files: everything is released once, the
-- defers see the error, the data written so far is on disk.
local seen = {}
for i = 1, 50 do
  local ok, err = pcall(scope, function()
    local log = assert(fs.open("log" .. i % 3 .. ".txt", "w"))
    local raw = assert(io.open("raw" .. i % 3 .. ".txt", "w"))
    defer(function(e) log:write("defer saw: ", tostring(e), "\n") end)
    scope(function()
      local inner <close> = assert(fs.open("inner.txt", "w"))
      inner:write(("x"):rep(4096))
      defer(function(e) raw:write("inner defer\n") end)
      if i % 2 == 0 then error({ code = i }) end
      error("failed at " .. i)
    end)
  end)
  seen[#seen + 1] = type(err) == "table" and err.code or err
end
assert(#seen == 50)
-- A defer that fails too, after the body failed: both errors travel together.
local ok, err = pcall(scope, function()
  local f = fs.open("both.txt", "w")
  defer(function() error("defer failed", 0) end)
  f:write("data")
  error("body failed", 0)
end)
assert(not ok and err:find("body failed", 1, true) and err:find("defer failed", 1, true))
collectgarbage(); collectgarbage()
print("ok")
