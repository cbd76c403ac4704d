#!/usr/bin/env python3
"""Checks the network samples over loopback; the driver of their tests in `meson test --suite samples`.

    net_check.py http            HTTP_SERVER
    net_check.py http-malformed  HTTP_SERVER
    net_check.py http-debug      HTTP_SERVER
    net_check.py echo            ECHO_SERVER
    net_check.py echo-dump       ECHO_SERVER
    net_check.py fetch           HTTP_SERVER FETCH
    net_check.py fetch-overlap   HTTP_SERVER FETCH
    net_check.py fetch-failures  HTTP_SERVER FETCH
    net_check.py fetch-https     HTTP_SERVER FETCH   (against `openssl s_server -www`; exit 77 without it)
    net_check.py http-tls        HTTP_SERVER         (--tls-cert/--tls-key; exit 77 without openssl or curl)
    net_check.py echo-tls        ECHO_SERVER         (--tls-cert/--tls-key; exit 77 without openssl)

NET_CHECK_SERVER_ARGS (environment) adds arguments to every server, e.g. '--threads 4'.

Each check starts its servers with --port 0, reads the port from their 'listening on HOST:PORT'
line, talks to them over 127.0.0.1, and stops every one by its pid with SIGINT (or SIGTERM),
expecting exit status 0 within a timeout; a server that does not exit is killed and the check
fails. Every socket has a timeout, so nothing hangs. Exits 0 when every check holds, 1 otherwise.
"""

import os
import random
import resource
import re
import select
import selectors
import shlex
import signal
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# In a cross build meson test names the emulator (qemu) to run target binaries with.
WRAPPER = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
SERVER_ARGS = shlex.split(os.environ.get("NET_CHECK_SERVER_ARGS", ""))
IO_TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Server:
    """A sample server on a free port; a context manager that always stops it."""

    def __init__(self, exe, *args):
        self.name = os.path.basename(exe)
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(WRAPPER + [exe, "--port", "0", *SERVER_ARGS, *args],
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        self.stopped = False
        try:
            line = self._read_line(IO_TIMEOUT)
            m = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
            expect(m, f"{self.name}: expected 'listening on HOST:PORT', got {line!r}")
            self.host, self.port = m.group(1), int(m.group(2))
            expect(self.host == "127.0.0.1", f"{self.name}: listening on {self.host}, not 127.0.0.1")
            expect(self.port != 0, f"{self.name}: reported port 0, not the bound port")
        except BaseException:
            self.kill()
            raise

    def _read_line(self, timeout):
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise CheckFailed(f"{self.name}: no 'listening on' line within {timeout} s")
            chunk = os.read(fd, 1)
            if not chunk:
                raise CheckFailed(f"{self.name}: exited before listening: {self.stderr_text()}")
            data += chunk
        return data.decode("utf-8", "replace")

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGINT, timeout=10.0):
        """Signals the server by its pid and expects it to exit 0 within `timeout` seconds."""
        self.stopped = True
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(f"{self.name}: still running {timeout} s after {sig.name}")
        expect(code == 0, f"{self.name}: exit status {code} after {sig.name}; stderr: {self.stderr_text()}")
        return time.monotonic() - start

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=IO_TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.stopped:
            if exc_type is None:
                self.stop()
            else:
                self.kill()
        self.proc.stdout.close()
        return False


