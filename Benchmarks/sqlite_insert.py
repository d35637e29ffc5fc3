"""The same work in Python's sqlite3: python3 Benchmarks/sqlite_insert.py OUT.db [N]"""
import os
import sqlite3
import sys

path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100000
for suffix in ("", "-wal", "-shm"):
    if os.path.exists(path + suffix):
        os.remove(path + suffix)
kinds = ["click", "view", "buy"]
with sqlite3.connect(path) as db:
    db.execute("PRAGMA journal_mode=WAL")  # as sql.open does for files
    db.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, user TEXT, kind TEXT, amount REAL, bucket INTEGER)")
    for batch in range(0, n, 1000):
        with db:  # one transaction per 1000 rows
            for i in range(batch, min(batch + 1000, n)):
                db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                           (i, "u%d" % (i % 1000), kinds[i % 3], (i % 10000) / 100, i % 16))
    print("rows=%d" % db.execute("SELECT count(*) FROM events").fetchone()[0])
