#!/usr/bin/env python3
"""scopelua benchmarks, side by side with the baselines in this folder.

  Benchmarks/bench.py micro [--runs 9] [--n 1000000]     timer.measure pair vs pure-Lua <close> (--python: also Python with)
  Benchmarks/bench.py sqlite [--runs 5] [--n 100000]     prepared inserts, 1000 per transaction, vs Python sqlite3
  Benchmarks/bench.py pipeline [--runs 5] [--n 200000]   analytics-1 (scripts/analytics.lua) vs plain Lua and Python
                                                         (--luajit: also LuaJIT; --wal: baselines in WAL mode like scopelua)
  Benchmarks/bench.py json [--runs 7] [--n 200000]       scopelua's json vs lua-cjson: decode + encode every event
  Benchmarks/bench.py checkpoint [--runs 5] [--n 200000] analytics-1 with --checkpoint (default interval) vs without
  Benchmarks/bench.py limits [--runs 7] [--n 200000]     analytics-1 with limits = { time = 0.5, instructions = 5e7 }
                                                         on every stage vs without (--limits: other fields)
  Benchmarks/bench.py serve [--seconds 10] [--dir D]      scopelua serve (analytics-1, --workers 2) under wrk at 1, 16
                                                         and 64 connections vs scopelua run --input FILE --workers 2
                                                         (--threads: the server's threads, on a CPU and waiting for one)
  Benchmarks/bench.py workers [--runs 5] [--n 200000]    --workers 2 vs --workers 1: the CPU-bound pipeline
                                                         (Benchmarks/cpu_pipeline.lua), then analytics-1
  Benchmarks/bench.py redis [--runs 5] [--n 200000]      analytics-1 as 2 consumers of a Redis stream's group vs
                                                         2 Python consumers (Benchmarks/redis_consumer.py, redis-py)
                                                         (--count 1000: entries per XREADGROUP, a commit and an XACK
                                                         each; --wal: Python's database in WAL like scopelua's;
                                                         --hiredis: redis-py with its C parser)

Runs alternate (ours, baseline, ours, ...) so that a noisy machine hits both alike, and
the medians are compared. Build first: swift build -c release. Everything used lives in
Benchmarks/ (events come from gen_events.py); the Lua baselines need Debian's lua5.4,
lua-cjson and lua-sql-sqlite3 (and luajit for --luajit), and bench.py names what is missing.
The redis mode needs Debian's redis-server (scripts/install-deps.sh) and installs redis-py
from PyPI into .build-bench/venv on its first run.
"""
import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCOPELUA = os.path.join(ROOT, ".build", "release", "scopelua")
HERE = os.path.join(ROOT, "Benchmarks")

# What each baseline needs, as (program, Lua module or None, Debian package). Debian's
# lua-cjson and lua-sql-sqlite3 carry the Lua 5.1 builds LuaJIT loads as well.
LUA = [("lua5.4", None, "lua5.4"), ("lua5.4", "cjson", "lua-cjson"), ("lua5.4", "luasql.sqlite3", "lua-sql-sqlite3")]
LUAJIT = [("luajit", None, "luajit"), ("luajit", "cjson", "lua-cjson"), ("luajit", "luasql.sqlite3", "lua-sql-sqlite3")]
CJSON = [(SCOPELUA, "cjson", "lua-cjson")]  # the json benchmark loads lua-cjson into scopelua


def here(name):
    return os.path.join(HERE, name)


