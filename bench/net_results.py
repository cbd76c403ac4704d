#!/usr/bin/env python3
"""net_results.py: turns scripts/bench-net's run manifest into its JSON, its tables and its targets.

  net_results.py MANIFEST OUT_JSON QUICK(0|1)

MANIFEST has one tab-separated line per run: kind server connections rep status file server_cpu
server_exit wall_s backend_seen requests. Server ids are the anchors (echo_epoll, echo_threads,
nginx, redis-server) and skein's samples as BASE-BACKEND (skein-epoll, http_server-io_uring,
kv_server-nopoll-epoll, ...). The setup (programs, options) comes in BENCH_NET_SETUP as KEY=VALUE
lines. Exits 1 when a run failed, 2 on a bad command line.

bench/tls_results.py takes its command line, wrk parser, medians, ratios and machine description
from here.
"""

import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

BACKENDS = ("epoll", "io_uring", "io_uring_poll")  # io_uring: completion mode; _poll: readiness mode
ANCHOR = {"echo": "echo_epoll", "http": "nginx", "kv": "redis-server"}
SKEIN = {"echo": "skein", "http": "http_server", "kv": "kv_server"}
UNIT = {"echo": "message", "http": "request", "kv": "request"}


def command_line(doc, setup_var):
    """(manifest, out_json, quick, setup) from a results script's MANIFEST OUT_JSON QUICK(0|1), with
    setup from the KEY=VALUE lines of the environment variable setup_var. -h or --help prints doc and
    exits 0; a bad command line prints what is wrong and the usage, and exits 2."""
    prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(doc.strip())
        sys.exit(0)
    problem = None
    if len(args) != 3:
        problem = f"expected 3 arguments, got {len(args)}"
    elif args[2] not in ("0", "1"):
        problem = f"QUICK must be 0 or 1, not {args[2]!r}"
    elif not os.path.exists(args[0]):
        problem = f"no manifest {args[0]!r}"
    if problem:
        print(f"{prog}: {problem}\nusage: {prog} MANIFEST OUT_JSON QUICK(0|1)   (--help for more)", file=sys.stderr)
        sys.exit(2)
    setup = dict(line.split("=", 1) for line in os.environ.get(setup_var, "").splitlines() if "=" in line)
    return args[0], args[1], args[2] == "1", setup


def median(xs):
    """The median of xs; None when there are none."""
    return statistics.median(xs) if xs else None


def ratio(a, b):
    """a / b to three places; None unless both are there and nonzero."""
    return round(a / b, 3) if a and b else None


def sh(cmd):
    """What a shell command prints (a tool's version), stripped; "" when it fails."""
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine(loadavg_var, **tools):
    """The results' "machine": CPUs, kernel, date, the load averages at the start (from the environment
    variable loadavg_var) and now, then each tool's version as its shell command prints it."""
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    return {"nproc": os.cpu_count(), "cpu": cpu_model, "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_at_start": os.environ.get(loadavg_var, "").split()[:3],
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
            **{name: sh(cmd) for name, cmd in tools.items()}}


def write_json(dest, result):
    with open(dest, "w") as f:
        json.dump(result, f, indent=1)


def split_id(server):
    """(base, backend or None) of a server id."""
    for b in BACKENDS:
        if server.endswith("-" + b):
            return server[: -len(b) - 1], b
    return server, None


