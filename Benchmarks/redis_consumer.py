#!/usr/bin/env python3
"""analytics-1 as a consumer of a Redis Streams consumer group, in Python with redis-py
(PyPI's `redis`; Benchmarks/bench.py redis installs it in .build-bench/venv): what
`scopelua run scripts/analytics.lua --input 'redis://...?group=G&consumer=C&...'`
does, written the way a Python user would.

  redis_consumer.py 'redis://HOST:PORT/STREAM?group=G&consumer=C[&count=N][&idle_exit=S][&start=0|$][&block=MS]' OUTDIR [--wal]

The same stages as Benchmarks/baseline_pipeline.py: drop views, enrich (bucket,
managed), log every kept event to OUTDIR/events.log, insert it into OUTDIR/analytics.db,
count; prints seen=... kept=... click=... buy=... as scripts/analytics.lua does.

The protocol is scopelua's (Sources/ScopeLua/Pipeline/RedisStream.swift), reduced to what
a consumer that never meets a poison entry needs:
  - the group is created if missing (XGROUP CREATE ... MKSTREAM, start 0 or $);
  - this consumer's own pending entries are read first (what it read before a crash and
    never acknowledged), then new ones: XREADGROUP GROUP G C COUNT n [BLOCK ms] STREAMS s >;
  - entries other consumers left pending longer than 30 s are claimed (XAUTOCLAIM), at
    the start and every 15 s, as scopelua's default claim_idle does;
  - at-least-once: each batch (one XREADGROUP reply, up to COUNT entries) goes through
    the stages, its rows are committed (one SQLite transaction per batch), and only
    then are its entries acknowledged, in one XACK.
    scopelua, run with --checkpoint-every COUNT, does the same at its barrier: one
    commit (the stage's flush) and one XACK per batch read;
  - idle_exit: the run ends once nothing arrived for that many seconds and nothing is
    pending in the group (no other consumer's entries left to claim).
Not done here (scopelua does it): delivery counts and max_deliveries (poison entries to
dead letters), entries without an `event` field or not JSON (rejects).
The database keeps SQLite's default rollback journal, as a user gets it; --wal switches
it to WAL, as scopelua's sql.open does for files.
"""
import json
import os
import sys
import time
from urllib.parse import parse_qs, unquote, urlsplit

import redis

# The stages themselves are baseline_pipeline.py's: only the reading differs.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline_pipeline import Counts, kept_events, outputs  # noqa: E402

INSERT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)"
CLAIM_IDLE_MS = 30_000


def parse_url(text):
    url = urlsplit(text)
    if url.scheme != "redis" or not url.path.strip("/"):
        sys.exit(f"redis_consumer: expected redis://HOST:PORT/STREAM?group=G&consumer=C, got {text}")
    q = {k: v[-1] for k, v in parse_qs(url.query).items()}
    for key in ("group", "consumer"):
        if not q.get(key):
            sys.exit(f"redis_consumer: the URL needs ?{key}=NAME")
    return dict(host=url.hostname or "127.0.0.1", port=url.port or 6379, stream=unquote(url.path.strip("/")),
                group=q["group"], consumer=q["consumer"], count=int(q.get("count", 100)),
                block=int(q.get("block", 1000)), start=q.get("start", "$"),
                idle_exit=float(q["idle_exit"]) if "idle_exit" in q else None)


class Consumer:
    def __init__(self, p):
        self.p = p
        self.r = redis.Redis(host=p["host"], port=p["port"], socket_connect_timeout=5, socket_timeout=10)
        try:
            self.r.xgroup_create(p["stream"], p["group"], id=p["start"], mkstream=True)
        except redis.ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise
        self.pending_from = "0"  # reading this consumer's own pending entries from here; None: new ones
        self.last_activity = time.monotonic()
        self.next_claim = time.monotonic()
        self.claim_cursor = "0-0"

    def next_batch(self):
        """The next entries as [(id, fields)], [] when none came, None when the run ends."""
        p, r = self.p, self.r
        now = time.monotonic()
        if now >= self.next_claim:
            self.next_claim = now + CLAIM_IDLE_MS / 2000
            cursor, claimed = r.xautoclaim(p["stream"], p["group"], p["consumer"], CLAIM_IDLE_MS,
                                           self.claim_cursor, count=p["count"])[:2]
            self.claim_cursor = cursor
            if claimed:
                self.last_activity = time.monotonic()
                return claimed
        if self.pending_from is not None:
            reply = r.xreadgroup(p["group"], p["consumer"], {p["stream"]: self.pending_from}, count=p["count"])
            entries = reply[0][1] if reply else []
            if not entries:
                self.pending_from = None
                return []
            self.pending_from = entries[-1][0]
            self.last_activity = time.monotonic()
            return entries
        block = p["block"]
        if p["idle_exit"] is not None:
            quiet_until = self.last_activity + p["idle_exit"]
            if now >= quiet_until and r.xpending(p["stream"], p["group"])["pending"] == 0:
                return None
            block = min(block, max(1, int((quiet_until - now) * 1000)))
        reply = r.xreadgroup(p["group"], p["consumer"], {p["stream"]: ">"}, count=p["count"], block=block)
        entries = reply[0][1] if reply else []
        if entries:
            self.last_activity = time.monotonic()
        return entries

    def acknowledge(self, ids):
        self.r.xack(self.p["stream"], self.p["group"], *ids)


def main(argv):
    if len(argv) not in (3, 4) or argv[3:] not in ([], ["--wal"]):
        sys.exit(__doc__.split("\n\n")[1])
    p = parse_url(argv[1])
    outdir, wal = argv[2], argv[3:] == ["--wal"]
    counts = Counts()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    with outputs(outdir, wal) as (log, db):
        consumer = Consumer(p)  # its idle_exit clock starts here, once the log and the database are open
        while (entries := consumer.next_batch()) is not None:
            if not entries:
                continue
            for event in kept_events((fields[b"event"] for _, fields in entries), counts):
                log.write(encode(event))
                log.write("\n")
                db.execute(INSERT, (event["id"], event["user"], event["kind"], event["amount"], event["bucket"]))
                counts.kept += 1
                counts.kinds[event["kind"]] = counts.kinds.get(event["kind"], 0) + 1
            db.commit()  # the batch's rows, then its acknowledgement: at-least-once
            consumer.acknowledge([entry_id for entry_id, _ in entries])
    print(counts)


if __name__ == "__main__":
    main(sys.argv)
