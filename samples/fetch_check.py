#!/usr/bin/env python3
"""Checks samples/fetch against a scripted HTTP server; the driver of its tests in `meson test`.

    fetch_check.py CHECK... FETCH      runs each CHECK in turn:

    fetch_check.py keep-alive  FETCH   requests to one origin share connections (--per-host)
    fetch_check.py bodies      FETCH   Content-Length, chunked, 'Connection: close', EOF-delimited,
                                       HTTP/1.0, 1xx interim responses, empty bodies
    fetch_check.py redirects   FETCH   -L through 301/302/303/307/308 with relative and absolute
                                       Locations, to another origin, --max-redirs, a loop, no -L
    fetch_check.py retry       FETCH   a server that closes every kept-alive connection after one
                                       response: the next request goes again on a new connection
    fetch_check.py retry-408   FETCH   a server that answers a reused connection with 408 Request
                                       Timeout and closes it: the request goes again, once, on a
                                       new connection; a 408 on a new connection is the result
    fetch_check.py https       FETCH   keep-alive, bodies, both retries and redirects over TLS with a
                                       CA made by `openssl` at test time, and a certificate from
                                       another CA refused (exit 77 without the openssl command)

The server is in this process: a thread per connection on 127.0.0.1 port 0, which counts the
connections it accepted and records each request. Bodies are deterministic bytes of the size the
path names; fetch saves them with --output-dir and the check compares every file byte for byte,
and the byte counts of its summary. Every socket has a timeout, so nothing hangs. Exits 0 when
every check holds, 1 at the first that fails.
"""

import hashlib
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

# The other sample checks' verdicts and their test PKI, from beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from net_check import CheckFailed, Skip, expect, make_test_pki  # noqa: E402

WRAPPER = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
IO_TIMEOUT = 10.0


