#!/usr/bin/env python3
"""scopelua benchmarks, side by side with the baselines in shared/bench.

  Benchmarks/bench.py micro [--runs 9] [--n 1000000]     timer.measure pair vs pure-Lua <close>
  Benchmarks/bench.py sqlite [--runs 5] [--n 100000]     prepared inserts, 1000 per transaction, vs Python sqlite3
  Benchmarks/bench.py pipeline [--runs 5] [--n 200000]   analytics-1 (scripts/analytics.lua) vs plain Lua and Python
  Benchmarks/bench.py json [--runs 7] [--n 200000]       scopelua's json vs lua-cjson: decode + encode every event

Runs alternate (ours, baseline, ours, ...) so that a noisy machine hits both alike, and
the medians are compared. Build first: swift build -c release.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCOPELUA = os.path.join(ROOT, ".build", "release", "scopelua")


def shared_bench(path):
    for candidate in [path, os.path.join(ROOT, "..", "shared", "bench")]:
        if candidate and os.path.isdir(candidate):
            return os.path.abspath(candidate)
    sys.exit("bench: cannot find shared/bench (pass --shared DIR)")


def timed(cmd, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def side_by_side(label_a, cmd_a, label_b, cmd_b, runs, **kw):
    a, b = [], []
    for _ in range(runs):
        a.append(timed(cmd_a, **kw))
        b.append(timed(cmd_b, **kw))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"  {label_a:<28} median {ma:7.3f}s   (min {min(a):.3f}s)")
    print(f"  {label_b:<28} median {mb:7.3f}s   (min {min(b):.3f}s)")
    return ma, mb


def instructions(cmd):
    """Instruction count under callgrind (repeatable on a noisy machine), or None."""
    if not shutil.which("valgrind"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = cmd[0]
        if exe == SCOPELUA:  # valgrind 3.19 cannot read Swift 6's DWARF 5; drop it
            stripped = os.path.join(tmp, "scopelua")
            shutil.copy(exe, stripped)
            subprocess.run(["strip", "--strip-debug", stripped], check=True)
            cmd = [stripped] + cmd[1:]
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg"] + cmd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for line in out.stderr.splitlines():
            if "Collected" in line:
                return int(line.split()[-1])
    return None


def generate_events(bench, n, directory):
    """n events from shared/bench/gen_events.py, in directory/events.jsonl."""
    events = os.path.join(directory, "events.jsonl")
    with open(events, "w") as f:
        subprocess.run([sys.executable, os.path.join(bench, "gen_events.py"), str(n)], check=True, stdout=f)
    return events


def micro(args):
    """Per-pair cost: each program runs with N pairs and with none (start-up and exit
    only), alternating; (median(N) - median(0)) / N is what one pair costs."""
    bench = shared_bench(args.shared)
    ours = [SCOPELUA, "run", os.path.join(ROOT, "Benchmarks", "micro_measure.lua")]
    base = ["lua5.4", os.path.join(bench, "micro_tbc.lua")]
    n = args.n
    print(f"micro: {n} acquire/release pairs, {args.runs} alternating runs (each also with 0 pairs)")
    t = {k: [] for k in ("ours", "ours0", "base", "base0")}
    for _ in range(args.runs):
        t["ours"].append(timed(ours + [str(n)]))
        t["base"].append(timed(base + [str(n)]))
        t["ours0"].append(timed(ours + ["0"]))
        t["base0"].append(timed(base + ["0"]))
    m = {k: statistics.median(v) for k, v in t.items()}
    print(f"  {'scopelua timer.measure':<28} median {m['ours']:7.3f}s   (start-up alone {m['ours0']:.3f}s)")
    print(f"  {'lua5.4 <close> table':<28} median {m['base']:7.3f}s   (start-up alone {m['base0']:.3f}s)")
    pa = (m["ours"] - m["ours0"]) / n
    pb = (m["base"] - m["base0"]) / n
    # Each round ran both programs back to back: the ratio within a round is spared the
    # machine's slow and fast spells, which move both.
    rounds = [(a - m["ours0"]) / (b - m["base0"]) for a, b in zip(t["ours"], t["base"])]
    print(f"  per pair: scopelua {pa * 1e9:.0f} ns, pure Lua {pb * 1e9:.0f} ns")
    print(f"  ratio per pair (scopelua / pure Lua): {pa / pb:.2f}x  (target: within 2x)")
    print(f"  the same ratio round by round: median {statistics.median(rounds):.2f}x, "
          f"quartiles {statistics.quantiles(rounds, n=4)[0]:.2f}x-{statistics.quantiles(rounds, n=4)[2]:.2f}x")
    print(f"  ratio of whole runs, start-up included: {m['ours'] / m['base']:.2f}x")
    if args.instructions:
        small = 200000
        counts = [instructions(c) for c in (ours + [str(small)], ours + ["0"], base + [str(small)], base + ["0"])]
        if None in counts:
            print("  instructions: valgrind (callgrind) is not available")
            return
        ia, ib = counts[0] - counts[1], counts[2] - counts[3]
        print(f"  instructions per pair (callgrind, {small} pairs minus start-up): scopelua {ia / small:.0f}, "
              f"pure Lua {ib / small:.0f}, ratio {ia / ib:.2f}x")


def sqlite(args):
    n = str(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        ours = [SCOPELUA, "run", os.path.join(ROOT, "Benchmarks", "sqlite_insert.lua"), os.path.join(tmp, "ours.db"), n]
        base = [sys.executable, os.path.join(ROOT, "Benchmarks", "sqlite_insert.py"), os.path.join(tmp, "python.db"), n]
        outs = {subprocess.run(c, check=True, capture_output=True, text=True).stdout.strip() for c in (ours, base)}
        if len(outs) != 1:
            sys.exit(f"bench: outputs differ: {outs}")
        print(f"sqlite: {args.n} rows through a prepared statement, 1000 per transaction ({outs.pop()}), "
              f"{args.runs} alternating runs")
        ma, mb = side_by_side("scopelua sql", ours, "python3 sqlite3", base, args.runs)
        print(f"  speed-up over Python: {mb / ma:.2f}x  (target: at least 1.5x)")


def pipeline(args):
    bench = shared_bench(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(bench, args.n, tmp)
        dirs = {k: os.path.join(tmp, k) for k in ("ours", "lua", "py")}
        for d in dirs.values():
            os.mkdir(d)
        ours = [SCOPELUA, "run", os.path.join(ROOT, "scripts", "analytics.lua"), "--input", events, "--output", "none"]
        lua = ["lua5.4", os.path.join(bench, "baseline_pipeline.lua"), dirs["lua"]]
        py = [sys.executable, os.path.join(bench, "baseline_pipeline.py"), dirs["py"]]
        env = dict(os.environ, ANALYTICS_OUT=dirs["ours"])

        def run(cmd, **kw):
            with open(events) as stdin:
                r = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, check=True, **kw)
            return (r.stdout + r.stderr).strip().splitlines()[-1]

        counts = {run(ours, env=env), run(lua), run(py)}
        if len(counts) != 1:
            sys.exit(f"bench: counts differ: {counts}")
        print(f"pipeline: analytics-1 on {args.n} events ({counts.pop()}), {args.runs} alternating runs")
        t = {"scopelua": [], "lua": [], "python": []}
        for _ in range(args.runs):
            for name, cmd, kw in (("scopelua", ours, {"env": env}), ("lua", lua, {}), ("python", py, {})):
                with open(events) as stdin:
                    start = time.perf_counter()
                    subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, **kw)
                    t[name].append(time.perf_counter() - start)
        m = {k: statistics.median(v) for k, v in t.items()}
        for k, label in (("scopelua", "scopelua analytics.lua"), ("lua", "lua5.4 baseline_pipeline.lua"),
                         ("python", "python3 baseline_pipeline.py")):
            print(f"  {label:<30} median {m[k]:7.3f}s   (min {min(t[k]):.3f}s)")
        print(f"  speed-up over plain Lua: {m['lua'] / m['scopelua']:.2f}x  (target: at least 1.5x)")
        print(f"  speed-up over Python:    {m['python'] / m['scopelua']:.2f}x  (target: at least 2.5x)")


def json_codec(args):
    """Why scopelua has its own JSON codec: the same round trip with each, alternating."""
    bench = shared_bench(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(bench, args.n, tmp)
        script = os.path.join(ROOT, "Benchmarks", "json_roundtrip.lua")
        ours = [SCOPELUA, "run", script, "scopelua", events]
        cjson = [SCOPELUA, "run", script, "cjson", events]
        print(f"json: decode + encode {args.n} events, {args.runs} alternating runs")
        ma, mb = side_by_side("scopelua json", ours, "lua-cjson", cjson, args.runs)
        print(f"  speed-up over cjson: {mb / ma:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", help="path to shared/bench (default: ../shared/bench)")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("micro", help="timer.measure acquire+release vs a pure-Lua <close> table")
    m.add_argument("--runs", type=int, default=9)
    m.add_argument("--n", type=int, default=1000000)
    m.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    m.set_defaults(fn=micro)
    q = sub.add_parser("sqlite", help="prepared inserts in transactions of 1000 vs Python's sqlite3")
    q.add_argument("--runs", type=int, default=5)
    q.add_argument("--n", type=int, default=100000)
    q.set_defaults(fn=sqlite)
    r = sub.add_parser("pipeline", help="analytics-1 vs the plain-Lua and Python baselines")
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--n", type=int, default=200000)
    r.set_defaults(fn=pipeline)
    j = sub.add_parser("json", help="scopelua's json vs lua-cjson on the pipeline's events")
    j.add_argument("--runs", type=int, default=7)
    j.add_argument("--n", type=int, default=200000)
    j.set_defaults(fn=json_codec)
    args = p.parse_args()
    if not os.path.exists(SCOPELUA):
        sys.exit("bench: build first: swift build -c release")
    args.fn(args)


if __name__ == "__main__":
    main()
