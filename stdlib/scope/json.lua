-- scope.json: JSON for scripts, on Debian's lua-cjson (the fast C codec of the Lua world).
--   json.decode(s), json.encode(v), json.null, json.array(t)
-- Empty arrays: cjson decodes `[]` and `{}` alike to an empty table and encodes an empty
-- table as `{}`. To round-trip them, decode marks the empty tables that were arrays with
-- json.array_mt (only when the text contains "[]", so most events pay nothing), and
-- encode writes `[]` for any empty table carrying that metatable.
local ok, cjson = pcall(require, "cjson")
if not ok then
  error("the json module needs Debian's lua-cjson (apt-get install lua-cjson): " .. tostring(cjson), 0)
end

local json = { null = cjson.null, array_mt = { __name = "json.array" } }
local array_mt = json.array_mt
local decode, encode = cjson.decode, cjson.encode
local find, gsub, byte, sub = string.find, string.gsub, string.byte, string.sub
local type, next, getmetatable, setmetatable = type, next, getmetatable, setmetatable

-- Marks the empty arrays of `v`, given the empty containers of the text in order.
-- `kinds` lists "[" or "{" for each empty container, in document order; the walk visits
-- containers in document order for arrays, and by sorted key for objects (cjson keeps
-- no key order), so the text's keys are used to align objects.
local function empty_containers(s)
  -- A small scanner: records, for each empty container, its path (keys and indices).
  local paths, stack, i, n = {}, {}, 1, #s
  local key
  while i <= n do
    local c = byte(s, i)
    if c == 34 then -- string
      local j = i + 1
      while true do
        local q = find(s, '["\\]', j)
        if not q then return paths end
        if byte(s, q) == 92 then j = q + 2 else j = q; break end
      end
      local top = stack[#stack]
      if top and top.object and top.expect_key then
        key = sub(s, i + 1, j - 1)
        if find(key, "\\", 1, true) then key = decode('"' .. key .. '"') end
        top.expect_key = false
      end
      i = j + 1
    elseif c == 123 or c == 91 then -- { or [
      local top = stack[#stack]
      local slot
      if top then
        if top.object then slot = key else slot = top.index end
      end
      local close = c == 123 and "}" or "]"
      local k = i + 1
      while find(s, "^[ \t\r\n]", k) do k = k + 1 end
      if sub(s, k, k) == close then
        local path = {}
        for d = 2, #stack do path[#path + 1] = stack[d].slot end
        if top then path[#path + 1] = slot end
        paths[#paths + 1] = { path = path, array = c == 91 }
        i = k + 1
      else
        stack[#stack + 1] = { object = c == 123, expect_key = c == 123, index = 1, slot = slot }
        i = i + 1
      end
    elseif c == 125 or c == 93 then
      stack[#stack] = nil
      i = i + 1
    elseif c == 44 then -- ,
      local top = stack[#stack]
      if top then
        if top.object then top.expect_key = true else top.index = top.index + 1 end
      end
      i = i + 1
    else
      i = i + 1
    end
  end
  return paths
end

--- Decodes a JSON text. Raises on invalid JSON (cjson's message).
function json.decode(s)
  local ok, v = pcall(decode, s)
  if not ok then error(v, 2) end
  if type(v) == "table" and find(s, "[", 1, true) and (find(s, "[]", 1, true) or find(s, "%[%s+%]")) then
    for _, e in ipairs(empty_containers(s)) do
      if e.array then
        local t = v
        for d = 1, #e.path do t = t and type(t) == "table" and t[e.path[d]] or nil end
        if type(t) == "table" and next(t) == nil then setmetatable(t, array_mt) end
      end
    end
    if next(v) == nil and sub(s, find(s, "[%[{]"), find(s, "[%[{]")) == "[" then setmetatable(v, array_mt) end
  end
  return v
end

local marker = "\0scopelua.empty_array\0"
local marked = '"\\u0000scopelua.empty_array\\u0000"'

-- Replaces empty tables marked as arrays by the marker string; returns a copy only
-- where something changed.
local function substitute(v, depth)
  if depth > 100 then return v, false end
  if next(v) == nil then
    if getmetatable(v) == array_mt then return marker, true end
    return v, false
  end
  local copy
  for k, x in next, v do
    if type(x) == "table" then
      local y, changed = substitute(x, depth + 1)
      if changed then
        copy = copy or {}
        copy[k] = y
      end
    end
  end
  if not copy then return v, false end
  for k, x in next, v do if copy[k] == nil then copy[k] = x end end
  return copy, true
end

--- Encodes a value as JSON. Empty tables marked with json.array_mt become `[]`.
function json.encode(v)
  local s = encode(v)
  if find(s, "{}", 1, true) and type(v) == "table" then
    local w, changed = substitute(v, 0)
    if changed then
      s = gsub(encode(w), marked, "[]")
    end
  end
  return s
end

--- Marks a table as a JSON array (so that it encodes as `[]` when empty). Returns it.
function json.array(t)
  return setmetatable(t or {}, array_mt)
end

return json
