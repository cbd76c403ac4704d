#!/usr/bin/env python3
"""echo_smoke.py: the bench-smoke tests of the echo benchmark programs (bench/meson.build).

  echo_smoke.py --load ECHO_LOAD --server SERVER   a server and echo_load, briefly: both follow
                                                    the CLI contract (--help, bad options, the
                                                    'listening on' line, exit 0 on SIGINT) and the
                                                    load runs clean
  echo_smoke.py --load ECHO_LOAD --bad-server MODE  echo_load against a deliberately broken Python
                                                    server (MODE corrupt: flips a byte; close: ends
                                                    the stream mid-message) must fail with exit 1

Every server this starts is stopped by its pid, whatever happens.
"""

import argparse
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def fail(message):
    print(f"echo_smoke: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check_cli(exe):
    name = os.path.basename(exe)
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0 or not r.stdout.startswith("usage: " + name + " "):
        fail(f"{name} --help: exit {r.returncode}, stdout {r.stdout[:80]!r}")
    r = subprocess.run([exe, "--bogus"], capture_output=True, text=True, timeout=10)
    if r.returncode != 2 or "unknown argument '--bogus'" not in r.stderr:
        fail(f"{name} --bogus: exit {r.returncode}, stderr {r.stderr!r}")
    r = subprocess.run([exe, "--port", "nope"], capture_output=True, text=True, timeout=10)
    if r.returncode != 2 or "invalid value for --port" not in r.stderr:
        fail(f"{name} --port nope: exit {r.returncode}, stderr {r.stderr!r}")


def start_server(exe):
    """Starts exe on a free port; returns (process, port) once it printed its 'listening on' line."""
    proc = subprocess.Popen([exe, "--port", "0", "--host", "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else ""
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    if not m:
        stop(proc)
        fail(f"{exe}: expected 'listening on 127.0.0.1:PORT' within 10 s, got {line!r}")
    return proc, int(m.group(1))


def stop(proc, sig=signal.SIGINT):
    """Signals proc by pid, waits up to 5 s, then kills it; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def run_load(load, port, connections=50, seconds=1.0):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "load.json")
        r = subprocess.run([load, "--port", str(port), "--connections", str(connections),
                            "--seconds", str(seconds), "--warmup", "0.2", "--json", out],
                           capture_output=True, text=True, timeout=60)
        result = json.load(open(out)) if os.path.exists(out) else None
    return r, result


def smoke(load, server):
    check_cli(load)
    check_cli(server)
    proc, port = start_server(server)
    try:
        r, result = run_load(load, port)
        if r.returncode != 0 or not result or result["errors"] != 0 or result["messages"] <= 0:
            fail(f"echo_load against {server}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        print(r.stdout, end="")
    finally:
        status = stop(proc)
    if status != 0:
        fail(f"{server} exited {status} on SIGINT, expected 0")
    proc, port = start_server(server)
    status = stop(proc, signal.SIGTERM)
    if status != 0:
        fail(f"{server} exited {status} on SIGTERM, expected 0")
    print(f"echo_smoke: {os.path.basename(server)} ok")


def bad_server(load, mode):
    """A threaded Python echo server that breaks the stream after 1000 bytes of each connection."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.settimeout(0.2)
    done = threading.Event()

    def serve(conn):
        echoed = 0
        with conn:
            while not done.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if echoed + len(data) > 1000:
                    if mode == "close":
                        conn.sendall(data[: 1000 - echoed + 7])  # cut inside a message
                        return
                    if echoed <= 1000:
                        k = 1000 - echoed
                        data = data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1:]
                echoed += len(data)
                conn.sendall(data)

    def accept_loop():
        while not done.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    try:
        r, result = run_load(load, lsock.getsockname()[1], connections=4, seconds=2)
    finally:
        done.set()
    want = "mismatch: byte" if mode == "corrupt" else "short stream: end of stream"
    if r.returncode != 1 or want not in r.stderr or not result or result["errors"] < 1:
        fail(f"echo_load against a '{mode}' server: exit {r.returncode}, want 1 and '{want}'\n{r.stdout}{r.stderr}")
    print(f"echo_smoke: echo_load caught the '{mode}' server: {r.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", required=True, help="the echo_load executable")
    ap.add_argument("--server", help="an echo server executable")
    ap.add_argument("--bad-server", choices=["corrupt", "close"], help="a broken Python server instead")
    args = ap.parse_args()
    if bool(args.server) == bool(args.bad_server):
        ap.error("give exactly one of --server and --bad-server")
    if args.server:
        smoke(args.load, args.server)
    else:
        bad_server(args.load, args.bad_server)


if __name__ == "__main__":
    main()
