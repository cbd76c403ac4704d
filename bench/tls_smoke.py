#!/usr/bin/env python3
"""tls_smoke.py: bench/tls_load against samples/http_server --tls-cert/--tls-key, briefly.

  tls_smoke.py --load TLS_LOAD --server HTTP_SERVER

Makes a throw-away certificate with the openssl command, starts the server on a free port and runs
each of tls_load's modes for 0.3 s: every run must complete requests without a failure,
and in --mode resume the server must resume nearly every handshake. Then tls_load must fail (exit
1) against the same server without TLS. Skips (77) without the openssl command.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def start(server, extra):
    p = subprocess.Popen([server, "--port", "0", "--host", "127.0.0.1", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("listening on "):
        p.kill()
        sys.exit(f"tls_smoke: the server said {line!r}, not 'listening on HOST:PORT': {p.stderr.read()}")
    return p, int(line.rsplit(":", 1)[1])


def stop(p):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", required=True)
    ap.add_argument("--server", required=True)
    a = ap.parse_args()
    if not shutil.which("openssl"):
        print("tls_smoke: no openssl command: skipped")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        server, port = start(a.server, ["--tls-cert", cert, "--tls-key", key])
        try:
            for mode, extra in (("full", []), ("resume", []), ("keepalive", ["--pipeline", "4"])):
                out = os.path.join(tmp, mode + ".json")
                r = subprocess.run([a.load, "--port", str(port), "--mode", mode, "--connections", "4",
                                    "--seconds", "0.3", "--warmup", "0.1", "--json", out, *extra],
                                   capture_output=True, text=True, timeout=60)
                print(r.stdout.strip())
                if r.returncode != 0:
                    sys.exit(f"tls_smoke: tls_load --mode {mode} exited {r.returncode}: {r.stderr.strip()}")
                j = json.load(open(out))
                if j["completed"] == 0 or j["failed"] != 0 or j["version"] != "TLSv1.3":
                    sys.exit(f"tls_smoke: --mode {mode}: {j}")
                if mode == "resume" and j["reused_fraction"] < 0.9:
                    sys.exit(f"tls_smoke: the server resumed only {j['reused_fraction']:.0%} of the handshakes")
        finally:
            stop(server)
        plain, port = start(a.server, [])
        try:
            r = subprocess.run([a.load, "--port", str(port), "--mode", "full", "--connections", "2",
                                "--seconds", "0.3", "--warmup", "0"], capture_output=True, text=True, timeout=60)
        finally:
            stop(plain)
        if r.returncode != 1:
            sys.exit(f"tls_smoke: tls_load against a plain HTTP server exited {r.returncode}, not 1: {r.stdout}")
        print("against plain HTTP, as it must:", r.stderr.strip())


if __name__ == "__main__":
    main()