def wrk_result(path):
    text = open(path).read()
    r = {"output": text}
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    r["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(\w+)", text, re.M)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups()))) if m else \
        {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    for q in ("50", "99"):
        m = re.search(rf"^\s*{q}%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            r[f"latency_p{q}_us"] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    return r


def read_runs(manifest):
    runs = []
    for line in open(manifest):
        (kind, server, conns, rep, status, path, cpu, server_exit, wall, seen, requests) = line.rstrip("\n").split("\t")
        base, backend = split_id(server)
        run = {"kind": kind, "server": server, "base": base, "backend": backend, "backend_seen": seen,
               "connections": int(conns), "rep": int(rep), "status": status, "server_cpu": float(cpu),
               "server_exit": None if server_exit == "-" else int(server_exit), "wall_s": float(wall),
               "rate": None, "cost_us": None}  # cost: server CPU per message or request
        measured = status in ("ok", "superseded")
        if kind == "echo" and path != "-" and os.path.exists(path):
            run["load"] = json.load(open(path))
            if measured:
                run["rate"] = run["load"]["messages_per_s"]
                if run["load"].get("server_us_per_message", -1) > 0:
                    run["cost_us"] = run["load"]["server_us_per_message"]
        elif kind == "http" and path != "-" and os.path.exists(path):
            run["wrk"] = wrk_result(path)
            bad = run["wrk"]["non_2xx"] + sum(run["wrk"]["socket_errors"].values())
            if measured:
                run["rate"] = run["wrk"]["requests_per_s"]
                if run["rate"] and run["wrk"]["requests"]:
                    run["cost_us"] = round(run["server_cpu"] * run["wall_s"] * 1e6 / run["wrk"]["requests"], 3)
            if status == "ok" and bad:
                run["status"] = "http-errors"  # still measured, but reported
        elif kind == "kv" and path != "-" and os.path.exists(path):
            text = open(path).read()
            rows = {r[0]: r for r in csv.reader(text.splitlines()) if r and r[0] in ("SET", "GET")}
            run["ops_per_s"] = {k: float(v[1]) for k, v in rows.items()}
            run["p50_ms"] = {k: float(v[4]) for k, v in rows.items() if len(v) > 4}
            run["p99_ms"] = {k: float(v[6]) for k, v in rows.items() if len(v) > 6}
            if measured and len(rows) == 2:
                # SET and GET run n requests each: the rate of the 2n is their harmonic mean.
                run["rate"] = round(2 / sum(1 / x for x in run["ops_per_s"].values()), 1)
                run["cost_us"] = round(run["server_cpu"] * run["wall_s"] * 1e6 / int(requests), 3)
        runs.append(run)
    return runs


def main():
    manifest, dest, quick, setup = command_line(__doc__, "BENCH_NET_SETUP")
    runs = read_runs(manifest)
    good = [r for r in runs if r["status"] in ("ok", "http-errors")]

    # medians[kind][group][server] = {"rate", "cost_us", "rates", "costs", "backend_seen"}; the group
    # is the connection count (echo), wrk's connections (http) or redis-benchmark's clients (kv).
    medians = {}
    for r in good:
        m = medians.setdefault(r["kind"], {}).setdefault(str(r["connections"]), {}).setdefault(
            r["server"], {"rates": [], "costs": [], "backend_seen": set()})
        if r["rate"] is not None:
            m["rates"].append(r["rate"])
        if r["cost_us"] is not None:
            m["costs"].append(r["cost_us"])
        m["backend_seen"].add(r["backend_seen"])
    for kind in medians.values():
        for group in kind.values():
            for m in group.values():
                m["rate"] = median(m["rates"])
                m["cost_us"] = median(m["costs"])
                m["backend_seen"] = sorted(m["backend_seen"])

    def get(kind, group, server, field):
        return medians.get(kind, {}).get(str(group), {}).get(server, {}).get(field)

    # Each skein server against its anchor, per group: throughput (skein/anchor, higher is better)
    # and CPU per message or request (skein/anchor, lower is better).
    ratios = {}
    for kind, groups in medians.items():
        for group, servers in groups.items():
            anchor = servers.get(ANCHOR[kind], {})
            for server, m in servers.items():
                if server == ANCHOR[kind]:
                    continue
                ratios.setdefault(kind, {}).setdefault(group, {})[server] = {
                    "throughput": ratio(m["rate"], anchor.get("rate")),
                    "cpu_per_" + UNIT[kind]: ratio(m["cost_us"], anchor.get("cost_us")),
                    # The anchor's CPU per message over skein's: "as efficient as", above 1 is better.
                    "cpu_efficiency": ratio(anchor.get("cost_us"), m["cost_us"])}

    # The same ratios taken within each repetition (a server against the anchor run minutes apart
    # at most) and their median: drift in what else runs on a shared machine cancels in the pair,
    # so these are the figures the targets use; the ratios of medians above stay beside them.
    by_rep = {}
    for r in good:
        by_rep.setdefault((r["kind"], str(r["connections"]), r["rep"]), {})[r["server"]] = r
    paired = {}
    for (kind, group, rep), servers in by_rep.items():
        anchor = servers.get(ANCHOR[kind])
        if not anchor:
            continue
        for server, r in servers.items():
            if server == ANCHOR[kind]:
                continue
            p = paired.setdefault(kind, {}).setdefault(group, {}).setdefault(
                server, {"throughput": [], "cpu_per_" + UNIT[kind]: [], "cpu_efficiency": []})
            if r["rate"] and anchor["rate"]:
                p["throughput"].append(r["rate"] / anchor["rate"])
            if r["cost_us"] and anchor["cost_us"]:
                p["cpu_per_" + UNIT[kind]].append(r["cost_us"] / anchor["cost_us"])
                p["cpu_efficiency"].append(anchor["cost_us"] / r["cost_us"])
    for kind in paired.values():
        for group in kind.values():
            for server, p in group.items():
                group[server] = {k: {"median": round(statistics.median(v), 3), "per_rep": [round(x, 3) for x in v]}
                                 if v else {"median": None, "per_rep": []} for k, v in p.items()}

    def rq(kind, group, server, field):
        v = paired.get(kind, {}).get(str(group), {}).get(server, {}).get(field, {}).get("median")
        return v if v is not None else rq_medians(kind, group, server, field)

    def rq_medians(kind, group, server, field):
        return ratios.get(kind, {}).get(str(group), {}).get(server, {}).get(field)

    # The targets, each with the backend it binds; the other backend's figure is shown beside it.
    targets = []

    def target(backend, what, value, op, limit, binding=True):
        verdict = "not measured" if value is None else \
            ("met" if (value >= limit if op == ">=" else value <= limit) else "missed")
        if not binding and verdict != "not measured":
            verdict = "(info)"
        targets.append({"backend": backend, "what": what, "value": value, "op": op, "target": limit,
                        "verdict": verdict, "binding": binding})

    for b in BACKENDS:
        ep = b == "epoll"
        uring = b == "io_uring"  # the io_uring targets bind completion mode; readiness mode is shown
        target(b, "echo, 1,000 conns: msgs/s vs echo_epoll", rq("echo", 1000, "skein-" + b, "throughput"),
               ">=", 0.98, ep)
        target(b, "echo, 10,000 conns: CPU efficiency vs echo_epoll (its us/msg / skein's)",
               rq("echo", 10000, "skein-" + b, "cpu_efficiency"), ">=", 0.92, ep)
        target(b, "echo, 1,000 conns: CPU per msg / echo_epoll's", rq("echo", 1000, "skein-" + b, "cpu_per_message"),
               "<=", 0.8, uring)
        target(b, "http_server: CPU per request / nginx's (wrk -t1 -c256)",
               rq("http", 256, "http_server-" + b, "cpu_per_request"), "<=", 0.8, uring)
        target(b, "http_server: requests/s / nginx's", rq("http", 256, "http_server-" + b, "throughput"),
               ">=", 1.0, uring)
        for kv in ("kv_server", "kv_server-nopoll"):
            label = "kv_server" if kv == "kv_server" else "kv_server --poll-us 0"
            target(b, f"{label}: CPU per request / redis-server's (-c 50)",
                   rq("kv", 50, f"{kv}-{b}", "cpu_per_request"), "<=", 0.8, uring)
            target(b, f"{label}: requests/s / redis-server's", rq("kv", 50, f"{kv}-{b}", "throughput"),
                   ">=", 1.0, uring)

    failures = [r for r in runs if r["status"] not in ("ok", "superseded", "http-errors")
                or (r["status"] == "ok" and r["backend"] and r["server_exit"] not in (0, None))]
    result = {
        "benchmark": "scripts/bench-net",
        "quick": quick,
        "machine": machine("BENCH_NET_LOADAVG", gcc="gcc -dumpfullversion", nginx="nginx -v 2>&1",
                           wrk="wrk -v 2>&1 | head -n1", redis_server="redis-server --version"),
        "setup": {"servers_on_core": 0, "load_on_core": 1, "echo_message_bytes": 64,
                  "echo": "bench/echo_load --connections N --size 64", "http": "wrk -t1 -c256",
                  "kv": "redis-benchmark -t set,get -c 50 -n N (kv_server --threads 1; -nopoll: --poll-us 0)",
                  "backends": "skein's servers run with SKEIN_IO=<backend> (io_uring_poll: SKEIN_IO=io_uring SKEIN_IO_URING_MODE=readiness); backend_seen is what the kernel showed",
                  "aggregate": "median over repetitions, servers interleaved, the order rotated per repetition",
                  **setup},
        "backends": setup.get("backends", "").split(),
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": paired,
        "targets": targets,
        "failed_runs": len(failures),
        "runs": runs,
    }
    write_json(dest, result)

    fr = lambda x: f"{x:.2f}x" if x else "-"
    fn = lambda x: f"{x:,.0f}" if x else "-"
    fc = lambda x: f"{x:.2f}" if x else "-"
    titles = {"echo": "Echo, 64-byte ping-pong (echo_load), by connections",
              "http": "HTTP GET /, wrk -t1 -c256", "kv": "Key-value, redis-benchmark -t set,get -c 50"}
    for kind in ("echo", "http", "kv"):
        if kind not in medians:
            continue
        print(f"\n{titles[kind]}: medians; 'vs' = skein/{ANCHOR[kind]}, throughput and CPU per {UNIT[kind]},"
              " as ratios of medians and as the median of each repetition's ratio (paired)")
        print(f"  {'group':>6}  {'server':<26} {'per s':>11}  {'us/' + UNIT[kind][:3]:>7}  {'thr. vs':>8}  {'CPU vs':>7}"
              f"  {'paired':>7} {'paired':>7}  {'seen':<8}")
        for group in sorted(medians[kind], key=int):
            servers = medians[kind][group]
            for server in sorted(servers, key=lambda s: (s != ANCHOR[kind], s)):
                m = servers[server]
                q = ratios.get(kind, {}).get(group, {}).get(server, {})
                pq = paired.get(kind, {}).get(group, {}).get(server, {})
                pt = pq.get("throughput", {}).get("median")
                pc = pq.get("cpu_per_" + UNIT[kind], {}).get("median")
                print(f"  {int(group):>6}  {server:<26} {fn(m['rate']):>11}  {fc(m['cost_us']):>7}"
                      f"  {fr(q.get('throughput')):>8}  {fr(q.get('cpu_per_' + UNIT[kind])):>7}"
                      f"  {fr(pt):>7} {fr(pc):>7}  {','.join(m['backend_seen']):<8}")
    for r in runs:
        if r["server_exit"] not in (0, None) and r["status"] == "ok":
            print(f"  ! {r['kind']} {r['server']} {r['connections']} rep {r['rep']}: server exited {r['server_exit']} on its stop signal (expected 0)")
        if r["backend"] and r["backend_seen"] not in (r["backend"].removesuffix("_poll"), "-"):
            print(f"  ! {r['kind']} {r['server']} rep {r['rep']}: SKEIN_IO={r['backend']}, but the server showed {r['backend_seen']}")
            break
    for r in runs:
        if r["kind"] == "http" and "wrk" in r:
            w = r["wrk"]
            if w["non_2xx"] or sum(w["socket_errors"].values()):
                print(f"  ! {r['server']} rep {r['rep']}: {w['non_2xx']} non-2xx responses, socket errors {w['socket_errors']}")
    # A server that got well under a core while a client kept it busy shared the core with something
    # else (this machine is shared): its run is kept, but the figures deserve less trust.
    starved = [r for r in runs if r["rate"] and r["status"] == "ok" and 0 <= r["server_cpu"] < 0.7
               and r["kind"] == "echo" and r["server"] != "echo_threads"]
    if starved:
        print(f"\n  ! {len(starved)} echo run(s) had the server below 70% of its core (other load on the machine?):")
        print("    " + ", ".join(f"{r['server']}/{r['connections']}/rep {r['rep']} ({r['server_cpu']:.2f})" for r in starved))
        print("    compare the CPU-per-message figures, which such sharing distorts far less")

    print("\nTargets (paired figures; the backend each binds, the other backend's figure as info):")
    print(f"  {'backend':<9} {'what':<74} {'figure':>7}  {'target':>7}  verdict")
    for t in targets:
        if t["value"] is None and not t["binding"]:
            continue
        print(f"  {t['backend']:<9} {t['what']:<74} {fr(t['value']):>7}  {t['op']} {t['target']:<4}  {t['verdict']}")
    if failures:
        print(f"\n{len(failures)} run(s) failed:")
        for r in failures:
            print(f"  {r['kind']} {r['server']} {r['connections']} rep {r['rep']}: {r['status']}"
                  f"{'' if r['server_exit'] in (0, None) else ', exit ' + str(r['server_exit'])}")
        sys.exit(1)


if __name__ == "__main__":
    main()