def loads(program, module):
    """Whether program (a Lua interpreter, or scopelua) can require module."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.lua")
        with open(probe, "w") as f:
            f.write(f"require({module!r})\n")
        cmd = [program, "run", probe] if program == SCOPELUA else [program, probe]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def need_packages(what, needs):
    """Exit naming what is missing and the apt-get command that installs it, if a
    program or Lua module in needs is not there."""
    missing, lines = [], []
    for program, module, package in needs:
        if module is None:
            if shutil.which(program) is None:
                lines.append(f"{program} (Debian package {package}) is not installed")
                missing.append(package)
        elif shutil.which(program) is None:
            lines.append(f"the Lua module {module} for {program} (Debian package {package}) "
                         f"cannot be checked without {program}")
            missing.append(package)
        elif not loads(program, module):
            lines.append(f"{os.path.basename(program)} cannot load the Lua module {module} (Debian package {package})")
            missing.append(package)
    if missing:
        packages = " ".join(dict.fromkeys(missing))
        sys.exit(f"bench: {what} cannot run:\n" + "".join(f"  {line}\n" for line in lines) +
                 f"  install with: sudo apt-get install -y {packages}")


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


def generate_events(n, directory):
    """n events from Benchmarks/gen_events.py, in directory/events.jsonl."""
    events = os.path.join(directory, "events.jsonl")
    with open(events, "w") as f:
        subprocess.run([sys.executable, here("gen_events.py"), str(n)], check=True, stdout=f)
    return events


def micro(args):
    """Per-pair cost: each program runs with N pairs and with none (start-up and exit
    only), alternating; (median(N) - median(0)) / N is what one pair costs."""
    need_packages("the pure-Lua baseline (Benchmarks/micro_tbc.lua)", LUA[:1])
    if args.instructions:
        need_packages("--instructions", [("valgrind", None, "valgrind")])
    progs = {"ours": [SCOPELUA, "run", here("micro_measure.lua")], "base": ["lua5.4", here("micro_tbc.lua")]}
    if args.python:
        progs["py"] = [sys.executable, here("micro_with.py")]
    ours, base = progs["ours"], progs["base"]
    n = args.n
    print(f"micro: {n} acquire/release pairs, {args.runs} alternating runs (each also with 0 pairs)")
    t = {k + zero: [] for k in progs for zero in ("", "0")}
    for _ in range(args.runs):
        for k, cmd in progs.items():
            t[k].append(timed(cmd + [str(n)]))
        for k, cmd in progs.items():
            t[k + "0"].append(timed(cmd + ["0"]))
    m = {k: statistics.median(v) for k, v in t.items()}
    print(f"  {'scopelua timer.measure':<28} median {m['ours']:7.3f}s   (start-up alone {m['ours0']:.3f}s)")
    print(f"  {'lua5.4 <close> table':<28} median {m['base']:7.3f}s   (start-up alone {m['base0']:.3f}s)")
    if args.python:
        print(f"  {'python3 with block':<28} median {m['py']:7.3f}s   (start-up alone {m['py0']:.3f}s)")
    pa = (m["ours"] - m["ours0"]) / n
    pb = (m["base"] - m["base0"]) / n
    # Each round ran both programs back to back: the ratio within a round is spared the
    # machine's slow and fast spells, which move both.
    rounds = [(a - m["ours0"]) / (b - m["base0"]) for a, b in zip(t["ours"], t["base"])]
    print(f"  per pair: scopelua {pa * 1e9:.0f} ns, pure Lua {pb * 1e9:.0f} ns")
    print(f"  ratio per pair (scopelua / pure Lua): {pa / pb:.2f}x  (target: within 2x)")
    if len(rounds) > 1:  # quartiles need two rounds at least
        q = statistics.quantiles(rounds, n=4)
        print(f"  the same ratio round by round: median {statistics.median(rounds):.2f}x, "
              f"quartiles {q[0]:.2f}x-{q[2]:.2f}x")
    print(f"  ratio of whole runs, start-up included: {m['ours'] / m['base']:.2f}x")
    if args.python:
        pc = (m["py"] - m["py0"]) / n
        print(f"  per Python with block: {pc * 1e9:.0f} ns (scopelua pair / with block: {pa / pc:.2f}x)")
    if args.instructions:
        small = 200000
        counts = [instructions(c) for c in (ours + [str(small)], ours + ["0"], base + [str(small)], base + ["0"])]
        if None in counts:
            print("  instructions: callgrind gave no count")
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
    need_packages("the plain-Lua baseline (Benchmarks/baseline_pipeline.lua)", LUA)
    if args.luajit:
        need_packages("the LuaJIT baseline (Benchmarks/baseline_pipeline_jit.lua)", LUAJIT)
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(args.n, tmp)
        # name: (label, command, environment); each writes its log and database in tmp/name
        progs = {"scopelua": ("scopelua analytics.lua",
                              # analytics.lua commits in flush, at each barrier: a barrier every 1500
                              # events read commits about 1000 rows, as the baselines' transactions do.
                              [SCOPELUA, "run", os.path.join(ROOT, "scripts", "analytics.lua"),
                               "--input", events, "--output", "none", "--checkpoint-every", "1500"],
                              dict(os.environ, ANALYTICS_OUT=os.path.join(tmp, "scopelua"))),
                 "lua": ("lua5.4 baseline_pipeline.lua",
                         ["lua5.4", here("baseline_pipeline.lua"), os.path.join(tmp, "lua")], None)}
        if args.luajit:
            progs["luajit"] = ("luajit baseline_pipeline_jit.lua",
                               ["luajit", here("baseline_pipeline_jit.lua"), os.path.join(tmp, "luajit")], None)
        progs["python"] = ("python3 baseline_pipeline.py",
                           [sys.executable, here("baseline_pipeline.py"), os.path.join(tmp, "python")], None)
        for name, (_, cmd, _) in progs.items():
            os.mkdir(os.path.join(tmp, name))
            if args.wal and name != "scopelua":
                cmd.append("--wal")

        def run(cmd, env, out):
            with open(events) as stdin:
                start = time.perf_counter()
                r = subprocess.run(cmd, stdin=stdin, stdout=out, stderr=out, text=True, check=True, env=env)
                return time.perf_counter() - start, r

        counts = {}
        for name, (_, cmd, env) in progs.items():
            r = run(cmd, env, subprocess.PIPE)[1]
            counts[name] = (r.stdout + r.stderr).strip().splitlines()[-1]
        if len(set(counts.values())) != 1:
            sys.exit(f"bench: counts differ: {counts}")
        print(f"pipeline: analytics-1 on {args.n} events ({counts['scopelua']}), {args.runs} alternating runs"
              + (", baselines in WAL mode" if args.wal else ""))
        t = {name: [] for name in progs}
        for _ in range(args.runs):
            for name, (_, cmd, env) in progs.items():
                t[name].append(run(cmd, env, subprocess.DEVNULL)[0])
        m = {k: statistics.median(v) for k, v in t.items()}
        width = max(30, *(len(label) for label, _, _ in progs.values()))
        for name, (label, _, _) in progs.items():
            print(f"  {label:<{width}} median {m[name]:7.3f}s   (min {min(t[name]):.3f}s)")
        print(f"  speed-up over plain Lua: {m['lua'] / m['scopelua']:.2f}x  (target: at least 1.5x)")
        if args.luajit:
            print(f"  speed-up over LuaJIT:    {m['luajit'] / m['scopelua']:.2f}x")
        print(f"  speed-up over Python:    {m['python'] / m['scopelua']:.2f}x  (target: at least 2.5x)")


def json_codec(args):
    """Why scopelua has its own JSON codec: the same round trip with each, alternating."""
    need_packages("the json benchmark (lua-cjson in scopelua)", CJSON)
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(args.n, tmp)
        script = here("json_roundtrip.lua")
        ours = [SCOPELUA, "run", script, "scopelua", events]
        cjson = [SCOPELUA, "run", script, "cjson", events]
        print(f"json: decode + encode {args.n} events, {args.runs} alternating runs")
        ma, mb = side_by_side("scopelua json", ours, "lua-cjson", cjson, args.runs)
        print(f"  speed-up over cjson: {mb / ma:.2f}x")


def alternate_analytics(args, variants, describe):
    """analytics-1 over the same events in each variant, alternating, from a fresh state
    each run. variants: name -> (label, script, extra options, state file to remove
    before each run or None). All must give the same counts. Returns the medians and the
    per-run times by name."""
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(args.n, tmp)
        runs = {}
        for name, (label, script, extra, state) in variants.items():
            out = os.path.join(tmp, name)
            os.mkdir(out)
            cmd = [SCOPELUA, "run", script(tmp), "--input", events, "--output", os.path.join(out, "kept.jsonl")] + extra(out)
            runs[name] = (cmd, dict(os.environ, ANALYTICS_OUT=out), state(out) if state else None)

        def run(name, capture):
            cmd, env, state = runs[name]
            for suffix in ("", "-wal", "-shm"):
                if state and os.path.exists(state + suffix):
                    os.remove(state + suffix)
            start = time.perf_counter()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
                               text=True, check=True, env=env)
            return time.perf_counter() - start, r

        counts = {name: run(name, True)[1].stderr.strip().splitlines()[-1] for name in runs}
        if len(set(counts.values())) != 1:
            sys.exit(f"bench: counts differ: {counts}")
        print(f"{describe} ({next(iter(counts.values()))}), {args.runs} alternating runs")
        t = {name: [] for name in runs}
        for _ in range(args.runs):
            for name in runs:
                t[name].append(run(name, False)[0])
        m = {k: statistics.median(v) for k, v in t.items()}
        for name, (label, _, _, _) in variants.items():
            print(f"  {label:<28} median {m[name]:7.3f}s   (min {min(t[name]):.3f}s)")
        return m, t


ANALYTICS = os.path.join(ROOT, "scripts", "analytics.lua")


def checkpoint(args):
    """What checkpointing costs: analytics-1 writing its output to a file, with
    --checkpoint (the default interval: a barrier every 10000 events or 5 s, each one
    syncing the output and committing the checkpoint) and without, alternating. Each
    checkpoint run starts from a fresh checkpoint file (else it would resume at the end)."""
    variants = {"plain": ("without --checkpoint", lambda tmp: ANALYTICS, lambda out: [], None),
                "checkpoint": ("--checkpoint (10000,5s)", lambda tmp: ANALYTICS,
                               lambda out: ["--checkpoint", os.path.join(out, "state.db")],
                               lambda out: os.path.join(out, "state.db"))}
    m, t = alternate_analytics(args, variants, f"checkpoint: analytics-1 on {args.n} events, output to a file")
    rounds = [c / p for p, c in zip(t["plain"], t["checkpoint"])]
    print(f"  cost of checkpointing: {(m['checkpoint'] / m['plain'] - 1) * 100:+.1f}%  (target: at most +10%); "
          f"round by round: median {(statistics.median(rounds) - 1) * 100:+.1f}%")


def limits(args):
    """What per-stage limits cost: analytics-1 with `limits = { time = 0.5, instructions
    = 5e7 }` on every stage (a copy of scripts/analytics.lua with that line added to each
    stage definition) against the script as it is, alternating."""
    def limited(tmp):
        path = os.path.join(tmp, "analytics_limits.lua")
        with open(ANALYTICS) as f:
            text = f.read()
        text, n = re.subn(r'^(stage "[^"]+" \{)$', r"\1\n  limits = { " + args.limits + " },", text, flags=re.M)
        if n == 0:
            sys.exit("bench: found no stage definition in scripts/analytics.lua")
        with open(path, "w") as f:
            f.write(text)
        return path

    variants = {"plain": ("without limits", lambda tmp: ANALYTICS, lambda out: [], None),
                "limits": ("limits on every stage", limited, lambda out: [], None)}
    m, t = alternate_analytics(args, variants, f"limits: analytics-1 on {args.n} events, output to a file, "
                                               f"limits = {{ {args.limits} }} on every stage")
    rounds = [c / p for p, c in zip(t["plain"], t["limits"])]
    print(f"  cost of limits: {(m['limits'] / m['plain'] - 1) * 100:+.1f}%  (target: at most +5%); "
          f"round by round: median {(statistics.median(rounds) - 1) * 100:+.1f}%")


def run_rusage(cmd, env=None, stderr=subprocess.DEVNULL):
    """Runs cmd (stdout to /dev/null): wall seconds, CPU seconds (user + system, every
    thread of the child), and what it wrote on stderr when stderr is subprocess.PIPE."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env, text=True)
    err = proc.stderr.read() if stderr == subprocess.PIPE else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode}):\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, err


