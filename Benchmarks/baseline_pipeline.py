#!/usr/bin/env python3
"""analytics-1 in Python 3 (standard library only), every resource held by a context
manager: what the design notes sketch as the Python way.

  python3 Benchmarks/baseline_pipeline.py OUTDIR [--wal] < events.jsonl

Writes OUTDIR/events.log and OUTDIR/analytics.db and prints the counts
(seen=... kept=... click=... buy=...), as scripts/analytics.lua does. The database keeps
SQLite's default rollback journal, as a user gets it; --wal switches it to WAL, as
scopelua's sql.open does for files (fewer disk syncs per commit).
"""
import contextlib
import itertools
import json
import os
import sqlite3
import sys

BATCH = 1000
INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?)"


class Counts:
    def __init__(self):
        self.seen = 0
        self.kept = 0
        self.kinds = {}

    def __str__(self):
        return "seen=%d kept=%d click=%d buy=%d" % (
            self.seen, self.kept, self.kinds.get("click", 0), self.kinds.get("buy", 0))


def kept_events(lines, counts):
    """Decoded events without the views, enriched (bucket, managed)."""
    for line in lines:
        counts.seen += 1
        event = json.loads(line)
        if event["kind"] == "view":
            continue
        user = event["user"][1:]
        event["bucket"] = (int(user) if user.isdigit() else 0) % 16
        event["managed"] = True
        yield event


def batches(iterable, size):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@contextlib.contextmanager
def outputs(outdir, wal):
    """The log file and the database (a fresh events table), closed at the end."""
    with open(os.path.join(outdir, "events.log"), "w") as log, \
            contextlib.closing(sqlite3.connect(os.path.join(outdir, "analytics.db"))) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("DROP TABLE IF EXISTS events")
        db.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)")
        db.commit()
        yield log, db


def main(argv):
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--wal"]):
        sys.exit("usage: baseline_pipeline.py OUTDIR [--wal] < events.jsonl")
    outdir, wal = argv[1], argv[2:] == ["--wal"]
    counts = Counts()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    with outputs(outdir, wal) as (log, db):
        for chunk in batches(kept_events(sys.stdin, counts), BATCH):
            with db:  # one transaction: committed at the end of the block, rolled back on an error
                for event in chunk:
                    log.write(encode(event))
                    log.write("\n")
                    db.execute(INSERT, (event["id"], event["user"], event["kind"], event["amount"], event["bucket"]))
                    counts.kept += 1
                    counts.kinds[event["kind"]] = counts.kinds.get(event["kind"], 0) + 1
    print(counts)


if __name__ == "__main__":
    main(sys.argv)
