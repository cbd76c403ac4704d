#!/usr/bin/env python3
"""tls_results.py: turns scripts/bench-tls's run manifest into its JSON, its table and its targets.

  tls_results.py MANIFEST OUT_JSON QUICK(0|1)

MANIFEST has one tab-separated line per run: part server rep status file server_cpu_s wall_s
client_cpu_s attempt. part is keepalive (FILE: wrk's output), pipelined, full or resume (FILE:
tls_load's JSON), or all (a server that did not start or serve the page). The setup comes in BENCH_TLS_SETUP
as KEY=VALUE lines. Exits 1 when a run failed, 2 on a bad command line.
"""

import json
import os
import statistics
import sys

# Beside this file: the HTTP benchmarks' results script, whose command line, wrk parser, medians,
# ratios and machine description this report shares.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import net_results  # noqa: E402
from net_results import median, ratio  # noqa: E402

PARTS = ("keepalive", "pipelined", "full", "resume")
UNIT = {"keepalive": "request", "pipelined": "request", "full": "handshake", "resume": "handshake"}
SERVERS = ("nginx", "http_server", "http_server-epoll")  # http_server: its default backend


def wrk_result(path):
    """net_results' reading of a wrk output, in this report's field names."""
    r = net_results.wrk_result(path)
    r["per_s"] = r.pop("requests_per_s")
    r["socket_errors"] = sum(r["socket_errors"].values())
    return r


def read_runs(manifest):
    runs = []
    for line in open(manifest):
        part, server, rep, status, path, server_cpu, wall, client_cpu, attempt = line.rstrip("\n").split("\t")
        run = {"part": part, "server": server, "rep": int(rep), "attempt": int(attempt), "status": status,
               "server_cpu_s": float(server_cpu), "wall_s": float(wall), "client_cpu_s": float(client_cpu),
               "rate": None, "cost_us": None}
        measured = status in ("ok", "superseded")
        if part == "keepalive" and path != "-" and os.path.exists(path):
            w = wrk_result(path)
            run["wrk"] = w
            if measured and w["per_s"] and w["requests"]:
                run["rate"] = w["per_s"]
                run["cost_us"] = round(run["server_cpu_s"] * 1e6 / w["requests"], 3)
                run["server_cpu_share"] = round(run["server_cpu_s"] / (w["requests"] / w["per_s"]), 3)
            if status == "ok" and (w["non_2xx"] or w["socket_errors"]):
                run["status"] = "http-errors"
        elif part in ("pipelined", "full", "resume") and path != "-" and os.path.exists(path):
            t = json.load(open(path))
            run["tls_load"] = t
            if measured:
                run["rate"] = t["per_s"]
                run["cost_us"] = t["server_us_per_connection"] if t["server_us_per_connection"] > 0 else None
                run["reused_fraction"] = t["reused_fraction"]
                run["server_cpu_share"] = round(t["server_cpu_s"] / max(t["seconds"], 1e-9), 3)
        runs.append(run)
    return runs