def canonical_digest(path):
    """A digest of a JSON-lines file that does not depend on the order of each object's
    keys (a Lua table's order of keys changes from one state to the next, so two runs,
    or two workers, write the same event with its keys in different orders)."""
    h = hashlib.sha256()
    with open(path) as f:
        for line in f:
            h.update(json.dumps(json.loads(line), sort_keys=True).encode())
            h.update(b"\n")
    return h.hexdigest()


def worker_totals(stderr, fields):
    """The totals a pipeline's stages printed when they closed, one line per worker
    (`worker N: ... name=value ...`), added up; `xor` values are xored instead."""
    totals = {}
    for line in stderr.splitlines():
        for word in line.split():
            name, _, value = word.partition("=")
            if name not in fields:
                continue
            if name == "xor":
                totals[name] = totals.get(name, 0) ^ int(value, 16)
            else:
                totals[name] = totals.get(name, 0) + int(value)
    return " ".join(f"{k}={totals.get(k, 0):x}" if k == "xor" else f"{k}={totals.get(k, 0)}" for k in fields)


def idle_share(seconds=1.0):
    """The share of the machine's CPU time that was idle over the next `seconds`
    (/proc/stat), or None where there is no /proc/stat."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return (idle1 - idle0) / max(1, total1 - total0)


def workers(args):
    """--workers 2 against --workers 1 (the stages in the main state, no coordinator),
    alternating, with a control: two --workers 1 runs at once, each over half the events,
    which is what the machine gives two busy threads right now (on a shared machine,
    other jobs take cores; the control says when they did). First the CPU-bound pipeline
    (Benchmarks/cpu_pipeline.lua), its output to /dev/null (every event is still encoded,
    and written by the main thread), then analytics-1 (scripts/analytics.lua: a log file
    and a SQLite database per worker, the output to a file)."""
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(args.n, tmp)
        halves = [os.path.join(tmp, "first-half.jsonl"), os.path.join(tmp, "second-half.jsonl")]
        with open(events) as f:
            lines = f.readlines()
        for path, part in zip(halves, (lines[:len(lines) // 2], lines[len(lines) // 2:])):
            with open(path, "w") as f:
                f.writelines(part)
        del lines
        idle = idle_share()
        print(f"workers: {args.n} events, {args.runs} alternating runs, {os.cpu_count()} cores"
              + (f" ({idle:.0%} idle over the second before the runs)" if idle is not None else ""))
        if idle is not None and idle < 0.9:
            print("  note: the machine is busy; 2 workers need 2 idle cores (see the control's figure)")

        def rounds(label, cmd, env):
            """cmd(workers, input, tag) and env(tag): alternating rounds of --workers 1,
            --workers 2 and the control; prints the medians, returns the 2/1 ratio."""
            t = {k: {"wall": [], "cpu": []} for k in ("1", "2", "control")}
            for _ in range(args.runs):
                for w in ("1", "2"):
                    wall, cpu_s, _ = run_rusage(cmd(int(w), events, w), env=env(w))
                    t[w]["wall"].append(wall)
                    t[w]["cpu"].append(cpu_s)
                start = time.perf_counter()
                procs = [subprocess.Popen(cmd(1, half, f"half{i}"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env=env(f"half{i}")) for i, half in enumerate(halves)]
                usage = [os.wait4(p.pid, 0) for p in procs]
                t["control"]["wall"].append(time.perf_counter() - start)
                t["control"]["cpu"].append(sum(u[2].ru_utime + u[2].ru_stime for u in usage))
                if any(os.waitstatus_to_exitcode(u[1]) != 0 for u in usage):
                    sys.exit(f"bench: the control run of {label} failed")
            m = {k: statistics.median(v["wall"]) for k, v in t.items()}
            c = {k: statistics.median(v["cpu"]) for k, v in t.items()}
            names = {"1": f"{label} --workers 1", "2": f"{label} --workers 2",
                     "control": "control: 2 runs at once, half each"}
            width = max(len(n) for n in names.values())
            for k, name in names.items():
                print(f"  {name:<{width}}  median {m[k]:6.3f}s  {args.n / m[k]:8.0f} events/s   "
                      f"(min {min(t[k]['wall']):.3f}s; CPU {c[k]:.2f}s)")
            per_round = [a / b for a, b in zip(t["1"]["wall"], t["2"]["wall"])]
            print(f"  2 workers / 1 worker: {m['1'] / m['2']:.2f}x  (round by round: median {statistics.median(per_round):.2f}x); "
                  f"the control: {m['1'] / m['control']:.2f}x; CPU time of 2 workers: {c['2'] / c['1']:.2f}x the 1-worker run's")
            return m["1"] / m["2"]

        # The CPU-bound pipeline. The check: the same events out (keys in any order) and
        # the same totals, with 1 and 2 workers.
        script = here("cpu_pipeline.lua")

        def cpu_cmd(w, path, tag, output="/dev/null"):
            return [SCOPELUA, "run", script, "--input", path, "--workers", str(w), "--output", output]

        fields = ("events", "xor", "cents", "click", "view", "buy")
        digests, totals = {}, {}
        for w in (1, 2):
            out = os.path.join(tmp, f"cpu-{w}.jsonl")
            err = run_rusage(cpu_cmd(w, events, "", output=out), stderr=subprocess.PIPE)[2]
            digests[w], totals[w] = canonical_digest(out), worker_totals(err, fields)
            os.remove(out)
        if len(set(digests.values())) != 1 or len(set(totals.values())) != 1:
            sys.exit(f"bench: 1 and 2 workers differ: {digests} {totals}")
        print(f"cpu_pipeline.lua: the same {args.n} events out with 1 and 2 workers ({totals[1]})")
        rounds("cpu_pipeline", cpu_cmd, lambda tag: None)
        print("  (target for the CPU pipeline: at least 1.8x on 2 cores)")

        if shutil.which("lua5.4") and loads("lua5.4", "cjson"):
            base = []
            for _ in range(args.runs):
                with open(events) as stdin:
                    start = time.perf_counter()
                    subprocess.run(["lua5.4", script], stdin=stdin, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, check=True)
                    base.append(time.perf_counter() - start)
            mb = statistics.median(base)
            print(f"  plain lua5.4 (lua-cjson), one state: median {mb:.3f}s  {args.n / mb:.0f} events/s (after the rounds above)")

        # analytics-1: each worker its own log and database (scripts/analytics.lua).
        analytics = os.path.join(ROOT, "scripts", "analytics.lua")

        def out_dir(tag):
            path = os.path.join(tmp, f"analytics-{tag}")
            os.makedirs(path, exist_ok=True)
            return path

        def analytics_cmd(w, path, tag):
            return [SCOPELUA, "run", analytics, "--input", path, "--workers", str(w),
                    "--output", os.path.join(out_dir(tag), "kept.jsonl")]

        def analytics_env(tag):
            return dict(os.environ, ANALYTICS_OUT=out_dir(tag))

        counts = {w: worker_totals(run_rusage(analytics_cmd(w, events, str(w)), env=analytics_env(str(w)),
                                              stderr=subprocess.PIPE)[2], ("seen", "kept", "click", "buy"))
                  for w in (1, 2)}
        if len(set(counts.values())) != 1:
            sys.exit(f"bench: analytics-1 counts differ with 1 and 2 workers: {counts}")
        print(f"analytics-1 ({counts[1]}), output to a file, a log and a database per worker")
        rounds("analytics-1", analytics_cmd, analytics_env)
        idle = idle_share()
        if idle is not None:
            print(f"({idle:.0%} idle over the second after the runs)")

# redis-py for the Python consumer comes from PyPI, into a venv under the build directory
# (ignored by git like .build/): created by the first run of the redis mode. With --hiredis
# a second venv also has hiredis, the C reply parser redis-py uses when it is installed.
VENV = os.path.join(ROOT, ".build-bench", "venv")
REDIS_PY = "redis==5.0.1"
HIREDIS = "hiredis==3.5.0"


def serve(args):
    """HTTP ingest against reading a file: analytics-1 with --workers 2 as `scopelua serve`,
    loaded by wrk (POST /events, batches of --batch events, each answered once durable)
    at 1, 16 and 64 connections for --seconds each, side by side with the same stages
    over the same number of events through `scopelua run --input FILE --workers 2` (the
    output to a file in both). Events/s, and wrk's p50/p99 latency per request."""
    need_packages("the serve benchmark (wrk)", [("wrk", None, "wrk")])
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        events = generate_events(args.n, tmp)
        with open(events) as f:
            body = "".join(f.readline() for _ in range(args.batch))
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-ndjson"\n'
                    f"wrk.body = [==[{body}]==]\n")

        def out(tag):
            d = os.path.join(tmp, tag)
            os.makedirs(d, exist_ok=True)
            return d

        file_rates = []
        for i in range(args.runs):
            d = out(f"file{i}")
            wall, _, _ = run_rusage([SCOPELUA, "run", ANALYTICS, "--input", events, "--workers", "2",
                                     "--output", os.path.join(d, "kept.jsonl")], env=dict(os.environ, ANALYTICS_OUT=d))
            file_rates.append(args.n / wall)
        file_rate = statistics.median(file_rates)
        print(f"serve: analytics-1, --workers 2, output to a file; {args.n} events from a file, {args.runs} runs; "
              f"HTTP: wrk, POST /events with {args.batch} events a request, {args.seconds} s per connection count")
        print(f"  scopelua run --input FILE        {file_rate:12,.0f} events/s")
        results = {}
        for connections in (1, 16, 64):
            d = out(f"serve{connections}")
            server = subprocess.Popen([SCOPELUA, "serve", ANALYTICS, "--listen", "127.0.0.1:0", "--workers", "2",
                                       "--output", os.path.join(d, "kept.jsonl")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ, ANALYTICS_OUT=d))
            port = None
            for line in server.stderr:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    break
            if port is None:
                sys.exit("bench: scopelua serve did not start")
            threads = min(2, connections)
            before, started = thread_times(server.pid) if args.threads else {}, time.monotonic()
            w = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{args.seconds}s", "--latency",
                                "-s", script, f"http://127.0.0.1:{port}/events"], capture_output=True, text=True, check=True)
            after, wall = thread_times(server.pid) if args.threads else {}, time.monotonic() - started
            server.send_signal(signal.SIGTERM)
            server.communicate()
            text = w.stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
            lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, flags=re.M))
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
            results[connections] = (rps * args.batch, lat.get("50", "?"), lat.get("99", "?"), int(bad.group(1)) if bad else 0)
            rate, p50, p99, non2xx = results[connections]
            print(f"  serve, {connections:2d} connection{'s' if connections > 1 else ' '}          {rate:12,.0f} events/s"
                  f"   {rate / file_rate:5.0%} of the file run   p50 {p50:>8}  p99 {p99:>8}"
                  + (f"   ({non2xx} answers not 2xx)" if non2xx else ""))
            if args.threads:
                print_thread_times(server.pid, before, after, wall)
        print(f"  HTTP ingest at 16 connections: {results[16][0] / file_rate:.0%} of the file run's events/s (target: at least 70%)")


