-- analytics-1 as a scopelua pipeline: drop views, enrich, log every kept event to a
-- file, store it in SQLite (committing every 1000 rows), count.
--   scopelua run scripts/analytics.lua --input scripts/data/events.jsonl --output out/kept.jsonl --report
-- The log file and the database live as long as their stage; the runtime closes them
-- (and commits or rolls back the open transaction) however the run ends.
local outdir = os.getenv("ANALYTICS_OUT") or "out"
local totals = { seen = 0, kept = 0, kinds = {} }

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
    ctx.state.log = assert(fs.open(ctx.config.path, "w"))
  end,
  process = function(ctx, e)
    ctx.state.log:write(json.encode(e), "\n")
    return e
  end,
}

stage "db_sink" {
  open = function(ctx)
    local s = ctx.state
    s.db = assert(sql.open(ctx.config.path))
    s.db:exec("DROP TABLE IF EXISTS events")
    s.db:exec("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)")
    s.insert = s.db:prepare("INSERT INTO events VALUES (?, ?, ?, ?, ?)")
    s.tx, s.pending = s.db:transaction(), 0
  end,
  process = function(ctx, e)
    local s = ctx.state
    s.insert:exec(e.id, e.user, e.kind, e.amount, e.bucket)
    s.pending = s.pending + 1
    if s.pending == ctx.config.batch then
      s.tx:commit()
      s.tx = ctx:own(s.db:transaction())          -- acquired in the event's task scope: keep it in the stage
      s.pending = 0
    end
    return e
  end,
  -- no close needed: the stage scope commits the last transaction (or rolls it back if
  -- the run failed), then finalizes the statement and closes the connection.
}

stage "count" {
  process = function(ctx, e)
    totals.kept = totals.kept + 1
    totals.kinds[e.kind] = (totals.kinds[e.kind] or 0) + 1
    return e
  end,
  close = function(ctx, err)
    io.stderr:write(("seen=%d kept=%d click=%d buy=%d\n"):format(
      totals.seen, totals.kept, totals.kinds.click or 0, totals.kinds.buy or 0))
  end,
}

pipeline "analytics" {
  "drop_views", "enrich",
  { "log_events", path = outdir .. "/events.log" },
  { "db_sink", path = outdir .. "/analytics.db", batch = 1000 },
  "count",
}
