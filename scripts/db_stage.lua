-- Exercise 2: a database stage with cleanup, on a real SQLite file.
--   scopelua run scripts/db_stage.lua --input scripts/data/events.jsonl --output none --report
--   ... --checkpoint out/state.db     (crash-safe: a rerun resumes after the last checkpoint)
-- The connection, the prepared statement and the open transaction live in the stage
-- scope. Whatever ends the run, the scope releases them newest first: the transaction
-- commits (or rolls back if the run failed), the statement is finalized, the connection
-- closed. Nothing in `close` is needed for that. The batch commits in flush, at each
-- barrier just before the checkpoint: what is committed is what the checkpoint covers.
stage "db_sink" {
  open = function(ctx)
    local s = ctx.state
    s.db = assert(sql.open(ctx.config.path))
    s.db:exec("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, user TEXT NOT NULL, kind TEXT, amount REAL)")
    s.insert = s.db:prepare("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)")
    s.tx = s.db:transaction()
  end,
  process = function(ctx, e)
    ctx.state.insert:exec(e.id, e.user, e.kind, e.amount)
    return e
  end,
  flush = function(ctx)
    local s = ctx.state
    s.tx:commit()
    s.tx = ctx:own(s.db:transaction())   -- move it from the flush's task scope to the stage
  end,
  on_error = "dead_letter",                 -- a bad event goes to the dead-letter output, the run goes on
}

pipeline "store" {
  { "db_sink", path = os.getenv("DB_PATH") or "out/events.db" },
}