def thread_times(pid):
    """{thread id: (name, ns on a CPU, ns waiting for a CPU, times scheduled)} of a
    process's threads, from /proc/PID/task/*/schedstat (Linux)."""
    times = {}
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return times  # the process ended
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"{task_dir}/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        times[tid] = (name, run, wait, slices)
    return times


def print_thread_times(pid, before, after, wall):
    """Each busy thread's share of the wall time on a CPU and waiting for one (runnable, but
    both CPUs taken), and how often it was scheduled: where a closed loop's latency goes.
    The main thread (its id is the process's) runs the coordinator; workers are named
    scopelua-wN; NIO's threads serve HTTP."""
    for tid, (name, run, wait, slices) in sorted(after.items(), key=lambda t: t[1][0]):
        _, run0, wait0, slices0 = before.get(tid, (name, 0, 0, 0))
        on_cpu = (run - run0) / 1e9 / wall
        if on_cpu < 0.01:
            continue
        role = "coordinator" if tid == str(pid) else "workers" if name.startswith("scopelua-w") \
            else "HTTP" if name.startswith("NIO") else "other"
        print(f"      {name:16} {tid:>7} ({role:11}) on a CPU {on_cpu:4.0%}, waiting for one {(wait - wait0) / 1e9 / wall:4.0%}, "
              f"scheduled {(slices - slices0) / wall:6,.0f}/s")


