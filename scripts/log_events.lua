-- Exercise 1: a stage that opens a file and logs every event safely.
--   scopelua run scripts/log_events.lua --input scripts/data/events.jsonl --output none
-- The file is opened in `open`, so it belongs to the stage's scope: it is flushed and
-- closed when the pipeline closes, also when a later stage fails or the run is stopped.
stage "log_events" {
  open = function(ctx)
    ctx.state.log = assert(fs.open(ctx.config.path or "out/events.log", "w"))
  end,
  process = function(ctx, event)
    ctx.state.log:write(json.encode(event), "\n")
    return event
  end,
  close = function(ctx, err)
    -- runs before the stage scope releases the file; err is what ended the pipeline
    ctx.state.log:write(err and ("# stopped by an error: " .. tostring(err) .. "\n") or "# done\n")
  end,
}

pipeline "logging" {
  { "log_events", path = os.getenv("LOG_PATH") or "out/events.log" },
}
