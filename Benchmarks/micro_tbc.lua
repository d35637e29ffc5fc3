-- The floor for a scoped handle: N acquire/release pairs of a pure-Lua value held in a
-- to-be-closed variable, in plain Lua 5.4. Acquiring makes a fresh table with a
-- metatable; releasing is its __close, which only counts. Nothing here reads a clock,
-- records where it was acquired or keeps a registry: those are what scopelua adds.
--   lua5.4 Benchmarks/micro_tbc.lua N
-- Benchmarks/micro_measure.lua is the same loop with scopelua's timer.measure.
local n = tonumber(arg and arg[1]) or 1000000

local released = 0
local handle_mt = {
  __close = function() released = released + 1 end,
}

for _ = 1, n do
  local h <close> = setmetatable({}, handle_mt)
end
print("released=" .. released)
