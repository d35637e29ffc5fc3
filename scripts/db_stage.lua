-- Exercise 2: a database stage with cleanup, on a real SQLite file.
--   scopelua run scripts/db_stage.lua --input scripts/data/events.jsonl --output none --report
--   ... --checkpoint out/state.db     (crash-safe: a rerun resumes after the last checkpoint)
-- The connection, the prepared statements and the open transaction live in the stage
-- scope. Whatever ends the run, the scope releases them newest first: the transaction
-- commits (or rolls back if the run failed), the statements are finalized, the
-- connection closed. Nothing in `close` is needed for that. The batch commits in flush,
-- at each barrier just before the checkpoint: what is committed is what the checkpoint
-- covers.
--
-- Exactly once with a plain INSERT: a kill after this commit and before the
-- checkpoint's replays the batch on resume. So the stage stores, in the transaction it
-- commits, the input line the barrier commits (ctx.committing), reads it back in open,
-- and skips the write of a replayed event (ctx.line at or below it): that event is
-- already in its last commit. A run that does not resume starts the table over, as it
-- does the output file.
stage "db_sink" {
  open = function(ctx)
    local s = ctx.state
    s.db = assert(sql.open(ctx.config.path))
    s.db:exec("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, user TEXT NOT NULL, kind TEXT, amount REAL)")
    s.db:exec("CREATE TABLE IF NOT EXISTS applied(id INTEGER PRIMARY KEY CHECK (id = 1), line INTEGER NOT NULL)")
    s.insert = s.db:prepare("INSERT INTO events VALUES (?, ?, ?, ?)")
    s.mark = s.db:prepare("INSERT OR REPLACE INTO applied VALUES (1, ?)")
    s.tx = s.db:transaction()
    if ctx.resumed then
      local row = s.db:first("SELECT line FROM applied")
      s.applied = row and row.line or 0      -- at or after ctx.resumed_line
    else
      s.db:exec("DELETE FROM events; DELETE FROM applied")
      s.applied = 0
    end
  end,
  process = function(ctx, e)
    local line = ctx.line
    if not (line and line <= ctx.state.applied) then
      ctx.state.insert:exec(e.id, e.user, e.kind, e.amount)
    end
    return e
  end,
  flush = function(ctx)
    local s = ctx.state
    s.mark:exec(ctx.committing)              -- in the same transaction as the batch
    s.tx:commit()
    s.tx = ctx:own(s.db:transaction())   -- move it from the flush's task scope to the stage
  end,
  on_error = "dead_letter",                 -- a bad event goes to the dead-letter output, the run goes on
}

pipeline "store" {
  { "db_sink", path = os.getenv("DB_PATH") or "out/events.db" },
}