class Conn:
    """A client connection with a read buffer, reading HTTP responses by Content-Length."""

    def __init__(self, port, nodelay=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise CheckFailed(f"connection closed in the middle of a response; have {self.buf[:200]!r}")
        self.buf += chunk

    def response(self, head_request=False):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        expect(lines[0].startswith("HTTP/1.1 "), f"bad status line {lines[0]!r}")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            expect(name.lower() not in headers, f"header {name} twice")
            headers[name.lower()] = value
        length = int(headers["content-length"])
        body = b""
        if not head_request:
            while len(self.buf) < length:
                self._more()
            body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def at_eof(self):
        """True if the server closes the connection (with nothing more to read) within the timeout."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def get(port, path, extra=b""):
    c = Conn(port)
    c.send(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n")
    r = c.response()
    c.close()
    return r


# ---- http_server ---------------------------------------------------------------------------------


def check_http(server_exe):
    with Server(server_exe) as srv:
        port = srv.port
        status, headers, body = get(port, "/")
        expect((status, body) == (200, b"<h1>Index Page</h1>"), f"GET /: {status} {body!r}")
        expect(headers.get("content-type", "").startswith("text/html"), f"GET /: {headers}")
        status, _, body = get(port, "/world")
        expect((status, body) == (200, b"<h1>Hello, world</h1>"), f"GET /world: {status} {body!r}")
        status, _, body = get(port, "/%3Cb%3E%20%26")
        expect(body == b"<h1>Hello, &lt;b&gt; &amp;</h1>", f"GET /%3Cb%3E%20%26: {body!r}")
        status, _, body = get(port, "/a/b")
        expect(status == 404, f"GET /a/b: {status}")

        # A real client.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/urllib", timeout=IO_TIMEOUT) as r:
            expect(r.status == 200 and r.read() == b"<h1>Hello, urllib</h1>", "urllib GET /urllib")

        # Keep-alive: several requests, one connection, which stays open.
        c = Conn(port)
        for i in range(5):
            c.send(f"GET /n{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, headers, body = c.response()
            expect(body == f"<h1>Hello, n{i}</h1>".encode(), f"keep-alive request {i}: {body!r}")
            expect("connection" not in headers, f"keep-alive response {i} says Connection: {headers}")
        # A body is consumed, and the connection goes on (POST is 405 on this route).
        c.send(b"POST /x HTTP/1.1\r\nContent-Length: 7\r\n\r\npayloadGET /y HTTP/1.1\r\n\r\n")
        expect(c.response()[0] == 405, "POST with a body is not 405")
        expect(c.response()[2] == b"<h1>Hello, y</h1>", "the request after a body is not answered")
        # HEAD: headers only.
        c.send(b"HEAD / HTTP/1.1\r\n\r\n")
        status, headers, body = c.response(head_request=True)
        expect(status == 200 and headers["content-length"] == "19", f"HEAD /: {status} {headers}")

        # Pipelining: five requests in one write, answered in order; then the same in pieces.
        c.send(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(5)))
        for i in range(5):
            body = c.response()[2]
            expect(body == f"<h1>Hello, p{i}</h1>".encode(), f"pipelined response {i}: {body!r}")
        data = b"GET /s1 HTTP/1.1\r\nHost: t\r\n\r\nGET /s2 HTTP/1.1\r\n\r\n"
        for piece in (data[:7], data[7:30], data[30:41], data[41:]):
            c.send(piece)
            time.sleep(0.02)
        expect(c.response()[2] == b"<h1>Hello, s1</h1>", "split pipelined response 1")
        expect(c.response()[2] == b"<h1>Hello, s2</h1>", "split pipelined response 2")
        # Connection: close ends it after the response.
        c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = c.response()
        expect(headers.get("connection") == "close", f"Connection: close not echoed: {headers}")
        expect(c.at_eof(), "the connection stays open after Connection: close")
        c.close()

        # HTTP/1.0 closes unless asked to keep alive.
        c = Conn(port)
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        expect(c.response()[0] == 200 and c.at_eof(), "HTTP/1.0 without keep-alive")
        c.close()
        c = Conn(port)
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        expect(c.response()[1].get("connection") == "keep-alive", "HTTP/1.0 keep-alive not confirmed")
        c.send(b"GET /again HTTP/1.0\r\n\r\n")
        expect(c.response()[2] == b"<h1>Hello, again</h1>" and c.at_eof(), "HTTP/1.0 second request")
        c.close()

        # Many connections at once: each gets its own fiber.
        conns = [Conn(port) for _ in range(200)]
        for i, c in enumerate(conns):
            c.send(f"GET /c{i} HTTP/1.1\r\n\r\n".encode())
        for i, c in enumerate(conns):
            expect(c.response()[2] == f"<h1>Hello, c{i}</h1>".encode(), f"connection {i} of 200")
            c.close()

        # SIGINT with an idle keep-alive connection open: the server stops within its grace period.
        idle = Conn(port)
        idle.send(b"GET / HTTP/1.1\r\n\r\n")
        idle.response()
        took = srv.stop(signal.SIGINT)
        expect(took < 5.0, f"SIGINT took {took:.2f} s with an idle connection open")
        idle.close()
        expect(srv.stderr_text() == "", f"unexpected stderr: {srv.stderr_text()!r}")

    # The idle timeout closes a silent connection; SIGTERM stops the server too.
    with Server(server_exe, "--idle-timeout", "0.3") as srv:
        c = Conn(srv.port)
        start = time.monotonic()
        expect(c.at_eof(), "an idle connection was not closed")
        took = time.monotonic() - start
        expect(0.2 <= took <= 3.0, f"idle connection closed after {took:.2f} s, expected ~0.3 s")
        c.close()
        srv.stop(signal.SIGTERM)


def check_http_malformed(server_exe):
    with Server(server_exe) as srv:
        port = srv.port
        keeper = Conn(port)  # a well-behaved client, served between the bad ones
        bad_requests = [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET / HTTP/9\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
            b"\x00\x01\x02\x03\xff\r\n\r\n",
            b"GET /ok HTTP/1.1\r\n\r\nBROKEN REQUEST LINE\r\n\r\n",
        ]
        for i, bad in enumerate(bad_requests):
            c = Conn(port)
            c.send(bad)
            status, headers, _ = c.response()
            if bad.startswith(b"GET /ok"):
                expect(status == 200, "the good request before a bad one is not answered")
                status, headers, _ = c.response()
            expect(status == 400, f"malformed request {i} ({bad[:20]!r}): status {status}, not 400")
            expect(headers.get("connection") == "close", f"malformed request {i}: no Connection: close")
            expect(c.at_eof(), f"malformed request {i}: the connection stays open")
            c.close()
            keeper.send(f"GET /still{i} HTTP/1.1\r\n\r\n".encode())
            expect(keeper.response()[2] == f"<h1>Hello, still{i}</h1>".encode(), "the good client")

        # Headers past 8 KiB: 431, and the rest of what the client sends is drained, not reset.
        c = Conn(port)
        c.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        status, headers, _ = c.response()
        expect(status == 431 and headers.get("connection") == "close", f"oversized headers: {status}")
        expect(c.at_eof(), "oversized headers: the connection stays open")
        c.close()
        # A body over the limit: 413 before it is read.
        c = Conn(port)
        c.send(b"POST / HTTP/1.1\r\nContent-Length: 100000000\r\n\r\nxyz")
        status, _, _ = c.response()
        expect(status == 413, f"oversized body: {status}")
        expect(c.at_eof(), "oversized body: the connection stays open")
        c.close()
        # A client that vanishes halfway through a request does not disturb the server.
        c = Conn(port)
        c.send(b"GET /half")
        c.close()

        keeper.send(b"GET / HTTP/1.1\r\n\r\n")
        expect(keeper.response()[0] == 200, "the good client after the bad ones")
        keeper.close()
        srv.stop()
        expect(srv.stderr_text() == "", f"unexpected stderr: {srv.stderr_text()!r}")


# ---- echo_server ---------------------------------------------------------------------------------


def echo_roundtrip(port, data, chunk=65536):
    """Sends `data` from a thread while reading the echo; returns what came back."""
    c = Conn(port)
    error = []

    def sender():
        try:
            for i in range(0, len(data), chunk):
                c.sock.sendall(data[i:i + chunk])
            c.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            error.append(e)

    t = threading.Thread(target=sender)
    t.start()
    got = bytearray()
    while True:
        piece = c.sock.recv(65536)
        if not piece:
            break
        got += piece
    t.join(IO_TIMEOUT)
    c.close()
    expect(not error, f"sending failed: {error}")
    return bytes(got)


def check_echo(server_exe):
    rng = random.Random(1234)
    with Server(server_exe) as srv:
        port = srv.port
        c = Conn(port)
        c.send(b"hello")
        expect(c.sock.recv(100) == b"hello", "echo of 'hello'")
        c.close()
        # Data and the client's half-close arriving together: the server must still see the end of
        # the stream after echoing the data (one epoll edge carries both), and close.
        for i in range(10):
            c = Conn(port)
            time.sleep(0.02)  # the server's fiber is parked in read by now
            c.sock.sendall(b"data then FIN")
            c.sock.shutdown(socket.SHUT_WR)
            c.sock.settimeout(3.0)
            got = b""
            try:
                while True:
                    piece = c.sock.recv(100)
                    if not piece:
                        break
                    got += piece
            except TimeoutError:
                raise CheckFailed(f"try {i}: got the echo {got!r} but no end of stream within 3 s: "
                                  "the server's second read never saw the peer's FIN")
            expect(got == b"data then FIN", f"half-close echo: {got!r}")
            c.close()
        # 4 MiB of random bytes; the client half-closes and the server closes after the echo.
        data = rng.randbytes(4 * 1024 * 1024)
        expect(echo_roundtrip(port, data) == data, "echo of 4 MiB of random bytes differs")
        # Many clients at once.
        results = {}

        def client(i):
            payload = rng.randbytes(10000 + i)
            try:
                results[i] = "ok" if echo_roundtrip(port, payload, chunk=997) == payload else "differs"
            except (OSError, CheckFailed) as e:
                results[i] = f"{type(e).__name__}: {e}"

        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(IO_TIMEOUT * 2)
        bad = {i: r for i, r in results.items() if r != "ok"}
        expect(len(results) == 50 and not bad, f"concurrent echoes: {len(bad)} of 50 failed: {bad}")
        # SIGINT with a connection open.
        idle = Conn(port)
        idle.send(b"x")
        expect(idle.sock.recv(1) == b"x", "echo before SIGINT")
        took = srv.stop(signal.SIGINT)
        expect(took < 5.0, f"SIGINT took {took:.2f} s with a connection open")
        idle.close()
        expect(srv.stderr_text() == "", f"unexpected stderr: {srv.stderr_text()!r}")
    with Server(server_exe, "--verbose") as srv:
        c = Conn(srv.port)
        c.send(b"hi\n")
        expect(c.sock.recv(10) == b"hi\n", "echo with --verbose")
        c.close()
        srv.stop(signal.SIGTERM)
        out = srv.proc.stdout.read().decode()
        expect(re.search(r"^Received b'hi\\n' from 127\.0\.0\.1:\d+$", out, re.M), f"--verbose printed {out!r}")


def check_echo_dump(server_exe):
    """--debug-dump: SIGUSR1 several times while 1,000 connections echo; every byte comes back."""
    clients, size, piece = 1000, 8000, 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * clients + 64  # the server (which inherits it) and this process hold one each
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    rng = random.Random(4321)
    with Server(server_exe, "--debug-dump") as srv:
        conns = []
        sel = selectors.DefaultSelector()
        try:
            for i in range(clients):
                c = Conn(srv.port)
                c.sock.setblocking(False)
                payload = rng.randbytes(size)
                conns.append({"sock": c.sock, "data": payload, "sent": 0, "got": bytearray()})
                sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conns[-1])
            # A dump with every connection's fiber parked in its first read.
            time.sleep(0.2)
            srv.proc.send_signal(signal.SIGUSR1)
            signals, done = 1, 0
            deadline = time.monotonic() + 30
            while done < clients:
                expect(time.monotonic() < deadline, f"echo with dumps: {done} of {clients} done after 30 s")
                for key, events in sel.select(timeout=1.0):
                    st = key.data
                    if events & selectors.EVENT_WRITE and st["sent"] < size:
                        try:
                            st["sent"] += st["sock"].send(st["data"][st["sent"]:st["sent"] + piece])
                        except BlockingIOError:
                            pass
                        if st["sent"] == size:
                            sel.modify(st["sock"], selectors.EVENT_READ, st)
                    if events & selectors.EVENT_READ:
                        try:
                            chunk = st["sock"].recv(65536)
                        except BlockingIOError:
                            continue
                        expect(chunk, f"connection closed after {len(st['got'])} of {size} bytes")
                        st["got"] += chunk
                        if len(st["got"]) >= size:
                            expect(bytes(st["got"]) == st["data"], "an echo differs from what was sent")
                            sel.unregister(st["sock"])
                            done += 1
                            # Three more dumps while the rest are still echoing.
                            if done in (clients // 4, clients // 2, 3 * clients // 4):
                                srv.proc.send_signal(signal.SIGUSR1)
                                signals += 1
        finally:
            sel.close()
            for st in conns:
                st["sock"].close()
        # The dumps come from another thread: wait for them, then check they name the fibers.
        # Signals sent while one is still pending merge into it (under qemu-user, on a loaded
        # machine, all four can), so a second one goes out once the first dump has landed.
        def wait_dumps(n):
            deadline = time.monotonic() + 30
            while srv.stderr_text().count("skein: ") < n and time.monotonic() < deadline:
                time.sleep(0.05)
        wait_dumps(1)
        if srv.stderr_text().count("skein: ") < 2:
            srv.proc.send_signal(signal.SIGUSR1)
            signals += 1
            wait_dumps(2)
        text = srv.stderr_text()
        dumps = text.count("skein: ")
        expect(dumps >= 2, f"{signals} SIGUSR1 gave {dumps} dump(s); stderr: {text[:2000]!r}")
        expect(re.search(r'^\d+ fibers "connection" parked: fd read', text, re.M),
               f"no group of connection fibers parked in a read in the dumps: {text[:2000]!r}")
        expect(re.search(r'"acceptor" parked: accept', text), f"no acceptor in the dumps: {text[:2000]!r}")
        took = srv.stop(signal.SIGINT)
        expect(took < 5.0, f"SIGINT took {took:.2f} s after the dumps")
    # Without the flag SIGUSR1 keeps its default action: the process ends by it.
    with Server(server_exe) as srv:
        srv.stopped = True
        srv.proc.send_signal(signal.SIGUSR1)
        code = srv.proc.wait(timeout=IO_TIMEOUT)
        expect(code == -signal.SIGUSR1, f"without --debug-dump, SIGUSR1 gave exit status {code}")


def check_http_debug(server_exe):
    """--debug-routes: GET /debug/fibers and /debug/stats; 404 without the flag."""
    with Server(server_exe) as srv:
        for path in ("/debug/fibers", "/debug/stats"):
            status, _, _ = get(srv.port, path)
            expect(status == 404, f"GET {path} without --debug-routes: {status}")
    with Server(server_exe, "--debug-routes") as srv:
        idle = Conn(srv.port)  # a connection whose fiber is parked in a read
        time.sleep(0.1)
        status, headers, body = get(srv.port, "/debug/fibers")
        text = body.decode()
        expect(status == 200, f"GET /debug/fibers: {status}")
        expect(headers.get("content-type", "").startswith("text/plain"), f"GET /debug/fibers: {headers}")
        expect(re.match(r"skein: \d+ fibers in 1 runtime\(s\)", text), f"GET /debug/fibers: {text[:500]!r}")
        expect('"connection" running' in text, f"the requesting fiber is not shown running: {text[:2000]!r}")
        expect(re.search(r'"connection" parked: fd read', text), f"the idle connection is not shown: {text[:2000]!r}")
        status, _, body = get(srv.port, "/debug/stats")
        expect(status == 200 and re.search(rb"^total: \d+ fibers, \d+ switches", body, re.M),
               f"GET /debug/stats: {status} {body[:500]!r}")
        c = Conn(srv.port)
        c.send(b"POST /debug/fibers HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        status, _, _ = c.response()
        expect(status == 405, f"POST /debug/fibers: {status}")
        c.close()
        idle.close()


# ---- fetch ---------------------------------------------------------------------------------------


def run_fetch(fetch_exe, *args, timeout=30):
    try:
        proc = subprocess.run(WRAPPER + [fetch_exe, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"fetch {' '.join(args)} did not finish within {timeout} s")
    return proc


def check_fetch(server_exe, fetch_exe):
    with Server(server_exe) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        proc = run_fetch(fetch_exe, base + "/", base + "/world", base + "/%3Cb%3E?q=1")
        out = proc.stdout
        expect(proc.returncode == 0, f"fetch exit status {proc.returncode}\n{out}{proc.stderr}")
        for i in (1, 2, 3):
            expect(re.search(rf"^\[{i}\] header > HTTP/1\.1 200 OK$", out, re.M), f"[{i}] status line:\n{out}")
            expect(re.search(rf"^\[{i}\] header > Content-Type: text/html", out, re.M), f"[{i}] headers:\n{out}")
        expect(re.search(r"^\[1\] header > Content-Length: 19$", out, re.M), f"[1] length:\n{out}")
        expect(re.search(r"^\[3\] header > Content-Length: 25$", out, re.M), f"[3] length:\n{out}")
        expect(re.search(rf"^  \[1\] {re.escape(base)}/  200 OK  19 bytes  [0-9.]+ s  connection \d+ \((new|reused)\)$",
                         out, re.M),
               f"summary [1]:\n{out}")
        expect(re.search(rf"^  \[2\] {re.escape(base)}/world  200 OK  21 bytes", out, re.M), f"summary [2]:\n{out}")
        expect(re.search(r"^3 fetched, 0 failed, 65 bytes in [0-9.]+ s", out, re.M), f"totals:\n{out}")
        srv.stop()


def check_fetch_overlap(server_exe, fetch_exe):
    n, delay = 5, 0.2
    with Server(server_exe, "--delay-ms", str(int(delay * 1000))) as srv:
        urls = [f"http://127.0.0.1:{srv.port}/u{i}" for i in range(n)]
        proc = run_fetch(fetch_exe, *urls)
        out = proc.stdout
        expect(proc.returncode == 0, f"fetch exit status {proc.returncode}\n{out}{proc.stderr}")
        m = re.search(r"^(\d+) fetched, 0 failed, \d+ bytes in ([0-9.]+) s \(the fetches one after another: "
                      r"([0-9.]+) s\)$", out, re.M)
        expect(m and int(m.group(1)) == n, f"totals:\n{out}")
        wall, serial = float(m.group(2)), float(m.group(3))
        expect(serial >= n * delay * 0.95, f"each fetch should take >= {delay} s; their sum is {serial} s\n{out}")
        expect(wall < n * delay * 0.6, f"{n} fetches of {delay} s each took {wall} s: they did not overlap\n{out}")
        print(f"{n} fetches with a {delay} s server delay: {wall:.3f} s in all, {serial:.3f} s summed")
        srv.stop()


def check_fetch_failures(server_exe, fetch_exe):
    # A port nobody listens on, and a listener that accepts but never answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        with Server(server_exe) as srv:
            base = f"http://127.0.0.1:{srv.port}"
            proc = run_fetch(fetch_exe, "--timeout", "0.5", base + "/", f"http://127.0.0.1:{closed_port}/",
                             base + "/a/b", f"http://127.0.0.1:{silent.getsockname()[1]}/")
            out = proc.stdout
            expect(proc.returncode == 1, f"fetch exit status {proc.returncode}, expected 1\n{out}{proc.stderr}")
            expect(re.search(r"^  \[1\] .*  200 OK  19 bytes", out, re.M), f"[1]:\n{out}")
            expect(re.search(r"^  \[2\] .*  FAILED \(.*[Cc]onnection refused.*\)", out, re.M), f"[2]:\n{out}")
            expect(re.search(r"^  \[3\] .*  FAILED \(HTTP status 404\)", out, re.M), f"[3]:\n{out}")
            expect(re.search(r"^  \[4\] .*  FAILED \(timed out after 0\.5", out, re.M), f"[4]:\n{out}")
            expect(re.search(r"^1 fetched, 3 failed", out, re.M), f"totals:\n{out}")
            srv.stop()
    finally:
        silent.close()


def require_tools(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            raise Skip(f"the {tool} command is not installed")


def make_test_pki(d, other_cas=()):
    """A throwaway CA (d/ca.pem) and a leaf for localhost and 127.0.0.1 signed by it (d/leaf.pem,
    d/leaf.key), EC P-256, valid for a day, made with the openssl command; and a CA d/NAME.pem for
    each name in `other_cas`, which signed nothing."""
    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        expect(proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", *other_cas):
        sh("openssl", "req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1",
           "-subj", f"/CN=test {ca}")
    sh("openssl", "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "leaf.pem", "-days", "1", "-extfile", "ext.cnf")


def check_fetch_https(server_exe, fetch_exe):
    del server_exe  # the server here is OpenSSL's own
    require_tools("openssl")
    with tempfile.TemporaryDirectory() as d:
        make_test_pki(d)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", "leaf.pem",
                                   "-key", "leaf.key", "-www", "-quiet"], cwd=d,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + IO_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    expect(time.monotonic() < deadline, "openssl s_server did not start listening")
                    time.sleep(0.05)
            ca = os.path.join(d, "ca.pem")
            url = f"https://localhost:{port}/"
            proc = run_fetch(fetch_exe, "--cacert", ca, url, f"https://127.0.0.1:{port}/")
            out = proc.stdout
            expect(proc.returncode == 0, f"fetch --cacert: exit status {proc.returncode}\n{out}{proc.stderr}")
            expect(re.search(r"^\[1\] TLS TLSv1\.3 \S+, server /CN=localhost$", out, re.M), f"TLS line:\n{out}")
            expect(re.search(r"^\[1\] header > HTTP/1\.0 200 ok$", out, re.M), f"status line:\n{out}")
            expect(re.search(r"^2 fetched, 0 failed", out, re.M), f"totals:\n{out}")
            # The system's CAs do not know this one: refused, with the reason.
            proc = run_fetch(fetch_exe, url)
            out = proc.stdout
            expect(proc.returncode == 1, f"fetch without --cacert: exit status {proc.returncode}\n{out}")
            expect(re.search(r"FAILED \(.*certificate verify failed: unable to get local issuer certificate", out),
                   f"refusal:\n{out}")
            proc = run_fetch(fetch_exe, "--insecure", url)
            expect(proc.returncode == 0, f"fetch --insecure: exit status {proc.returncode}\n{proc.stdout}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# ---- the servers over TLS ------------------------------------------------------------------------


def tls_server(exe, d, *args):
    return Server(exe, "--tls-cert", os.path.join(d, "leaf.pem"), "--tls-key", os.path.join(d, "leaf.key"), *args)


def tls_client_context(d):
    return ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))


def tls_conn(port, context, host="localhost"):
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    return context.wrap_socket(raw, server_hostname=host)


def tls_counters(port, context):
    """(handshakes, resumed, failed) from the server's /debug/stats (this request's handshake included)."""
    with urllib.request.urlopen(f"https://localhost:{port}/debug/stats", timeout=IO_TIMEOUT,
                                context=context) as r:
        text = r.read().decode()
    m = re.search(r"^tls: (\d+) handshakes \((\d+) resumed\), (\d+) failed$", text, re.M)
    expect(m, f"/debug/stats has no tls line: {text[-500:]!r}")
    return tuple(int(g) for g in m.groups())


def run_tool(*cmd, input=None):
    try:
        return subprocess.run(cmd, input=input, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{cmd[0]} did not finish within 30 s")


def expect_refused(port):
    """A client speaking plain HTTP to the TLS port: the connection ends, with no HTTP answer."""
    c = Conn(port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    try:
        while True:
            piece = c.sock.recv(4096)
            if not piece:
                break
            got += piece
    except ConnectionResetError:
        pass
    c.close()
    expect(b"HTTP/" not in got, f"plain HTTP to the TLS port was answered: {got[:200]!r}")


def check_http_tls(server_exe):
    require_tools("openssl", "curl")
    with tempfile.TemporaryDirectory() as d:
        make_test_pki(d)
        ca = os.path.join(d, "ca.pem")
        context = tls_client_context(d)
        with tls_server(server_exe, d, "--debug-routes") as srv:
            port = srv.port
            # A client that connects and says nothing holds only its own fiber meanwhile, until the
            # server's 10 s handshake deadline: the checks of it below allow for a machine slow
            # enough to reach that deadline first.
            silent = Conn(port)
            silent_since = time.monotonic()
            base = f"https://localhost:{port}"
            handshakes = tls_counters(port, context)[0]
            # curl: two URLs, one connection (keep-alive), one handshake, ALPN http/1.1.
            proc = run_tool("curl", "-sS", "-v", "--cacert", ca, base + "/", base + "/world")
            err = proc.stderr.decode("utf-8", "replace")
            expect(proc.returncode == 0, f"curl: exit status {proc.returncode}: {err}")
            expect(proc.stdout == b"<h1>Index Page</h1><h1>Hello, world</h1>", f"curl got {proc.stdout!r}")
            expect(re.search(r"ALPN.*server accepted.*http/1\.1", err), f"curl: no ALPN http/1.1:\n{err}")
            expect("Re-using existing connection" in err, f"curl did not reuse the connection:\n{err}")
            after = tls_counters(port, context)[0]
            expect(after == handshakes + 2, f"curl's two URLs took {after - handshakes - 1} handshakes, not 1")
            # An IP address in the URL, verified against the certificate's IP SAN.
            proc = run_tool("curl", "-sS", "--cacert", ca, f"https://127.0.0.1:{port}/%3Cb%3E")
            expect(proc.stdout == b"<h1>Hello, &lt;b&gt;</h1>", f"curl https://127.0.0.1: {proc.stdout!r}")
            # Python's client, with certificate verification.
            with urllib.request.urlopen(base + "/urllib", timeout=IO_TIMEOUT, context=context) as r:
                expect(r.status == 200 and r.read() == b"<h1>Hello, urllib</h1>", "urllib over TLS")

            # openssl s_client: ALPN http/1.1, then a resumed session (TLS 1.3 ticket, TLS 1.2 id).
            request = b"GET /sclient HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            for version in ("-tls1_3", "-tls1_2"):
                sess = os.path.join(d, "session" + version + ".pem")
                common = ["openssl", "s_client", version, "-connect", f"127.0.0.1:{port}", "-alpn", "http/1.1",
                          "-CAfile", ca, "-verify_return_error", "-servername", "localhost", "-ign_eof"]
                for resume in (False, True):
                    proc = run_tool(*common, *(["-sess_in", sess] if resume else ["-sess_out", sess]),
                                    input=request)
                    out = proc.stdout.decode("utf-8", "replace")
                    expect(proc.returncode == 0, f"s_client {version}: exit {proc.returncode}: {out[-1500:]}")
                    expect("ALPN protocol: http/1.1" in out, f"s_client {version}: no ALPN http/1.1:\n{out}")
                    expect("<h1>Hello, sclient</h1>" in out, f"s_client {version}: no response:\n{out}")
                    want = "Reused, " if resume else "New, "
                    expect(want in out, f"s_client {version}: expected a '{want}' session:\n{out}")
            expect(tls_counters(port, context)[1] >= 2, "the server counted no resumed handshakes")

            # Plain HTTP to the TLS port: refused, logged, counted; the server goes on.
            failed = tls_counters(port, context)[2]
            expect_refused(port)
            more = tls_counters(port, context)[2] - failed
            expect(more == 1 or (more == 2 and time.monotonic() - silent_since > 9),
                   f"the plain-HTTP client was counted as {more} failures, not 1")
            # A client that does not trust the certificate: its handshake fails, the server goes on.
            proc = run_tool("curl", "-sS", base + "/")
            expect(proc.returncode != 0, "curl without --cacert trusted the test CA")
            # Many TLS connections at once, each with a request of its own.
            conns = [tls_conn(port, context) for _ in range(50)]
            for i, c in enumerate(conns):
                c.sendall(f"GET /t{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            for i, c in enumerate(conns):
                data = b""
                want = f"<h1>Hello, t{i}</h1>".encode()
                while not data.endswith(want):
                    piece = c.recv(4096)
                    expect(piece, f"TLS connection {i} of 50 closed early: {data!r}")
                    data += piece
                c.close()
            proc = run_tool("curl", "-sS", "--cacert", ca, base + "/after")
            expect(proc.stdout == b"<h1>Hello, after</h1>", f"a request after the failures: {proc.stdout!r}")

            # The silent client's handshake is still waiting (until its 10 s deadline).
            silent.sock.settimeout(0.05)
            try:
                closed = silent.sock.recv(1) == b""
                expect(not closed or time.monotonic() - silent_since > 9,
                       "the silent client's connection was closed before the handshake deadline")
            except TimeoutError:
                pass
            silent.close()
            took = srv.stop(signal.SIGINT)
            expect(took < 5.0, f"SIGINT took {took:.2f} s")
            err = srv.stderr_text()
            lines = err.splitlines()
            expect(lines and all(re.match(r"http_server: TLS handshake with 127\.0\.0\.1:\d+ failed: ", line)
                                 for line in lines), f"unexpected stderr: {err!r}")
            expect("http request" in err, f"the plain-HTTP client's failure is not named: {err!r}")


def tls_echo(port, context, data, piece=65536, close_notify=True):
    """Sends `data` in pieces over one TLS connection, reading each echo back; returns them joined."""
    c = tls_conn(port, context)
    got = bytearray()
    for i in range(0, len(data), piece):
        chunk = data[i:i + piece]
        c.sendall(chunk)
        want = len(got) + len(chunk)
        while len(got) < want:
            more = c.recv(want - len(got))
            expect(more, f"the echo ended after {len(got)} of {len(data)} bytes")
            got += more
    if close_notify:
        # unwrap() sends close_notify and returns once the server's own arrives.
        c = c.unwrap()
    c.close()
    return bytes(got)


def check_echo_tls(server_exe):
    require_tools("openssl")
    rng = random.Random(2468)
    with tempfile.TemporaryDirectory() as d:
        make_test_pki(d)
        context = tls_client_context(d)
        with tls_server(server_exe, d) as srv:
            port = srv.port
            c = tls_conn(port, context)
            expect(c.version() in ("TLSv1.2", "TLSv1.3"), f"TLS version {c.version()}")
            expect(c.selected_alpn_protocol() is None, "echo_server chose an ALPN protocol")
            c.sendall(b"hello")
            expect(c.recv(100) == b"hello", "echo of 'hello' over TLS")
            c.close()
            # 1 MiB of random bytes, exactly.
            data = rng.randbytes(1024 * 1024)
            expect(tls_echo(port, context, data) == data, "echo of 1 MiB over TLS differs")
            # Several clients at once, some ending without close_notify.
            results = {}

            def client(i):
                payload = rng.randbytes(20000 + 997 * i)
                try:
                    ok = tls_echo(port, context, payload, piece=4093, close_notify=i % 2 == 0) == payload
                    results[i] = "ok" if ok else "differs"
                except (OSError, CheckFailed) as e:
                    results[i] = f"{type(e).__name__}: {e}"

            threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(IO_TIMEOUT * 2)
            bad = {i: r for i, r in results.items() if r != "ok"}
            expect(len(results) == 16 and not bad, f"concurrent TLS echoes: {len(bad)} of 16 failed: {bad}")
            # A plain client and garbage: refused; the next TLS client is served.
            expect_refused(port)
            g = Conn(port)
            g.send(rng.randbytes(3000))
            expect(g.at_eof(), "garbage to the TLS port: the connection stays open")
            g.close()
            expect(tls_echo(port, context, b"after") == b"after", "a TLS echo after the refused clients")
            took = srv.stop(signal.SIGINT)
            expect(took < 5.0, f"SIGINT took {took:.2f} s")
            err = srv.stderr_text()
            lines = err.splitlines()
            expect(len(lines) == 2 and all(re.match(r"echo_server: TLS handshake with 127\.0\.0\.1:\d+ failed: ", line)
                                           for line in lines), f"unexpected stderr: {err!r}")


CHECKS = {
    "http": (check_http, 1),
    "http-malformed": (check_http_malformed, 1),
    "echo": (check_echo, 1),
    "echo-dump": (check_echo_dump, 1),
    "http-debug": (check_http_debug, 1),
    "fetch": (check_fetch, 2),
    "fetch-overlap": (check_fetch_overlap, 2),
    "fetch-failures": (check_fetch_failures, 2),
    "fetch-https": (check_fetch_https, 2),
    "http-tls": (check_http_tls, 1),
    "echo-tls": (check_echo_tls, 1),
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    check, nargs = CHECKS[sys.argv[1]]
    args = sys.argv[2:]
    if len(args) != nargs:
        print(f"net_check.py {sys.argv[1]}: expected {nargs} program(s)", file=sys.stderr)
        return 2
    try:
        check(*args)
    except Skip as e:
        print(f"SKIP: {sys.argv[1]}: {e}")
        return 77
    except (CheckFailed, OSError, subprocess.SubprocessError) as e:
        print(f"FAIL: {sys.argv[1]}: {type(e).__name__}: {e}")
        return 1
    print(f"ok: {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
