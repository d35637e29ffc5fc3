-- JSON codec cost: decode and re-encode every line of an events file, with scopelua's
-- json or with Debian's lua-cjson, in the same runtime.
--   scopelua run Benchmarks/json_roundtrip.lua scopelua|cjson EVENTS.jsonl
local codec = arg[1] == "cjson" and require("cjson") or json
local decode, encode = codec.decode, codec.encode
local bytes = 0
for line in io.lines(arg[2]) do
  bytes = bytes + #encode(decode(line))
end
print("bytes=" .. bytes)
