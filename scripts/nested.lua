-- Exercise 4: a nested pipeline lifecycle manager.
--   scopelua run scripts/nested.lua --input scripts/data/events.jsonl --output none
-- A pipeline can contain another pipeline: its stages open inside the outer pipeline's
-- scope and close, in reverse, before the outer stages that were opened before it.
local function managed(name)
  return {
    open = function(ctx) io.stderr:write("open  ", scope.current():path(), "\n") end,
    process = function(ctx, e) e.path = (e.path or "") .. "/" .. name; return e end,
    close = function(ctx, err) io.stderr:write("close ", scope.current():path(), "\n") end,
  }
end

stage("parse", managed("parse"))
stage("validate", managed("validate"))
stage("enrich", managed("enrich"))
stage("store", managed("store"))

local inner = pipeline "checks" { "validate", "enrich" }
pipeline "outer" { "parse", inner, "store" }