def apt_install(packages):
    """Installs Debian packages as scripts/install-deps.sh does: apt-get directly as root,
    through sudo otherwise; exits saying what to do when neither works."""
    as_root = [] if os.geteuid() == 0 else ["sudo"]
    if as_root and shutil.which("sudo") is None:
        sys.exit(f"bench: needs the Debian packages {' '.join(packages)}: run as root, or install sudo")
    print(f"bench: installing {' '.join(packages)}", file=sys.stderr)
    apt = as_root + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    subprocess.run(apt + ["update", "-qq"], check=True)
    subprocess.run(apt + ["install", "-y", "-qq"] + packages, check=True, stdout=subprocess.DEVNULL)


def venv_python(hiredis=False):
    """The Python of .build-bench/venv (venv-hiredis with hiredis), with redis-py
    installed; made (python3 -m venv, pip install redis==5.0.1 [hiredis==...]) when it is
    missing. A Debian python3 without its venv module gets python3-venv first."""
    venv = VENV + ("-hiredis" if hiredis else "")
    packages = [REDIS_PY] + ([HIREDIS] if hiredis else [])
    python = os.path.join(venv, "bin", "python")
    probe = "import sys, redis; sys.exit(redis.__version__ != %r)" % REDIS_PY.split("==")[1]
    if hiredis:
        probe += "; import hiredis; sys.exit(hiredis.__version__ != %r)" % HIREDIS.split("==")[1]
    if os.path.exists(python) and subprocess.run([python, "-c", probe], stderr=subprocess.DEVNULL).returncode == 0:
        return python
    base = sys.executable
    if subprocess.run([base, "-c", "import ensurepip, venv"], stderr=subprocess.DEVNULL).returncode != 0:
        apt_install(["python3-venv"])
        base = "/usr/bin/python3"
    print(f"bench: making {os.path.relpath(venv, ROOT)} with {' '.join(packages)} from PyPI", file=sys.stderr)
    subprocess.run([base, "-m", "venv", "--clear", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + packages, check=True)
    return python


class RedisServer:
    """A redis-server of the benchmark's own: a free loopback port, a temporary directory,
    no persistence (--save '' --appendonly no); stopped (SIGTERM) when the block ends."""

    def __init__(self, directory):
        self.directory = directory
        log = ""
        for _ in range(5):
            with socket.socket() as s:  # a port the kernel hands out; another process may take it first
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", directory, "--daemonize", "no", "--logfile", os.path.join(directory, "server.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            for _ in range(500):
                if self.proc.poll() is not None or self.ping():
                    break
                time.sleep(0.01)
            if self.proc.poll() is None and self.ping():
                return
            self.stop()
            with open(os.path.join(directory, "server.log")) as f:
                log = f.read()
            if "Address already in use" not in log:
                break
        sys.exit(f"bench: redis-server did not start:\n{log}")

    def ping(self):
        return subprocess.run(["redis-cli", "-p", str(self.port), "PING"], capture_output=True, text=True).stdout.strip() == "PONG"

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)] + [str(a) for a in args],
                           capture_output=True, text=True)
        if r.returncode != 0 or r.stdout.startswith("ERR") or r.stdout.startswith("(error)"):
            sys.exit(f"bench: redis-cli {' '.join(map(str, args))}: {r.stdout}{r.stderr}")
        return r.stdout.strip()

    def cpu_seconds(self):
        """The server's CPU time so far (user + system, /proc/PID/stat)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def xadd_protocol(lines, stream):
    """The events as XADD commands in Redis' wire protocol, for redis-cli --pipe (one
    pipelined stream of commands: 200 000 entries load in about a second)."""
    head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$5\r\nevent\r\n" % (len(stream), stream)
    out = bytearray()
    for line in lines:
        line = line.rstrip(b"\n")
        out += head + b"$%d\r\n%s\r\n" % (len(line), line)
    return bytes(out)


def group_info(server, stream, group):
    """XINFO GROUPS' fields of one group, as text (redis-cli prints them a line each)."""
    lines = server.cli("XINFO", "GROUPS", stream).splitlines()
    for i in range(0, len(lines) - 1, 2):  # name, value, name, value, ...; a group starts at "name"
        if lines[i] == "name" and lines[i + 1] == group:
            info = {}
            for k in range(i, len(lines) - 1, 2):
                if k > i and lines[k] == "name":
                    break
                info[lines[k]] = lines[k + 1]
            return info
    sys.exit(f"bench: no group {group} on stream {stream}")


