#!/usr/bin/env python3
"""Deterministic analytics events for the benchmarks, one JSON object per line.

  python3 Benchmarks/gen_events.py N > events.jsonl

Event i (counting from 0) has ts 1700000000 + i and, drawn in this order from one
random.Random(42): a user u0..u999, a kind (click, view or buy, equally likely), an
amount in [0, 100] rounded to cents, and a tag list of length 0, 1 or 2 ([], ["a"],
["a", "b"]). The stream depends only on N's prefix: the first K events of any run are
the same, so counts for a given N are fixed (200000 events: 66746 views, 66881 clicks,
66373 buys).
"""
import json
import random
import sys

SEED = 42
FIRST_TS = 1700000000
KINDS = ("click", "view", "buy")
TAGS = ("a", "b")


def events(count, seed=SEED):
    draw = random.Random(seed)
    for number in range(count):
        user = "u%d" % draw.randrange(1000)
        kind = draw.choice(KINDS)
        amount = round(draw.uniform(0, 100), 2)
        tags = list(TAGS[:draw.randrange(len(TAGS) + 1)])
        yield {"id": number, "user": user, "kind": kind, "amount": amount,
               "ts": FIRST_TS + number, "tags": tags}


def main(argv):
    if len(argv) != 2 or not argv[1].isdigit():
        sys.exit("usage: gen_events.py N")
    encode = json.JSONEncoder(separators=(",", ":")).encode
    out = sys.stdout
    for event in events(int(argv[1])):
        out.write(encode(event))
        out.write("\n")


if __name__ == "__main__":
    main(sys.argv)