def body(path, size):
    """The deterministic bytes served for `path`: its hash, repeated to `size` bytes."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class TestServer:
    """A scripted HTTP/1.1 server: keep-alive by default, each path choosing how it answers."""

    def __init__(self, tls_context=None):
        self.tls = tls_context
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []  # (connection number, target) in the order they arrived
        self.failures = []  # what a server thread found wrong with a request, for the main thread
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def base(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self):
        self.listener.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close()
        if exc_type is None and self.failures:
            raise CheckFailed("the test server: " + "; ".join(self.failures))
        return False

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            t = threading.Thread(target=self._serve, args=(sock, number), daemon=True)
            t.start()

    def _serve(self, sock, number):
        sock.settimeout(IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # pieces go out at once
        try:
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True)
            buf = b""
            served = 0  # requests answered on this connection
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
                with self.lock:
                    self.requests.append((number, target))
                keep = self._respond(sock, method, target, headers, served)
                served += 1
                if not keep:
                    return
        except (OSError, ssl.SSLError, ValueError):
            return
        except CheckFailed as e:
            with self.lock:
                self.failures.append(str(e))
        finally:
            sock.close()

    def _respond(self, sock, method, target, headers, served):
        """Answers one request, the connection's `served`+1-th; returns whether the connection
        stays open for another."""
        expect(method == "GET", f"fetch sent {method}")
        expect("host" in headers, f"no Host header: {headers}")
        path = target.split("?")[0]
        parts = path.strip("/").split("/")
        kind, arg = parts[0], parts[1] if len(parts) > 1 else ""
        size = int(arg) if arg.isdigit() else 0
        data = body(path, size)
        if kind == "len":  # sized, kept alive
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
        elif kind == "chunked":  # chunks of odd sizes, an extension, a trailer
            out = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"]
            pos, sizes = 0, [1, 7, 100, 4096, 3, 65536]
            while pos < size:
                n = min(sizes[len(out) % len(sizes)], size - pos)
                out.append(b"%x;ext=1\r\n" % n + data[pos:pos + n] + b"\r\n")
                pos += n
            out.append(b"0\r\nX-Trailer: done\r\n\r\n")
            # One piece at a time: the chunk framing arrives split across reads.
            for piece in out:
                sock.sendall(piece)
        elif kind == "close":  # sized, and the server says it closes
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + data)
            return False
        elif kind == "eof":  # no length: the body ends when the connection does
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + data)
            if self.tls:
                sock.unwrap()  # close_notify: the end is an orderly one
            return False
        elif kind == "http10":  # HTTP/1.0: never kept alive unless it says so
            sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
            return False
        elif kind == "interim":  # a 103 before the real response
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
        elif kind == "nocontent":
            sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif kind == "notmodified":  # a 304 has no body, whatever its Content-Length says
            sock.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
        elif kind == "rude":  # sized, no 'Connection: close', and closed right after
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
            return False
        elif kind == "stale" and served > 0:  # a server that timed the idle connection out
            self._timeout(sock)
            return False
        elif kind == "stale":  # the first request on its connection: as len
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
        elif kind == "timeout":  # always 408
            self._timeout(sock)
            return False
        elif kind == "cut":  # promises `size` bytes, sends half, closes
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data[:size // 2])
            return False
        elif kind == "chain":  # /chain/1 .. /chain/5, then /len/1000
            step = int(arg)
            status, location = {
                1: (301, "2"),                                          # relative path
                2: (302, f"{self.base()}/chain/3"),                     # absolute
                3: (303, "../chain/./4?x=1#frag"),                      # dot segments, a query, a fragment
                4: (307, f"//127.0.0.1:{self.port}/chain/5"),           # network-path reference
                5: (308, "/len/1000"),                                  # absolute path
            }[step]
            self._redirect(sock, status, location)
        elif kind == "away":  # to another origin: /away/PORT -> http://127.0.0.1:PORT/len/50
            self._redirect(sock, 302, f"http://127.0.0.1:{arg}/len/50")
        elif kind == "loop":
            self._redirect(sock, 302, "/loop")
        elif kind == "status":
            sock.sendall(b"HTTP/1.1 %d Not Found\r\nContent-Length: 9\r\n\r\nnot found" % size)
        else:
            sock.sendall(b"HTTP/1.1 500 Unknown\r\nContent-Length: 0\r\n\r\n")
        return True

    def _timeout(self, sock):
        text = b"idle too long"
        sock.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(text), text))

    def _redirect(self, sock, status, location):
        text = b"moved to " + location.encode()
        sock.sendall(b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, location.encode(), len(text), text))


def run_fetch(fetch_exe, *args, expect_code=0, timeout=40):
    # fetch's own --timeout well inside ours, so that a hung URL is reported by fetch.
    try:
        proc = subprocess.run(WRAPPER + [fetch_exe, "--timeout", "15", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"fetch {' '.join(args)} did not finish within {timeout} s")
    expect(proc.returncode == expect_code,
           f"fetch {' '.join(args)}: exit status {proc.returncode}, expected {expect_code}\n"
           f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def summary_line(out, index):
    m = re.search(rf"^  \[{index}\] (.*)$", out, re.M)
    expect(m, f"no summary line for [{index}]:\n{out}")
    return m.group(1)


def check_ok(out, index, url, size, how):
    """URL `index` succeeded with `size` body bytes; `how` matches the rest of its summary line."""
    line = summary_line(out, index)
    expect(re.fullmatch(rf"{re.escape(url)}  [23]\d\d [\w ]+  {size} bytes  [0-9.]+ s  {how}", line),
           f"[{index}] expected {size} bytes, '{how}'; got: {line}\n{out}")


def check_files(d, expected):
    """`expected`: file name -> bytes; exactly those files are in `d`."""
    names = sorted(os.listdir(d))
    expect(names == sorted(expected), f"--output-dir holds {names}, expected {sorted(expected)}")
    for name, data in expected.items():
        with open(os.path.join(d, name), "rb") as f:
            got = f.read()
        expect(got == data, f"{name}: {len(got)} bytes that differ from the {len(data)} served")


def totals(out):
    m = re.search(r"^(\d+) fetched, (\d+) failed, (\d+) bytes in [0-9.]+ s \(.*\)\n"
                  r"(\d+) connections? opened for (\d+) requests? \((\d+) on a reused connection, (\d+) retried\), "
                  r"(\d+) redirects? followed$", out, re.M)
    expect(m, f"no totals:\n{out}")
    keys = ["fetched", "failed", "bytes", "opened", "requests", "reused", "retried", "redirects"]
    return dict(zip(keys, map(int, m.groups())))


# ---- the checks ----------------------------------------------------------------------------------


def check_keep_alive(fetch_exe):
    with TestServer() as server:
        base = server.base()
        sizes = [0, 1, 100, 5000, 70000, 3, 333, 12]
        urls = [f"{base}/len/{n}" for n in sizes]
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "--per-host", "2", "--output-dir", d, *urls)
            check_files(d, {f"{i + 1}-{n}": body(f"/len/{n}", n) for i, n in enumerate(sizes)})
        for i, n in enumerate(sizes):
            check_ok(out, i + 1, urls[i], n, r"connection [12] \((new|reused)\)")
        t = totals(out)
        expect(t["fetched"] == 8 and t["bytes"] == sum(sizes), f"totals {t}\n{out}")
        expect(t["opened"] == 2 and t["requests"] == 8 and t["reused"] == 6 and t["retried"] == 0,
               f"totals {t}\n{out}")
        expect(server.connections == 2, f"--per-host 2: the server saw {server.connections} connections for 8 requests")
        expect(re.search(r"^\[3\] reusing connection [12] to 127\.0\.0\.1:\d+$", out, re.M), f"no reuse line:\n{out}")
        # The default limit (6) with more URLs than that: still fewer connections than requests.
        before = server.connections
        urls = [f"{base}/len/{n}" for n in range(10, 30)]
        out = run_fetch(fetch_exe, "--quiet", *urls)
        expect(not re.search(r"^\[", out, re.M), f"--quiet printed progress:\n{out}")
        t = totals(out)
        opened = server.connections - before
        expect(t["fetched"] == 20 and t["bytes"] == sum(range(10, 30)), f"totals {t}\n{out}")
        expect(opened == t["opened"] and 1 <= opened <= 6, f"20 URLs, default --per-host: {opened} connections\n{out}")
        print(f"keep-alive: 8 requests on 2 connections; 20 requests on {opened}")


def check_bodies(fetch_exe):
    with TestServer() as server:
        base = server.base()
        # One connection at a time, so the order of connections is known: a response that ends the
        # connection (close, eof, http10) makes the next request open a new one.
        plan = [("chunked/100000", 100000, r"connection 1 \(new\)"),
                ("eof/5000", 5000, r"connection 1 \(reused\)"),
                ("len/10", 10, r"connection 2 \(new\)"),
                ("close/20", 20, r"connection 2 \(reused\)"),
                ("interim/30", 30, r"connection 3 \(new\)"),
                ("http10/40", 40, r"connection 3 \(reused\)"),
                ("nocontent", 0, r"connection 4 \(new\)"),
                ("notmodified", 0, r"connection 4 \(reused\)"),
                ("chunked/0", 0, r"connection 4 \(reused\)"),
                ("eof/0", 0, r"connection 4 \(reused\)")]
        urls = [f"{base}/{p}" for p, _, _ in plan]
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "--per-host", "1", "--output-dir", d, *urls)
            check_files(d, {f"{i + 1}-{p.split('/')[-1]}": body("/" + p, n) for i, (p, n, _) in enumerate(plan)})
        for i, (p, n, how) in enumerate(plan):
            check_ok(out, i + 1, urls[i], n, how)
        expect(re.search(r"^\[5\] header > HTTP/1\.1 103 Early Hints$", out, re.M), f"the 103 is not shown:\n{out}")
        expect(re.search(r"^\[1\] trailer > X-Trailer: done$", out, re.M), f"the trailer is not shown:\n{out}")
        expect(not re.search(r"^\[\d+\] (header|trailer) > $", out, re.M), f"an empty header line:\n{out}")
        t = totals(out)
        expect(t["opened"] == 4 and t["retried"] == 0 and server.connections == 4,
               f"expected 4 connections and no retry; fetch {t}, server {server.connections}\n{out}")
        # A failure after part of the response is not retried and leaves no file behind; an HTTP
        # error status fails its URL.
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "--per-host", "1", "--output-dir", d, f"{base}/len/7", f"{base}/cut/1000",
                            f"{base}/status/404", expect_code=1)
            check_files(d, {"1-7": body("/len/7", 7)})
        line = summary_line(out, 2)
        expect(re.fullmatch(rf"{re.escape(base)}/cut/1000  FAILED \(the server closed the connection before the "
                            r"response was complete\)  [0-9.]+ s  connection \d+ \(reused\)", line),
               f"[2]: {line}\n{out}")
        expect(re.search(r"^  \[3\] .*  FAILED \(HTTP status 404\)", out, re.M), f"404:\n{out}")
        print("bodies: chunked (with a trailer), EOF-delimited, Connection: close, HTTP/1.0, 103, 204, 304 "
              "with a Content-Length and empty ones byte for byte")


def check_redirects(fetch_exe):
    with TestServer() as server:
        base = server.base()
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "-L", "--per-host", "1", "--output-dir", d, f"{base}/chain/1", f"{base}/loop",
                            expect_code=1)
            check_files(d, {"1-1": body("/len/1000", 1000)})
        check_ok(out, 1, f"{base}/chain/1", 1000, r"connection 1 \((new|reused)\), 5 redirects")
        chain = [t for _, t in server.requests if t != "/loop"]
        expect(chain == ["/chain/1", "/chain/2", "/chain/3", "/chain/4?x=1", "/chain/5", "/len/1000"],
               f"the redirects went to {chain}")
        for status, url in [(301, "/chain/2"), (302, "/chain/3"), (303, "/chain/4?x=1"), (307, "/chain/5"),
                            (308, "/len/1000")]:
            expect(re.search(rf"^\[1\] redirect {status} -> {re.escape(base + url)}$", out, re.M),
                   f"no 'redirect {status}' line:\n{out}")
        # Bounded: a loop fails after the default of 10 redirects.
        expect(re.search(r"^  \[2\] .*/loop  FAILED \(too many redirects \(more than 10\)\)", out, re.M),
               f"loop:\n{out}")
        loops = sum(1 for _, t in server.requests if t == "/loop")
        expect(loops == 11, f"a loop with the default of 10 redirects sent {loops} requests")
        t = totals(out)
        expect(t["opened"] == 1 and t["requests"] == 17 and t["redirects"] == 15, f"totals {t}\n{out}")
        # --max-redirs; and a redirect to another origin, which gets a connection of its own.
        with TestServer() as other:
            out = run_fetch(fetch_exe, "--location", "--max-redirs=1", f"{base}/chain/1", f"{base}/chain/5",
                            f"{base}/away/{other.port}", expect_code=1)
            expect(other.connections == 1 and [t for _, t in other.requests] == ["/len/50"],
                   f"the other origin saw {other.connections} connections, requests {other.requests}")
        expect(re.search(r"^  \[1\] .*  FAILED \(too many redirects \(more than 1\)\)", out, re.M),
               f"--max-redirs 1:\n{out}")
        check_ok(out, 2, f"{base}/chain/5", 1000, r"connection \d \((new|reused)\), 1 redirect")
        check_ok(out, 3, f"{base}/away/{other.port}", 50, r"connection \d \(new\), 1 redirect")
        expect(re.search(rf"^\[3\] redirect 302 -> http://127\.0\.0\.1:{other.port}/len/50$", out, re.M),
               f"redirect to the other origin:\n{out}")
        # Without -L a redirect is the result.
        out = run_fetch(fetch_exe, f"{base}/chain/1")
        line = summary_line(out, 1)
        expect(re.fullmatch(rf"{re.escape(base)}/chain/1  301 Moved  {len('moved to 2')} bytes  [0-9.]+ s  "
                            r"connection 1 \(new\)", line), f"without -L: {line}\n{out}")
        expect(re.search(r"^\[1\] redirect 301 to 2 not followed", out, re.M), f"without -L:\n{out}")
        print("redirects: a chain of 5 (relative, absolute, 303, 307, 308) followed; loops and --max-redirs bounded")


def check_retry(fetch_exe):
    with TestServer() as server:
        base = server.base()
        sizes = (10, 2000, 30, 4)
        urls = [f"{base}/rude/{n}" for n in sizes]
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "--per-host", "1", "--output-dir", d, *urls)
            check_files(d, {f"{i + 1}-{n}": body(f"/rude/{n}", n) for i, n in enumerate(sizes)})
        check_ok(out, 1, urls[0], 10, r"connection 1 \(new\)")
        for i in (2, 3, 4):
            check_ok(out, i, urls[i - 1], sizes[i - 1], rf"connection {i} \(new\), retried")
            expect(re.search(rf"^\[{i}\] connection {i - 1} failed before any response \(.*\): retrying on a new "
                             r"connection$", out, re.M), f"no retry line for [{i}]:\n{out}")
        t = totals(out)
        expect(t["fetched"] == 4 and t["opened"] == 4 and t["requests"] == 7 and t["retried"] == 3,
               f"totals {t}\n{out}")
        expect(server.connections == 4 and len(server.requests) == 4,
               f"server: {server.connections} connections, {len(server.requests)} requests (expected 4 and 4)")
        print("retry: 3 requests that met a closed kept-alive connection went again on new ones")


def check_retry_408(fetch_exe):
    with TestServer() as server:
        base = server.base()
        # One connection at a time. /stale answers a connection's first request and times out any
        # later one (408 and close); /timeout always does. The retry of [7] meets a 408 too: the
        # request goes again only once.
        plan = [("len/10", r"connection 1 \(new\)"),
                ("stale/2000", r"connection 2 \(new\), retried"),
                ("stale/30", r"connection 3 \(new\), retried"),
                ("close/5", r"connection 3 \(reused\)"),
                ("timeout", r"connection 4 \(new\)"),
                ("len/7", r"connection 5 \(new\)"),
                ("timeout", r"connection 6 \(new\), retried")]
        urls = [f"{base}/{p}" for p, _ in plan]
        with tempfile.TemporaryDirectory() as d:
            out = run_fetch(fetch_exe, "--per-host", "1", "--output-dir", d, *urls, expect_code=1)
            check_files(d, {"1-10": body("/len/10", 10), "2-2000": body("/stale/2000", 2000),
                            "3-30": body("/stale/30", 30), "4-5": body("/close/5", 5), "6-7": body("/len/7", 7)})
        for i, (p, how) in enumerate(plan):
            if p == "timeout":
                line = summary_line(out, i + 1)
                expect(re.fullmatch(rf"{re.escape(urls[i])}  FAILED \(HTTP status 408\)  [0-9.]+ s  {how}", line),
                       f"[{i + 1}] expected a 408, '{how}'; got: {line}\n{out}")
            else:
                n = int(p.split("/")[1])
                check_ok(out, i + 1, urls[i], n, how)
        for i, stale in ((2, 1), (3, 2), (7, 5)):
            expect(re.search(rf"^\[{i}\] connection {stale} answered 408 Request Timeout \(it had been idle\): "
                             r"retrying on a new connection$", out, re.M), f"no 408 retry line for [{i}]:\n{out}")
        expect(len(re.findall(r"answered 408", out)) == 3, f"a 408 on a new connection was retried:\n{out}")
        t = totals(out)
        # The bytes of the two 408s reported count too (their files are removed).
        expect(t["fetched"] == 5 and t["failed"] == 2 and t["opened"] == 6 and t["requests"] == 10
               and t["reused"] == 4 and t["retried"] == 3
               and t["bytes"] == 10 + 2000 + 30 + 5 + 7 + 2 * len(b"idle too long"), f"totals {t}\n{out}")
        targets = [t for _, t in server.requests]
        expect(server.connections == 6 and len(targets) == 10,
               f"server: {server.connections} connections, requests {server.requests} (expected 6 and 10)")
        print("retry-408: 3 requests answered 408 on a reused connection went again on new ones (once each); "
              "a 408 on a new connection is the URL's result")


def check_https(fetch_exe):
    if shutil.which("openssl") is None:
        raise Skip("the openssl command is not installed")
    with tempfile.TemporaryDirectory() as d:
        make_test_pki(d, other_cas=("other",))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "leaf.pem"), os.path.join(d, "leaf.key"))
        with TestServer(ctx) as server, tempfile.TemporaryDirectory() as out_dir:
            base = server.base()
            # One connection at a time. Connection 1: kept alive over sized, chunked and an
            # EOF-delimited body (ended by close_notify). Connection 2: kept alive, then closed by
            # the server after /rude without a word; the next request meets the close and goes
            # again on connection 3, whose next request is answered 408 Request Timeout: it goes
            # again on connection 4, which then carries a chain of redirects.
            plan = [("len/1", 1, r"connection 1 \(new\)"),
                    ("chunked/70000", 70000, r"connection 1 \(reused\)"),
                    ("eof/3000", 3000, r"connection 1 \(reused\)"),
                    ("len/2", 2, r"connection 2 \(new\)"),
                    ("rude/5", 5, r"connection 2 \(reused\)"),
                    ("len/3", 3, r"connection 3 \(new\), retried"),
                    ("stale/6", 6, r"connection 4 \(new\), retried"),
                    ("chain/1", 1000, r"connection 4 \(reused\), 5 redirects")]
            urls = [f"{base}/{p}" for p, _, _ in plan]
            out = run_fetch(fetch_exe, "--cacert", os.path.join(d, "ca.pem"), "-L", "--per-host", "1",
                            "--output-dir", out_dir, *urls)
            expected = {f"{i + 1}-{p.split('/')[-1]}": body("/" + p, n) for i, (p, n, _) in enumerate(plan)}
            expected["8-1"] = body("/len/1000", 1000)
            check_files(out_dir, expected)
            for i, (p, n, how) in enumerate(plan):
                check_ok(out, i + 1, urls[i], n, how)
            expect(re.search(r"^\[1\] TLS TLSv1\.3 \S+, server /CN=localhost$", out, re.M), f"TLS line:\n{out}")
            t = totals(out)
            expect(t["opened"] == 4 and t["requests"] == 15 and t["retried"] == 2 and t["redirects"] == 5,
                   f"totals {t}\n{out}")
            expect(server.connections == 4 and len(server.requests) == 14,
                   f"server: {server.connections} connections, {len(server.requests)} requests (expected 4 and 14)")
            expect(re.search(r"^\[7\] connection 3 answered 408 Request Timeout", out, re.M), f"no 408 retry:\n{out}")
            # A certificate from a CA that is not trusted: refused, with OpenSSL's reason.
            out = run_fetch(fetch_exe, "--cacert", os.path.join(d, "other.pem"), f"{base}/len/1", expect_code=1)
            expect(re.search(r"^  \[1\] .*  FAILED \(.*certificate verify failed: unable to get local issuer "
                             r"certificate.*\)", out, re.M), f"untrusted certificate:\n{out}")
            expect(not re.search(r"header >", out), f"a response was read over a refused connection:\n{out}")
    print("https: keep-alive, chunked, close_notify, both retries and redirects over TLS; an untrusted certificate "
          "refused")


CHECKS = {
    "keep-alive": check_keep_alive,
    "bodies": check_bodies,
    "redirects": check_redirects,
    "retry": check_retry,
    "retry-408": check_retry_408,
    "https": check_https,
}


def main():
    names, exe = sys.argv[1:-1], sys.argv[-1] if len(sys.argv) > 2 else None
    if not names or any(n not in CHECKS for n in names):
        print(__doc__, file=sys.stderr)
        return 2
    for name in names:  # one process for several checks: the interpreter starts once
        try:
            CHECKS[name](exe)
        except Skip as e:
            print(f"SKIP: {name}: {e}")
            return 77
        except (CheckFailed, OSError, subprocess.SubprocessError, ssl.SSLError) as e:
            print(f"FAIL: {name}: {type(e).__name__}: {e}")
            return 1
        print(f"ok: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
