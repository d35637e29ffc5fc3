-- Cost of one timer.measure acquire/release pair: scopelua run Benchmarks/micro_measure.lua N
-- The same loop shape as Benchmarks/micro_tbc.lua, with a runtime-owned handle.
local n = tonumber(arg and arg[1]) or 1000000
for i = 1, n do
  local t <close> = timer.measure("micro")
end
print("released=" .. n)