def redis_stream(args):
    """analytics-1 fed by a Redis stream: 2 scopelua consumers of one consumer group
    (scripts/analytics.lua, --input redis://...?group=G&consumer=c1|c2) against 2 Python
    consumers doing the same stages (Benchmarks/redis_consumer.py, redis-py), alternating,
    each run with a fresh group over the whole stream (start=0). Both sides read COUNT
    entries per XREADGROUP and, per batch, commit its rows in one transaction and then
    acknowledge it with one XACK (scopelua: --checkpoint-every COUNT, a barrier per batch).
    Each consumer has its own log and database. A run ends when both consumers have
    exited: idle_exit after their last read, once nothing is pending in the group; that
    idle wait is the same for both sides and is subtracted from the wall time."""
    need_packages("the redis benchmark", [("redis-server", None, "redis-server"), ("redis-cli", None, "redis-tools")])
    python = venv_python(args.hiredis)
    count, idle, stream = args.count, args.idle_exit, "events"
    analytics = os.path.join(ROOT, "scripts", "analytics.lua")
    with tempfile.TemporaryDirectory() as tmp:
        events = generate_events(args.n, tmp)
        expected = {"seen": 0, "kept": 0, "click": 0, "buy": 0}
        with open(events, "rb") as f:
            lines = f.readlines()
        for line in lines:
            kind = json.loads(line)["kind"]
            expected["seen"] += 1
            if kind != "view":
                expected["kept"] += 1
                expected[kind] = expected.get(kind, 0) + 1
        expected_text = " ".join(f"{k}={expected[k]}" for k in ("seen", "kept", "click", "buy"))
        server_dir = os.path.join(tmp, "redis")
        os.mkdir(server_dir)
        with RedisServer(server_dir) as server:
            load = subprocess.run(["redis-cli", "-p", str(server.port), "--pipe"], input=xadd_protocol(lines, stream.encode()),
                                  capture_output=True)
            del lines
            if load.returncode != 0 or int(server.cli("XLEN", stream)) != args.n:
                sys.exit(f"bench: loading the stream failed: {load.stdout.decode()}{load.stderr.decode()}")
            last_id = server.cli("XINFO", "STREAM", stream).splitlines()
            last_id = last_id[last_id.index("last-generated-id") + 1]
            versions = subprocess.run([python, "-c", "import redis, sys; from redis.utils import HIREDIS_AVAILABLE as h; "
                                       "print(sys.version.split()[0], redis.__version__, "
                                       "'(hiredis parser)' if h else '(its pure-Python parser)')"],
                                      capture_output=True, text=True, check=True).stdout.split(maxsplit=2)
            server_version = server.cli("INFO", "server").split("redis_version:")[1].split()[0]

            def out_dir(side, consumer):
                path = os.path.join(tmp, f"{side}-{consumer}")
                os.makedirs(path, exist_ok=True)
                return path

            def command(side, group, consumer):
                url = (f"redis://127.0.0.1:{server.port}/{stream}?group={group}&consumer={consumer}"
                       f"&count={count}&start=0&idle_exit={idle:g}")
                if side == "scopelua":
                    # A barrier every COUNT entries: analytics.lua commits in flush, then the
                    # runner acknowledges what was read: one commit and one XACK per batch.
                    return ([SCOPELUA, "run", analytics, "--input", url, "--output", "none",
                             "--checkpoint-every", str(count)],
                            dict(os.environ, ANALYTICS_OUT=out_dir(side, consumer)))
                return [python, here("redis_consumer.py"), url, out_dir(side, consumer)] + (["--wal"] if args.wal else []), None

            def run(side, number):
                """One run of 2 consumers in a fresh group: seconds from the start until both
                exited, their CPU seconds, the server's, and the per-consumer counts; checks
                that they did analytics-1's work on every entry, once."""
                group = f"{side}-{number}"
                server_cpu = server.cpu_seconds()
                start = time.perf_counter()
                procs = []
                for consumer in ("c1", "c2"):
                    cmd, env = command(side, group, consumer)
                    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
                outputs, cpu = [], 0.0
                for p in procs:
                    out = p.stdout.read() + p.stderr.read()
                    _, status, usage = os.wait4(p.pid, 0)
                    if os.waitstatus_to_exitcode(status) != 0:
                        sys.exit(f"bench: a {side} consumer failed:\n{out.decode()}")
                    outputs.append(out.decode())
                    cpu += usage.ru_utime + usage.ru_stime
                wall = time.perf_counter() - start
                server_cpu = server.cpu_seconds() - server_cpu
                # The same work: the counts analytics-1 prints, added up over both consumers;
                # every kept event's row is in one of the two databases, once; nothing is
                # pending and the group has read the whole stream.
                per = [worker_totals(o.strip().splitlines()[-1], ("seen", "kept", "click", "buy")) for o in outputs]
                totals = worker_totals("\n".join(per), ("seen", "kept", "click", "buy"))
                ids, rows, logged = set(), 0, 0
                for consumer in ("c1", "c2"):
                    with contextlib.closing(sqlite3.connect(os.path.join(out_dir(side, consumer), "analytics.db"))) as db:
                        found = [r[0] for r in db.execute("SELECT id FROM events")]
                    rows += len(found)
                    ids.update(found)
                    with open(os.path.join(out_dir(side, consumer), "events.log"), "rb") as f:
                        logged += sum(1 for _ in f)
                info = group_info(server, stream, group)
                problems = []
                if totals != expected_text:
                    problems.append(f"counts {totals}, expected {expected_text}")
                if not rows == len(ids) == logged == expected["kept"]:
                    problems.append(f"{rows} rows ({len(ids)} ids) in the databases and {logged} log lines, "
                                    f"expected {expected['kept']}")
                if info.get("pending") != "0" or info.get("last-delivered-id") != last_id or info.get("lag", "0") != "0":
                    problems.append(f"the group is not drained: {info}")
                if problems:
                    sys.exit(f"bench: {side} run {number}: " + "; ".join(problems))
                server.cli("XGROUP", "DESTROY", stream, group)
                return wall, cpu, server_cpu, [p.split()[0] for p in per]

            idle_before = idle_share()
            print(f"redis: analytics-1 from a stream of {args.n} entries ({expected_text}), 2 consumers per group, "
                  f"COUNT {count} with a commit and an XACK per batch, idle_exit {idle:g}s, {args.runs} alternating runs, "
                  f"{os.cpu_count()} cores" + (f" ({idle_before:.0%} idle over the second before)" if idle_before is not None else ""))
            print(f"  redis-server {server_version} on 127.0.0.1:{server.port}; Python {versions[0]} with redis-py {versions[1]} {versions[2].strip()}; "
                  f"Python's database in {'WAL' if args.wal else 'rollback-journal'} mode (scopelua's sql.open: WAL)")
            if idle_before is not None and idle_before < 0.9:
                print("  note: the machine is busy; 2 consumers and the server need 2 idle cores")
            sides = {"scopelua": "2 scopelua analytics.lua", "python": "2 python3 redis_consumer.py"}
            t = {side: {"wall": [], "cpu": [], "server": [], "split": []} for side in sides}
            for number in range(1, args.runs + 1):
                for side in sides:
                    wall, cpu, server_cpu, split = run(side, number)
                    t[side]["wall"].append(wall - idle)
                    t[side]["cpu"].append(cpu)
                    t[side]["server"].append(server_cpu)
                    t[side]["split"].append("/".join(s.split("=")[1] for s in split))
            m = {side: statistics.median(v["wall"]) for side, v in t.items()}
            width = max(len(label) for label in sides.values())
            for side, label in sides.items():
                print(f"  {label:<{width}}  median {m[side]:6.3f}s  {args.n / m[side]:8.0f} entries/s   "
                      f"(min {min(t[side]['wall']):.3f}s; CPU: consumers {statistics.median(t[side]['cpu']):.2f}s, "
                      f"redis-server {statistics.median(t[side]['server']):.2f}s; entries seen by c1/c2: {t[side]['split'][0]})")
            rounds = [p / s for s, p in zip(t["scopelua"]["wall"], t["python"]["wall"])]
            print(f"  speed-up over Python: {m['python'] / m['scopelua']:.2f}x  (target: at least 2x); "
                  f"round by round: median {statistics.median(rounds):.2f}x")
            print(f"  (times: from the start of both consumers until both exited, less idle_exit; "
                  f"every run checked: counts, rows, log lines, nothing pending)")
        idle_after = idle_share()
        if idle_after is not None:
            print(f"({idle_after:.0%} idle over the second after the runs)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("micro", help="timer.measure acquire+release vs a pure-Lua <close> table")
    m.add_argument("--runs", type=int, default=9)
    m.add_argument("--n", type=int, default=1000000)
    m.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    m.add_argument("--python", action="store_true", help="also time Python with blocks (Benchmarks/micro_with.py)")
    m.set_defaults(fn=micro)
    q = sub.add_parser("sqlite", help="prepared inserts in transactions of 1000 vs Python's sqlite3")
    q.add_argument("--runs", type=int, default=5)
    q.add_argument("--n", type=int, default=100000)
    q.set_defaults(fn=sqlite)
    r = sub.add_parser("pipeline", help="analytics-1 vs the plain-Lua and Python baselines")
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--n", type=int, default=200000)
    r.add_argument("--luajit", action="store_true", help="also run the LuaJIT baseline (Benchmarks/baseline_pipeline_jit.lua)")
    r.add_argument("--wal", action="store_true",
                   help="baselines switch their database to WAL, as scopelua's sql.open does (default: SQLite's rollback journal)")
    r.set_defaults(fn=pipeline)
    j = sub.add_parser("json", help="scopelua's json vs lua-cjson on the pipeline's events")
    j.add_argument("--runs", type=int, default=7)
    j.add_argument("--n", type=int, default=200000)
    j.set_defaults(fn=json_codec)
    c = sub.add_parser("checkpoint", help="analytics-1 with --checkpoint (default interval) vs without")
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--n", type=int, default=200000)
    c.set_defaults(fn=checkpoint)
    lm = sub.add_parser("limits", help="analytics-1 with time and instruction limits on every stage vs without")
    lm.add_argument("--runs", type=int, default=7)
    lm.add_argument("--n", type=int, default=200000)
    lm.add_argument("--limits", default="time = 0.5, instructions = 5e7", help="the limits table's fields")
    lm.set_defaults(fn=limits)
    sv = sub.add_parser("serve", help="scopelua serve under wrk (1, 16, 64 connections) vs scopelua run --input FILE")
    sv.add_argument("--runs", type=int, default=3, help="file runs (their median is the reference)")
    sv.add_argument("--n", type=int, default=1000000,
                    help="events in the file run (its reference: 200 000 take a third of a second, too short to be steady)")
    sv.add_argument("--batch", type=int, default=100, help="events per request")
    sv.add_argument("--seconds", type=int, default=10, help="wrk's duration per connection count")
    sv.add_argument("--dir", default=None, help="where the events, the outputs and the databases go (default: a "
                    "temporary directory under $TMPDIR; /dev/shm: a RAM disk, where a sync does not wait for a disk)")
    sv.add_argument("--threads", action="store_true", help="after each connection count, the server's busy threads: "
                    "their share of the time on a CPU, waiting for one, and how often they were scheduled (Linux schedstat)")
    sv.set_defaults(fn=serve)
    w = sub.add_parser("workers", help="--workers 2 vs --workers 1: a CPU-bound pipeline, then analytics-1")
    w.add_argument("--runs", type=int, default=5)
    w.add_argument("--n", type=int, default=200000)
    w.set_defaults(fn=workers)
    rs = sub.add_parser("redis", help="2 consumers of a Redis stream's group running analytics-1 vs 2 Python consumers")
    rs.add_argument("--runs", type=int, default=5)
    rs.add_argument("--n", type=int, default=200000)
    rs.add_argument("--count", type=int, default=1000, help="entries per XREADGROUP; a commit and an XACK per batch")
    rs.add_argument("--idle-exit", type=float, default=0.2, help="seconds without entries after which a consumer exits")
    rs.add_argument("--wal", action="store_true",
                    help="the Python consumers' database in WAL mode, as scopelua's sql.open (default: SQLite's rollback journal)")
    rs.add_argument("--hiredis", action="store_true",
                    help="the Python consumers with hiredis, redis-py's C reply parser (.build-bench/venv-hiredis)")
    rs.set_defaults(fn=redis_stream)
    args = p.parse_args()
    if not os.path.exists(SCOPELUA):
        sys.exit("bench: build first: swift build -c release")
    args.fn(args)


if __name__ == "__main__":
    main()
