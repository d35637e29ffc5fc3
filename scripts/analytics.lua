-- analytics-1 as a scopelua pipeline: drop views, enrich, log every kept event to a
-- file, store it in SQLite (committing at each barrier, in flush), count.
--   scopelua run scripts/analytics.lua --input scripts/data/events.jsonl --output out/kept.jsonl --report
--   ... --checkpoint out/state.db     (a rerun after a crash resumes where the last checkpoint was)
-- The log file and the database live as long as their stage; the runtime closes them
-- (and commits or rolls back the open transaction) however the run ends.
local outdir = os.getenv("ANALYTICS_OUT") or "out"
local totals = { seen = 0, kept = 0, kinds = {} }

-- With --workers N every worker is a Lua state of its own that opens its own stages:
-- each writes files of its own (events-2.log, analytics-2.db for worker 2; worker 1
-- keeps the plain names). One SQLite file has one writer at a time, and each worker
-- holds its batch transaction until its flush: sharing one would serialize them.
local function per_worker(ctx, path)
  if ctx.workers == 1 or ctx.worker == 1 then return path end
  return (path:gsub("(%.%w+)$", "-" .. ctx.worker .. "%1"))
end

stage "drop_views" {
  process = function(ctx, e)
    totals.seen = totals.seen + 1
    if e.kind ~= "view" then return e end        -- returning nil filters the event out
  end,
}

stage "enrich" {
  process = function(ctx, e)
    e.bucket = (tonumber(e.user:sub(2)) or 0) % 16
    e.managed = true
    return e
  end,
}

stage "log_events" {
  open = function(ctx)                            -- runs in the stage scope: the file lives as long as the stage
    -- A resumed run (--checkpoint) appends. The log is written as events pass, not in
    -- flush: the events after the last checkpoint are logged again (at-least-once).
    ctx.state.log = assert(fs.open(per_worker(ctx, ctx.config.path), ctx.resumed and "a" or "w"))
  end,
  process = function(ctx, e)
    ctx.state.log:write(json.encode(e), "\n")
    return e
  end,
}

-- Crash-safe by construction: rows are committed only in flush, which runs at each
-- barrier just before the checkpoint is committed (--checkpoint-every, default 10000
-- events or 5 s; without --checkpoint, once at the end). A run killed between two
-- barriers rolls its open transaction back, and the rerun inserts those events again.
stage "db_sink" {
  open = function(ctx)
    local s = ctx.state
    s.db = assert(sql.open(per_worker(ctx, ctx.config.path)))
    if not ctx.resumed then s.db:exec("DROP TABLE IF EXISTS events") end  -- a resumed run keeps what was committed
    s.db:exec("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)")
    -- OR REPLACE: if the run died after this commit but before the checkpoint's, the
    -- rerun replays that batch, and each event's row replaces itself.
    s.insert = s.db:prepare("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)")
    s.tx = s.db:transaction()
  end,
  process = function(ctx, e)
    ctx.state.insert:exec(e.id, e.user, e.kind, e.amount, e.bucket)
    return e
  end,
  flush = function(ctx)
    local s = ctx.state
    s.tx:commit()
    s.tx = ctx:own(s.db:transaction())            -- flush runs in a task scope, like process: keep it in the stage
  end,
  -- no close needed: the stage scope commits the last (empty) transaction, or rolls it
  -- back if the run failed, then finalizes the statement and closes the connection.
}

stage "count" {
  process = function(ctx, e)
    totals.kept = totals.kept + 1
    totals.kinds[e.kind] = (totals.kinds[e.kind] or 0) + 1
    return e
  end,
  close = function(ctx, err)
    io.stderr:write(("%sseen=%d kept=%d click=%d buy=%d\n"):format(ctx.workers > 1 and "worker " .. ctx.worker .. ": " or "",
      totals.seen, totals.kept, totals.kinds.click or 0, totals.kinds.buy or 0))
  end,
}

pipeline "analytics" {
  "drop_views", "enrich",
  { "log_events", path = outdir .. "/events.log" },
  { "db_sink", path = outdir .. "/analytics.db" },
  "count",
}
