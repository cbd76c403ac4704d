#!/usr/bin/env python3
"""Runs bench/records_cost of a build with the records off and of one with them on, interleaved,
and prints per operation the on/off ratio (docs/observability.md, "What it costs").

    python3 bench/records_cost.py OFF_BINARY ON_BINARY [--rounds N] [--runs K] [--cpu C]

Each round runs the two binaries alternately, K times each, in the order off, on, on, off, ...
(so a drift of the machine's speed within a round weighs on both alike), pinned to one CPU with
taskset when it is there. Per operation it prints:
  off, on     the median over rounds of each round's minimum (ns per operation);
  min         the median over rounds of the ratio of the round's minima (on / off);
  paired      the median of the ratios of every run to its neighbour of the other binary;
  range       the 10th and 90th percentiles of those paired ratios: how far one pair may stray.
Exit status 0; 2 for bad arguments.
"""
import argparse
import shutil
import statistics
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("off", help="records_cost built with -Ddebug_records=false")
    ap.add_argument("on", help="records_cost built with the records (the default)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    ap.add_argument("--runs", type=int, default=6, help="runs of each binary per round (default 6, even)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin both to this CPU (default: the last one); -1: do not pin")
    ap.add_argument("--scale", type=int, default=1, help="records_cost --scale (default 1)")
    a = ap.parse_args()
    if a.rounds < 1 or a.runs < 2 or a.runs % 2:
        ap.error("--rounds must be at least 1, --runs even and at least 2")

    names = subprocess.check_output([a.off, "--list"], text=True).splitlines()
    pin = []
    if a.cpu != -1 and shutil.which("taskset"):
        import os
        cpu = a.cpu if a.cpu is not None else max(os.sched_getaffinity(0))
        pin = ["taskset", "-c", str(cpu)]

    def run(binary):
        out = subprocess.check_output(pin + [binary, "--scale", str(a.scale)], text=True)
        values = [float(v) for v in out.split()]
        if len(values) != len(names):
            sys.exit("records_cost.py: %s printed %r" % (binary, out))
        return values

    round_min = {"off": [], "on": []}  # per round: per operation, the minimum
    min_ratios = [[] for _ in names]
    paired = [[] for _ in names]
    for _ in range(a.rounds):
        got = {"off": [], "on": []}
        for k in range(a.runs // 2):
            # off, on, on, off: each run's neighbour of the other binary is its pair.
            first = run(a.off), run(a.on)
            second = run(a.on), run(a.off)
            got["off"] += [first[0], second[1]]
            got["on"] += [first[1], second[0]]
            for i in range(len(names)):
                paired[i].append(first[1][i] / first[0][i])
                paired[i].append(second[0][i] / second[1][i])
        for b in ("off", "on"):
            round_min[b].append([min(v[i] for v in got[b]) for i in range(len(names))])
        for i in range(len(names)):
            min_ratios[i].append(round_min["on"][-1][i] / round_min["off"][-1][i])

    print("%-24s %9s %9s %7s %7s  %s" % ("operation", "off ns", "on ns", "min", "paired", "paired 10%-90%"))
    for i, n in enumerate(names):
        off = statistics.median(r[i] for r in round_min["off"])
        on = statistics.median(r[i] for r in round_min["on"])
        q = statistics.quantiles(paired[i], n=10) if len(paired[i]) > 1 else [paired[i][0]] * 9
        print("%-24s %9.1f %9.1f %7.3f %7.3f  %.3f-%.3f" % (
            n, off, on, statistics.median(min_ratios[i]), statistics.median(paired[i]), q[0], q[-1]))


if __name__ == "__main__":
    main()