def main():
    manifest, dest, quick, setup = net_results.command_line(__doc__, "BENCH_TLS_SETUP")
    runs = read_runs(manifest)
    good = [r for r in runs if r["status"] in ("ok", "http-errors")]

    medians = {}
    for part in PARTS:
        for server in SERVERS:
            rs = [r for r in good if r["part"] == part and r["server"] == server]
            rates = [r["rate"] for r in rs if r["rate"] is not None]
            costs = [r["cost_us"] for r in rs if r["cost_us"] is not None]
            m = {"rate": median(rates), "cost_us": median(costs), "rates": rates, "costs": costs}
            if part == "resume":
                fr = [r["reused_fraction"] for r in rs if r.get("reused_fraction") is not None]
                m["reused_fraction"] = min(fr) if fr else None
            medians.setdefault(part, {})[server] = m

    # Each skein run set against nginx's run of the same part in the same repetition, the median of
    # those ratios: drift in other load on the machine cancels within the pair.
    def paired(part, server, field):
        xs = []
        for r in good:
            if r["part"] != part or r["server"] != server or r[field] is None:
                continue
            a = next((x[field] for x in good if x["part"] == part and x["server"] == "nginx"
                      and x["rep"] == r["rep"] and x[field]), None)
            if a:
                xs.append(r[field] / a)
        return round(statistics.median(xs), 3) if xs else None

    table = []
    for part in PARTS:
        n, s, e = (medians[part][x] for x in SERVERS)
        if n["rate"] is None and s["rate"] is None and e["rate"] is None:
            continue
        table.append({"part": part, "unit": UNIT[part], "nginx_per_s": n["rate"], "http_server_per_s": s["rate"],
                      "rate_ratio": ratio(s["rate"], n["rate"]), "nginx_cpu_us": n["cost_us"],
                      "http_server_cpu_us": s["cost_us"], "cpu_ratio": ratio(s["cost_us"], n["cost_us"]),
                      "http_server_epoll_per_s": e["rate"], "epoll_rate_ratio": ratio(e["rate"], n["rate"]),
                      "http_server_epoll_cpu_us": e["cost_us"], "epoll_cpu_ratio": ratio(e["cost_us"], n["cost_us"]),
                      "nginx_resumed": n.get("reused_fraction"), "http_server_resumed": s.get("reused_fraction"),
                      "http_server_epoll_resumed": e.get("reused_fraction"),
                      "paired_rate_ratio": paired(part, "http_server", "rate"),
                      "paired_cpu_ratio": paired(part, "http_server", "cost_us"),
                      "epoll_paired_rate_ratio": paired(part, "http_server-epoll", "rate"),
                      "epoll_paired_cpu_ratio": paired(part, "http_server-epoll", "cost_us")})

    targets = []
    for ka in (row for row in table if row["part"] in ("keepalive", "pipelined")):
        how = "" if ka["part"] == "keepalive" else f", {setup.get('pipeline', '?')} pipelined"
        for what, value, want, ok in (
                (f"keep-alive HTTPS requests/s{how}, http_server / nginx (paired)", ka["paired_rate_ratio"],
                 ">= 1.0", lambda v: v >= 1.0),
                (f"server CPU per keep-alive HTTPS request{how}, http_server / nginx (paired)",
                 ka["paired_cpu_ratio"], "<= 1.0", lambda v: v <= 1.0)):
            targets.append({"what": what, "target": want, "value": value,
                            "verdict": "not measured" if value is None else ("PASS" if ok(value) else "MISS")})
    rs = next((row for row in table if row["part"] == "resume"), None)
    if rs:
        for server in SERVERS:
            v = rs[f"{server.replace('-', '_')}_resumed"]
            targets.append({"what": f"{server} resumes the offered sessions (lowest share over runs)",
                            "target": ">= 0.9", "value": v,
                            "verdict": "not measured" if v is None else ("PASS" if v >= 0.9 else "MISS")})

    result = {
        "benchmark": "scripts/bench-tls",
        "quick": quick,
        "machine": net_results.machine("BENCH_TLS_LOADAVG", openssl="openssl version", wrk="wrk -v 2>&1 | head -n1"),
        "setup": dict(setup, commands={
            "keepalive": f"wrk -t1 -c{setup.get('wrk_connections', '?')} -d{setup.get('seconds', '?')}s --latency https://127.0.0.1:PORT/",
            "pipelined": f"tls_load --mode keepalive --connections {setup.get('wrk_connections', '?')} --pipeline {setup.get('pipeline', '?')} --seconds {setup.get('seconds', '?')} --warmup {setup.get('load_warmup', '?')} --server-pid PID",
            "full": f"tls_load --mode full --connections {setup.get('load_connections', '?')} --seconds {setup.get('seconds', '?')} --warmup {setup.get('load_warmup', '?')} --server-pid PID",
            "resume": f"tls_load --mode resume --connections {setup.get('load_connections', '?')} --seconds {setup.get('seconds', '?')} --warmup {setup.get('load_warmup', '?')} --server-pid PID"},
            servers_on_core=0, load_on_core=1,
            aggregate="median over repetitions, servers interleaved and rotated; one server process per repetition runs the three parts"),
        "table": table,
        "targets": targets,
        "runs": runs,
    }
    net_results.write_json(dest, result)

    fmt = lambda x: f"{x:,.0f}" if x else "-"
    fr = lambda x: f"{x:.2f}x" if x else "-"
    fc = lambda x: f"{x:.1f}" if x else "-"
    fp = lambda x: f"{100 * x:.0f}%" if x is not None else "-"
    print(f"\nTLS 1.3 {setup.get('suite', '')} {setup.get('group', '')}, {setup.get('key', '')} certificate; negotiated:"
          f" nginx '{setup.get('negotiated_nginx', '')}', http_server '{setup.get('negotiated_http_server', '')}',"
          f" http_server-epoll '{setup.get('negotiated_http_server_epoll', '')}'")
    print("  rates per second, and the server's CPU time per request or handshake in us (lower is better);")
    print("  ratios against nginx (of the medians). http_server: its default backend; -epoll: SKEIN_IO=epoll")
    print(f"  {'part':<10} {'nginx':>9} {'http_server':>11} {'ratio':>6} {'-epoll':>9} {'ratio':>6}  |"
          f" {'nginx':>6} {'skein':>6} {'ratio':>6} {'epoll':>6} {'ratio':>6}  resumed")
    for row in table:
        res = (f"{fp(row['nginx_resumed'])}, {fp(row['http_server_resumed'])}, {fp(row['http_server_epoll_resumed'])}"
               if row["part"] == "resume" else "")
        print(f"  {row['part']:<10} {fmt(row['nginx_per_s']):>9} {fmt(row['http_server_per_s']):>11} {fr(row['rate_ratio']):>6}"
              f" {fmt(row['http_server_epoll_per_s']):>9} {fr(row['epoll_rate_ratio']):>6}  |"
              f" {fc(row['nginx_cpu_us']):>6} {fc(row['http_server_cpu_us']):>6} {fr(row['cpu_ratio']):>6}"
              f" {fc(row['http_server_epoll_cpu_us']):>6} {fr(row['epoll_cpu_ratio']):>6}  {res}")
    fq = lambda x: f"{x:.2f}" if x else "-"
    print("  paired ratios (median over repetitions of each run against nginx's in the same repetition):")
    for row in table:
        print(f"  {row['part']:<10} rate: http_server {fq(row['paired_rate_ratio'])}, -epoll {fq(row['epoll_paired_rate_ratio'])};"
              f"  CPU per {row['unit']}: http_server {fq(row['paired_cpu_ratio'])}, -epoll {fq(row['epoll_paired_cpu_ratio'])}")
    low = [r for r in good if r.get("server_cpu_share") is not None and r["wall_s"] > 0
           and max(r["server_cpu_share"], r["client_cpu_s"] / r["wall_s"]) < 0.8]
    if low:
        print(f"  ! {len(low)} of {len(good)} runs kept with neither side at 80% of its core (other load on the"
              " machine): compare the CPU-per-request figures, which such sharing distorts far less")
    print("\nTargets:")
    for t in targets:
        print(f"  {t['verdict']:<12} {t['what']} {t['target']}  (measured {t['value']})")
    failed = [r for r in runs if r["status"] not in ("ok", "superseded", "http-errors")]
    errors = [r for r in runs if r["status"] == "http-errors"]
    if errors:
        print(f"\n{len(errors)} keep-alive run(s) had HTTP or socket errors (see the JSON)")
    if failed:
        print(f"\n{len(failed)} run(s) failed: " + ", ".join(f"{r['part']} {r['server']} rep {r['rep']}: {r['status']}" for r in failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
