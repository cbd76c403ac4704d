#!/usr/bin/env python3
"""Runs bench/records_cost built against libskein.a with the records off and on, interleaved.

    python3 bench/records_cost.py OFF_BINARY ON_BINARY [ROUNDS]

Each round runs each binary 7 times (off first); per operation it prints the median over rounds
of the off and on minima, and the median over rounds of the on/off ratio of the round's minima
and of its medians (docs/observability.md, "What it costs").
"""
import subprocess, statistics, sys
binaries = {"norec": sys.argv[1], "rec": sys.argv[2]}
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
runs = 7
names = ["ping-pong unbuffered", "ping-pong capacity 1", "yield (10 fibers)", "spawn + join"]
per = {b: [[] for _ in names] for b in ("norec", "rec")}  # per round: (min, median)
ratios_min = [[] for _ in names]; ratios_med = [[] for _ in names]
for r in range(rounds):
    res = {}
    for b in ("norec", "rec"):
        vals = [list(map(float, subprocess.check_output([binaries[b]]).split())) for _ in range(runs)]
        res[b] = [(min(v[i] for v in vals), statistics.median(v[i] for v in vals)) for i in range(len(names))]
        for i in range(len(names)): per[b][i].append(res[b][i])
    for i in range(len(names)):
        ratios_min[i].append(res["rec"][i][0] / res["norec"][i][0])
        ratios_med[i].append(res["rec"][i][1] / res["norec"][i][1])
for i, n in enumerate(names):
    off = statistics.median(m for m, _ in per["norec"][i]); on = statistics.median(m for m, _ in per["rec"][i])
    print(f"{n:24s} off {off:7.1f} ns  on {on:7.1f} ns  on/off min {statistics.median(ratios_min[i]):.3f}  median {statistics.median(ratios_med[i]):.3f}")
