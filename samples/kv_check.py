#!/usr/bin/env python3
"""Checks samples/kv_server with the real redis-cli; the driver of its tests in `meson test --suite samples`.

    kv_check.py KV_SERVER [SERVER_ARGS...]      e.g. kv_check.py build/samples/kv_server --threads 2

Starts KV_SERVER with --port 0 (and SERVER_ARGS), reads the port from its 'listening on HOST:PORT'
line, and drives it over 127.0.0.1: redis-cli commands (their output as redis-cli prints it),
`redis-cli --pipe`, raw-socket pipelining, a large value sent in pieces, expiry (lazy and the
active sweep), concurrent clients incrementing one counter, inline commands, malformed RESP
(the connection gets an error reply and is closed, while another client goes on being served),
SCAN walks (every key exactly once) and command names with a NUL inside. If redis-server is
installed too, the same raw commands go to a redis-server started on a free loopback port (no
persistence), and the replies must be byte for byte the same (HELLO and INFO server, which name the server, by shape). Finally the server
is stopped by its pid with SIGINT and must exit 0 with nothing on stderr.

Every socket and subprocess has a timeout, so nothing hangs. Exits 0 when every check holds, 1
otherwise, and 77 (a skip, for meson) when redis-cli is not installed (Debian: redis-tools).
"""

import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

WRAPPER = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
IO_TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Server:
    """A kv_server on a free port; a context manager that always stops it (by pid)."""

    def __init__(self, argv):
        self.name = os.path.basename(argv[0])
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(WRAPPER + argv, stdout=subprocess.PIPE, stderr=self.stderr)
        self.stopped = False
        try:
            line = self._read_line(IO_TIMEOUT)
            m = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
            expect(m, f"{self.name}: expected 'listening on HOST:PORT', got {line!r}")
            self.port = int(m.group(2))
            expect(self.port != 0, f"{self.name}: reported port 0, not the bound port")
        except BaseException:
            self.kill()
            raise

    def _read_line(self, timeout):
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
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
        self.stopped = True
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(f"{self.name}: still running {timeout} s after {sig.name}")
        expect(code == 0, f"{self.name}: exit status {code} after {sig.name}; stderr: {self.stderr_text()}")

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """The real redis-server on a free loopback port, persistence off; stopped by its pid."""

    def __init__(self, exe):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir.name, "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise CheckFailed("redis-server did not start")
                time.sleep(0.05)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


# ---- the RESP client side -------------------------------------------------------------------------


def encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    """A raw RESP connection that reads whole replies (as bytes, exactly as sent)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise CheckFailed(f"connection closed in the middle of a reply; have {self.buf[:200]!r}")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def reply(self):
        line = self._line()
        kind = line[:1]
        if kind in (b"+", b"-", b":"):
            return line
        if kind == b"$":
            n = int(line[1:-2])
            if n < 0:
                return line
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n + 2], self.buf[n + 2:]
            return line + data
        if kind == b"*":
            return line + b"".join(self.reply() for _ in range(int(line[1:-2])))
        raise CheckFailed(f"not a RESP reply: {line!r}")

    def call(self, *args):
        self.send(encode(*args))
        return self.reply()

    def at_eof(self):
        """True if the server closes the connection (with nothing more to read) within the timeout."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def bulk(data):
    data = data if isinstance(data, bytes) else data.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


# ---- the checks -----------------------------------------------------------------------------------


def redis_cli(port, *args, stdin=None, raw=False):
    """Runs redis-cli against the server; returns (exit status, stdout). Not --raw: it prints as to a terminal."""
    cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)] + (["--raw"] if raw else ["--no-raw"]) + list(args)
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=IO_TIMEOUT)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def check_redis_cli(port):
    """Plain commands through redis-cli, and what it prints for their replies."""
    cases = [
        (["PING"], "PONG"),
        (["SET", "greeting", "hello world"], "OK"),
        (["GET", "greeting"], '"hello world"'),
        (["GET", "missing"], "(nil)"),
        (["ECHO", "echo me"], '"echo me"'),
        (["SET", "counter", "10"], "OK"),
        (["INCR", "counter"], "(integer) 11"),
        (["INCRBY", "counter", "-21"], "(integer) -10"),
        (["DECR", "counter"], "(integer) -11"),
        (["INCR", "greeting"], "(error) ERR value is not an integer or out of range"),
        (["MSET", "k1", "v1", "k2", "v2"], "OK"),
        (["MGET", "k1", "nope", "k2"], '1) "v1"\n2) (nil)\n3) "v2"'),
        (["EXISTS", "k1", "k2", "nope", "k1"], "(integer) 3"),
        (["DEL", "k1", "nope"], "(integer) 1"),
        (["TTL", "k2"], "(integer) -1"),
        (["TTL", "nope"], "(integer) -2"),
        (["EXPIRE", "k2", "100"], "(integer) 1"),
        (["TTL", "k2"], "(integer) 100"),
        (["SET", "tmp", "x", "EX", "50"], "OK"),
        (["TTL", "tmp"], "(integer) 50"),
        (["SET", "tmp", "x", "EX", "0"], "(error) ERR invalid expire time in 'set' command"),
        (["SET", "tmp", "y", "NX"], "(nil)"),
        (["DBSIZE"], "(integer) 4"),
        (["GET"], "(error) ERR wrong number of arguments for 'get' command"),
        (["FROB", "a", "b"], "(error) ERR unknown command 'FROB', with args beginning with: 'a' 'b' "),
        (["FLUSHALL"], "OK"),
        (["DBSIZE"], "(integer) 0"),
    ]
    for args, want in cases:
        code, out = redis_cli(port, *args)
        expect(code == 0 and out == want + "\n",
               f"redis-cli {' '.join(args)}: exit {code}, printed {out!r}, expected {want + chr(10)!r}")
    code, out = redis_cli(port, "GET", "missing", raw=True)
    expect(out == "\n", f"redis-cli --raw GET missing printed {out!r}")


def check_pipe(port):
    """`redis-cli --pipe`: mass insertion, as Redis's documentation shows it."""
    n = 5000
    data = b"".join(encode("SET", f"pipe:{i}", f"value {i}") for i in range(n))
    data += b"".join(encode("INCR", "pipe:count") for _ in range(n))
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--pipe"], input=data,
                       capture_output=True, timeout=IO_TIMEOUT * 3)
    out = r.stdout.decode()
    expect(r.returncode == 0 and f"errors: 0, replies: {2 * n}" in out,
           f"redis-cli --pipe: exit {r.returncode}, output {out!r} {r.stderr!r}")
    expect(redis_cli(port, "GET", "pipe:count")[1] == f'"{n}"\n', "the pipe's INCRs did not all count")
    expect(redis_cli(port, "GET", "pipe:4321")[1] == '"value 4321"\n', "GET of a piped key")
    expect(redis_cli(port, "DBSIZE")[1] == f"(integer) {n + 1}\n", "DBSIZE after the pipe")


def check_raw_pipelining(port):
    c = Conn(port)
    # 2000 commands in one write, the replies in order.
    out = b"".join(encode("SET", f"p{i}", i) + encode("GET", f"p{i}") + encode("INCR", "pc") for i in range(2000))
    c.send(out)
    for i in range(2000):
        expect(c.reply() == b"+OK\r\n", f"pipelined SET {i}")
        expect(c.reply() == bulk(str(i)), f"pipelined GET {i}")
        expect(c.reply() == b":%d\r\n" % (i + 1), f"pipelined INCR {i}")
    # The same commands trickled in small pieces, cut anywhere.
    data = encode("SET", "split", "a\r\nb") + b"GET split\r\n" + encode("MGET", "split", "none")
    for i in range(0, len(data), 3):
        c.send(data[i:i + 3])
        time.sleep(0.002)
    expect(c.reply() == b"+OK\r\n", "split SET")
    expect(c.reply() == bulk("a\r\nb"), "split inline GET")
    expect(c.reply() == b"*2\r\n" + bulk("a\r\nb") + b"$-1\r\n", "split MGET")
    # Inline commands, as typed into telnet.
    c.send(b"PING\r\nset telnet 'typed value'\r\nget telnet\r\n\r\necho \"a\\tb\"\n")
    expect(c.reply() == b"+PONG\r\n", "inline PING")
    expect(c.reply() == b"+OK\r\n", "inline SET")
    expect(c.reply() == bulk("typed value"), "inline GET")
    expect(c.reply() == bulk("a\tb"), "inline ECHO with an escape")
    # A value of 4 MiB, sent in pieces, read back whole.
    big = bytes(range(256)) * (16 * 1024)
    msg = encode("SET", "big", big)
    for i in range(0, len(msg), 100_000):
        c.send(msg[i:i + 100_000])
    expect(c.reply() == b"+OK\r\n", "SET of 4 MiB")
    expect(c.call("GET", "big") == bulk(big), "GET of 4 MiB")
    expect(c.call("DEL", "big") == b":1\r\n", "DEL big")
    c.close()


def check_expiry(port):
    c = Conn(port)
    expect(c.call("SET", "short", "v", "PX", "100") == b"+OK\r\n", "SET PX")
    expect(c.call("GET", "short") == bulk("v"), "GET before expiry")
    time.sleep(0.3)
    expect(c.call("GET", "short") == b"$-1\r\n", "GET after expiry (lazy)")
    expect(c.call("TTL", "short") == b":-2\r\n", "TTL after expiry")
    # Keys nobody reads again go too: the active sweep (every 100 ms) reclaims them.
    expect(c.call("FLUSHALL") == b"+OK\r\n", "FLUSHALL")
    c.send(b"".join(encode("SET", f"vol{i}", "v", "PX", "50") for i in range(500)))
    for _ in range(500):
        expect(c.reply() == b"+OK\r\n", "SET PX 50")
    expect(c.call("SET", "stays", "v") == b"+OK\r\n", "SET stays")
    deadline = time.monotonic() + 5.0
    size = None
    while time.monotonic() < deadline:
        size = c.call("DBSIZE")
        if size == b":1\r\n":
            break
        time.sleep(0.1)
    expect(size == b":1\r\n", f"expired keys not swept within 5 s: DBSIZE {size!r}")
    c.close()


def check_concurrent(port):
    """Many clients at once (on several workers with --threads): every INCR counts."""
    clients, increments = 16, 300
    errors = []

    def worker(k):
        try:
            c = Conn(port)
            for i in range(increments):
                c.send(encode("INCR", "shared") + encode("SET", f"c{k}", i))
                r1, r2 = c.reply(), c.reply()
                if not r1.startswith(b":") or r2 != b"+OK\r\n":
                    errors.append((r1, r2))
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 3)
    expect(not errors, f"concurrent clients: {errors[:3]}")
    c = Conn(port)
    expect(c.call("GET", "shared") == bulk(str(clients * increments)), "concurrent INCRs lost some")
    c.close()


def check_malformed(port):
    """A malformed request gets an error reply and its connection is closed; other clients go on."""
    keeper = Conn(port)
    expect(keeper.call("SET", "keeper", "1") == b"+OK\r\n", "the good client")
    cases = [
        (b"*1\r\n$-7\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$536870913\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$99999999999999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*2000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*1\r\n$4\r\nPINGxx\r\n", b"-ERR Protocol error: expected CRLF after bulk\r\n"),
        (b'echo "open\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"x" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
        (b"*1\r\n$" + b"9" * 70000, b"-ERR Protocol error: too big bulk count string\r\n"),
    ]
    for i, (bad, want) in enumerate(cases):
        c = Conn(port)
        c.send(encode("PING") + bad)
        expect(c.reply() == b"+PONG\r\n", f"malformed case {i}: the command before it")
        got = c.reply()
        expect(got == want, f"malformed case {i} ({bad[:30]!r}): {got!r}, expected {want!r}")
        expect(c.at_eof(), f"malformed case {i}: the connection stays open")
        c.close()
        expect(keeper.call("INCR", "keeper") == b":%d\r\n" % (i + 2), f"the good client after case {i}")
    # A client that vanishes in the middle of a command, and one that claims a big value and
    # never sends it, do not disturb the others.
    c = Conn(port)
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$400000000\r\nabc")
    c.close()
    lurker = Conn(port)
    lurker.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n")
    expect(keeper.call("GET", "keeper") == bulk(str(len(cases) + 1)), "the good client at the end")
    expect(keeper.call("QUIT") == b"+OK\r\n", "QUIT")
    expect(keeper.at_eof(), "QUIT did not close the connection")
    keeper.close()
    lurker.close()


# Raw commands whose replies must equal redis-server's byte for byte. (Not a multibulk count over
# 1M: Redis accepts up to 2^31 - 1 arguments, kv_server refuses more than 1M; see docs/kv_server.md.)
COMPARE = [
    ["FLUSHALL"], ["PING"], ["PING", "x"], ["PING", "a", "b"], ["ECHO"], ["SET", "k", "v"], ["GET", "k"],
    ["SET", "k", "w", "NX"], ["SET", "k", "w", "XX", "GET"], ["SET", "k", "v", "EX", "0"],
    ["SET", "k", "v", "EX", "x"], ["SET", "k", "v", "EX"], ["SET", "k", "v", "EX", "10", "PX", "5"],
    ["SET", "k", "v", "KEEPTTL", "EX", "1"], ["SET", "k", "v", "NX", "XX"], ["SET", "k", "v", "BOGUS"],
    ["SET", "k", "v", "EX", "9223372036854775"], ["SET", "k", "v", "PX", "9223372036854775807"],
    ["SET", "k", "v", "EX", "5", "EX", "7"], ["TTL", "k"], ["PTTL", "nokey"], ["SET", "n", "10"], ["INCR", "n"],
    ["INCRBY", "n", "x"], ["DECRBY", "n", "-9223372036854775808"], ["SET", "m", "9223372036854775807"],
    ["INCR", "m"], ["INCR", "k"], ["INCRBY", "n", "9223372036854775808"], ["MSET", "a", "1", "b"],
    ["MSET", "a", "1", "b", "2"], ["MGET", "a", "zz", "b"], ["DEL", "a", "zz"], ["EXISTS", "b", "b", "zz"],
    ["EXPIRE", "b", "5", "NX", "XX"], ["EXPIRE", "b", "5", "GT", "LT"], ["EXPIRE", "b", "5", "SOON"],
    ["EXPIRE", "b", "9223372036854775807"], ["PEXPIRE", "b", "9223372036854775807"], ["EXPIRE", "b", "x"],
    ["EXPIRE", "b", "10", "gt"], ["EXPIRE", "b", "10"], ["EXPIRE", "b", "20", "gt"], ["TTL", "b"],
    ["PERSIST", "b"], ["PERSIST", "b"], ["EXPIRE", "b", "-1"], ["EXISTS", "b"], ["DBSIZE"], ["DBSIZE", "x"],
    ["FLUSHALL", "x"], ["FLUSHALL", "ASYNC", "x"], ["SELECT", "0"], ["SELECT", "x"], ["FOO"],
    ["foo", "a", "b c"], ["nope", "x" * 200, "more"], ["GET"], ["get", "a", "b"], ["CONFIG", "GET"],
    ["CONFIG", "GET", "appendonly"], ["CONFIG", "GET", "save"], ["SET", "", ""], ["GET", ""], ["INCR", "neg"],
    ["DECR", "neg"], ["SET", "z", "007"], ["INCR", "z"], ["SET", "z", " 1"], ["INCR", "z"],
    ["SET", "x", "v", "GET"], ["SET", "x", "w", "NX", "GET"], ["SET", "y", "1", "px", "100000"], ["TTL", "y"],
    ["SET", "bin", b"\x00\xff\r\n"], ["GET", "bin"], ["INCRBY", "n", "+5"], ["INCRBY", "n", "05"],
]
# The string and keyspace commands beyond the basics, and the corner cases of EXPIRE's options and
# time checks, SELECT's range and the arguments echoed in errors (NULs cut them, CR/LF are trimmed
# off the ends and blanked inside). Only replies that do not depend on hash order: KEYS and SCAN
# match at most one key here. No command name with a NUL after a real command's name ("GET\0x"):
# redis-server's reply to those is not deterministic (see check_nul_in_name).
COMPARE += [
    ["FLUSHALL"], ["SET", "k", "v"], ["EXPIRE", "k", "200", "XX", "LT"], ["EXPIRE", "k", "100"],
    ["EXPIRE", "k", "50", "XX", "GT"], ["EXPIRE", "k", "150", "GT", "XX"], ["EXPIRE", "k", "120", "LT", "XX"],
    ["TTL", "k"], ["EXPIRE", "k", "9223370399119966"], ["PEXPIRE", "k", "9223370399119966000"],
    ["EXPIRE", "k", "x", "NX", "XX"], ["EXPIRE", "k", "x", "FOO"], ["EXPIRE", "k", "-9223372036854775808"],
    ["EXPIRE", "k", "1", "nx\x00zz", "xx"], ["EXPIRE", "k", "1", "F\x00O"], ["EXPIRE", "k", "1", "F\r\n"],
    ["SELECT", "2147483648"], ["SELECT", "-2147483649"], ["SELECT", "-1"], ["FOO\x00GET", "a"],
    ["FOO\r\n", "a\r\n\x00b", "c"], ["CONFIG", "\r\nx\x00y"], ["SET", "k", "v", "nx\x00zz"],
    ["SET", "s", "Hello World"], ["GETRANGE", "s", "0", "3"], ["GETRANGE", "s", "-3", "-1"],
    ["GETRANGE", "s", "0", "-1"], ["GETRANGE", "s", "10", "100"], ["GETRANGE", "s", "5", "3"],
    ["GETRANGE", "s", "-100", "2"], ["GETRANGE", "s", "-1", "-100"], ["GETRANGE", "nokey", "0", "1"],
    ["GETRANGE", "s", "x", "1"], ["GETRANGE", "s", "-9223372036854775808", "9223372036854775807"],
    ["SETRANGE", "s", "6", "Redis"], ["SETRANGE", "s", "-1", "x"], ["SETRANGE", "n2", "5", "ab"], ["GET", "n2"],
    ["SETRANGE", "n3", "5", ""], ["EXISTS", "n3"], ["SETRANGE", "s", "536870912", "x"],
    ["SETRANGE", "s", "536870911", ""], ["SETRANGE", "s", "x", "x"], ["STRLEN", "s"], ["STRLEN", "nokey"],
    ["APPEND", "s", "!!"], ["APPEND", "new", "ab"], ["GETDEL", "new"], ["GETDEL", "new"], ["GETSET", "s", "v2"],
    ["GETSET", "nokey2", "v"], ["SETNX", "nokey2", "x"], ["SETNX", "nokey3", "x"], ["SETEX", "e", "0", "v"],
    ["SETEX", "e", "x", "v"], ["SETEX", "e", "10", "v"], ["TTL", "e"], ["PSETEX", "e", "0", "v"],
    ["PSETEX", "e", "100000", "v"], ["SETEX", "e", "9223370399119966", "v"], ["PSETEX", "e", "9223372036854775807", "v"],
    ["SETEX", "e"], ["SET", "e", "v", "EXAT", "9223370399119966"], ["SET", "e", "v", "PXAT", "9223372036854775807"],
    ["SET", "e", "v", "EXAT", "9223372036854776"], ["SET", "e", "v", "EXAT", "1"], ["EXISTS", "e"],
    ["SET", "e", "v", "PXAT", "0"], ["SET", "e", "v", "EXAT", "4000000000"], ["EXPIRETIME", "e"],
    ["PEXPIRETIME", "e"], ["EXPIRETIME", "nokey"], ["EXPIRETIME", "s"], ["SET", "e", "v", "EX", "10", "EXAT", "5"],
    ["SET", "e", "v", "EXAT", "5", "KEEPTTL"], ["SET", "e", "v", "PXAT", "1", "GET"], ["EXISTS", "e"],
    ["MSETNX", "a", "1", "b", "2"], ["MSETNX", "a", "1", "c", "2"], ["MSETNX", "a", "1", "c"], ["MGET", "a", "b", "c"],
    ["TYPE", "a"], ["TYPE", "nokey"], ["EXPIREAT", "a", "4000000000"], ["EXPIREAT", "a", "4000000001", "XX", "GT"],
    ["EXPIREAT", "a", "3000000001", "GT"], ["EXPIREAT", "a", "3000000001", "LT", "XX"], ["PEXPIRETIME", "a"],
    ["PEXPIREAT", "a", "4000000000000"], ["EXPIRETIME", "a"], ["EXPIREAT", "a", "9223372036854776"],
    ["EXPIREAT", "a", "-9223372036854775808"], ["EXPIREAT", "b", "-9223372036854775"], ["EXISTS", "b"],
    ["GETEX", "s"], ["GETEX", "s", "EX", "100"], ["TTL", "s"], ["GETEX", "s", "PERSIST"], ["TTL", "s"],
    ["GETEX", "s", "PX", "0"], ["GETEX", "s", "EX", "10", "PX", "5"], ["GETEX", "s", "PERSIST", "EX", "5"],
    ["GETEX", "s", "FOO"], ["GETEX", "nokey", "EX", "x"], ["GETEX", "s", "EX"], ["GETEX", "s", "NX"],
    ["GETEX", "s", "EXAT", "1"], ["EXISTS", "s"], ["SET", "f", "10.5"], ["INCRBYFLOAT", "f", "0.1"],
    ["INCRBYFLOAT", "f", "5.0e3"], ["INCRBYFLOAT", "f", "1e308"], ["INCRBYFLOAT", "g", "3"],
    ["INCRBYFLOAT", "g", "abc"], ["INCRBYFLOAT", "g", "inf"], ["INCRBYFLOAT", "g", " 1"],
    ["INCRBYFLOAT", "g", "0x10"], ["INCRBYFLOAT", "g", "nan"], ["INCRBYFLOAT", "g", "1\x00x"],
    ["INCRBYFLOAT", "g", "-19"], ["INCRBYFLOAT", "g", "1.23456789012345678901"], ["INCRBYFLOAT", "g", "-1e400"],
    ["INCRBYFLOAT", "k", "1"], ["SET", "h", "1.5e1"], ["INCRBYFLOAT", "h", "0"], ["FLUSHALL"],
    ["MSET", "a", "1", "b", "2"], ["EXPIRE", "b", "100"], ["RENAME", "a", "x"], ["RENAME", "nokey", "y"],
    ["RENAME", "x", "x"], ["RENAMENX", "x", "b"], ["RENAMENX", "x", "c"], ["RENAMENX", "nokey", "c"],
    ["RENAMENX", "c", "c"], ["RENAME", "b", "c"], ["TTL", "c"], ["COPY", "c", "d"], ["TTL", "d"], ["COPY", "c", "d"],
    ["COPY", "c", "d", "REPLACE"], ["COPY", "c", "d", "DB", "0"], ["COPY", "c", "d", "DB", "x"],
    ["COPY", "c", "d", "DB"], ["COPY", "c", "d", "FOO"], ["COPY", "c", "c"], ["COPY", "nokey", "c"],
    ["COPY", "c", "d", "DB", "-1"], ["COPY", "c", "d", "DB", "2147483648"], ["RANDOMKEY", "x"],
    ["KEYS", "[^cd]*"], ["KEYS", "\\d"], ["KEYS", "[a-"], ["KEYS", "[]"], ["KEYS", "[c]"], ["KEYS", "[b-c]"],
    ["SCAN", "x"], ["SCAN", "0", "COUNT", "0"], ["SCAN", "0", "COUNT", "x"], ["SCAN", "0", "MATCH"],
    ["SCAN", "0", "FOO", "1"], ["SCAN", "0", "TYPE", "list"], ["SCAN", "0", "MATCH", "d", "COUNT", "1000"],
    ["SCAN", "0", "TYPE", "STRING", "MATCH", "c", "COUNT", "100"], ["SCAN", "18446744073709551616"],
    ["HELLO", "1"], ["HELLO", "x"], ["HELLO", "4", "FOO"], ["HELLO", "2", "FOO"], ["HELLO", "2", "AUTH", "bob", "x"],
    ["HELLO", "2", "SETNAME", "my name"], ["HELLO", "2", "AUTH", "default"], ["HELLO", "2", "SETNAME"],
    ["INFO", "a", "b"], ["FLUSHALL"], ["RANDOMKEY"], ["SET", "only", "1"], ["RANDOMKEY"], ["KEYS", "*"],
    ["SCAN", "0"], ["INFO", "keyspace"], ["EXPIRE", "only", "100"], ["INFO", "KEYSPACE"],
]
COMPARE_INLINE = [b"PING\r\n", b"set q \"a b\\x41\"\r\n", b"get q\r\n", b"\r\n  PING   x\r\n", b"GET\r\n",
                  b"ECHO a\x0bb\x0cc\r\n", b"ECHO \x0b\x0c a\r\n", b"ECHO \"a\"\x0b\r\n"]
COMPARE_FATAL = [b"*1\r\n$-7\r\n", b"*1\r\n$536870913\r\n", b"*x\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n",
                 b'echo "open\r\n']


def parse_reply(data):
    """A RESP2 reply (bytes) as Python values: arrays as lists, integers as ints, the rest as bytes."""
    def one(pos):
        end = data.index(b"\r\n", pos)
        kind, text = data[pos:pos + 1], data[pos + 1:end]
        if kind == b"*":
            items, pos = [], end + 2
            for _ in range(int(text)):
                item, pos = one(pos)
                items.append(item)
            return items, pos
        if kind == b":":
            return int(text), end + 2
        if kind == b"$":
            n = int(text)
            return (None, end + 2) if n < 0 else (data[end + 2:end + 2 + n], end + 4 + n)
        return data[pos:end], end + 2
    return one(0)[0]


def hello_shape(reply):
    """HELLO's map with the values that name the server blanked: server, version, id."""
    items = parse_reply(reply)
    if not isinstance(items, list):
        return items
    fields = dict(zip(items[0::2], items[1::2]))
    for name in (b"server", b"version"):
        if isinstance(fields.get(name), bytes):
            fields[name] = b"?"
    if isinstance(fields.get(b"id"), int):
        fields[b"id"] = 0
    return list(fields.items())


# Replies that name the server (HELLO's server, version and client id; INFO's fields): compared by
# their shape only.
COMPARE_SHAPE = [["HELLO"], ["HELLO", "2"], ["hello", "2", "auth", "default", "secret", "setname", "tool"]]


def info_shape(reply):
    """INFO server: the section header, and every line a field:value pair."""
    text = parse_reply(reply).decode()
    lines = text.split("\r\n")
    return lines[0], all(re.fullmatch(r"[a-z_0-9]+:.*", line) for line in lines[1:-1]), lines[-1] == ""


def transcript(port):
    c = Conn(port)
    out = [c.call(*args) for args in COMPARE]
    out += [hello_shape(c.call(*args)) for args in COMPARE_SHAPE]
    out.append(info_shape(c.call("INFO", "server")))
    for raw in COMPARE_INLINE:
        c.send(raw)
        out.append(c.reply())
    c.close()
    for raw in COMPARE_FATAL:
        c = Conn(port)
        c.send(raw)
        out.append(c.reply())
        c.close()
    return out


def check_scan(port):
    """SCAN from 0 back to 0 returns every key exactly once while the keyspace does not change, with
    COUNT, MATCH and TYPE; KEYS finds the same."""
    c = Conn(port)
    expect(c.call("FLUSHALL") == b"+OK\r\n", "FLUSHALL")
    names = [f"scan:{i}" for i in range(600)]
    c.send(b"".join(encode("SET", k, "v") for k in names))
    for _ in names:
        expect(c.reply() == b"+OK\r\n", "SET for SCAN")
    for extra, want in (([], set(names)), (["MATCH", "scan:1*", "TYPE", "string"], {k for k in names if k.startswith("scan:1")}),
                        (["TYPE", "hash"], set())):
        cursor, seen, calls = b"0", [], 0
        while True:
            reply = parse_reply(c.call("SCAN", cursor, "COUNT", "10", *extra))
            cursor, keys = reply
            seen += [k.decode() for k in keys]
            calls += 1
            if cursor == b"0" or calls > 5000:
                break
        expect(cursor == b"0", f"SCAN {extra}: no end after {calls} calls")
        expect(len(seen) == len(set(seen)) and set(seen) == want,
               f"SCAN {extra}: {len(seen)} keys, {len(set(seen))} distinct, {len(want)} expected")
    keys = parse_reply(c.call("KEYS", "scan:1?"))
    expect(sorted(k.decode() for k in keys) == sorted(f"scan:1{i}" for i in range(10)), f"KEYS scan:1?: {keys}")
    expect(c.call("FLUSHALL") == b"+OK\r\n", "FLUSHALL")
    c.close()


def check_nul_in_name(port):
    """A command name with a NUL inside is unknown, even when a command's name comes before the NUL,
    whether it arrives whole or a byte at a time. Not compared with redis-server: it finds commands
    in a hash table (hashed over the whole name, with a seed drawn at each start) and compares the
    names with strcasecmp, which stops at the NUL. "GET\0x" runs GET when it falls into GET's
    bucket, about one redis-server start in a few hundred (1 in 400 measured), and is unknown otherwise."""
    c = Conn(port)
    expect(c.call("SET", "a", "value") == b"+OK\r\n", "SET a")
    want = b"-ERR unknown command 'GET', with args beginning with: 'a' \r\n"
    got = c.call("GET\x00x", "a")
    expect(got == want, f"GET\\0x a: {got!r}, expected {want!r}")
    for i, byte in enumerate(encode("get\x00", "a")):
        c.send(bytes([byte]))
        if i % 4 == 0:
            time.sleep(0.001)
    got = c.reply()
    want = b"-ERR unknown command 'get', with args beginning with: 'a' \r\n"
    expect(got == want, f"get\\0 a, a byte at a time: {got!r}, expected {want!r}")
    expect(c.call("GET", "a") == bulk("value"), "GET a after them")
    expect(c.call("DEL", "a") == b":1\r\n", "DEL a")
    c.close()


def check_against_redis(port):
    exe = shutil.which("redis-server")
    if not exe:
        print("note: redis-server not installed: the byte-for-byte comparison is skipped")
        return
    redis = RedisServer(exe)
    try:
        theirs = transcript(redis.port)
    finally:
        redis.close()
    ours = transcript(port)
    commands = COMPARE + COMPARE_SHAPE + [["INFO", "server"]] + COMPARE_INLINE + COMPARE_FATAL
    diffs = [(cmd, o, t) for cmd, o, t in zip(commands, ours, theirs) if o != t]
    if WRAPPER:
        # kv_server runs emulated on another architecture (aarch64 under qemu), whose long double
        # is not x86's 80-bit one: INCRBYFLOAT's digits are that architecture's, as a redis-server
        # built for it would print them, not those of the x86 redis-server compared with here.
        skipped = [d for d in diffs if d[0][0] == "INCRBYFLOAT"]
        diffs = [d for d in diffs if d[0][0] != "INCRBYFLOAT"]
        if skipped:
            print(f"note: {len(skipped)} INCRBYFLOAT replies differ in long double digits (emulated architecture)")
    expect(not diffs, "replies differ from redis-server's:\n" +
           "\n".join(f"  {str(cmd)[:60]}: ours {str(o)[:120]}, redis {str(t)[:120]}" for cmd, o, t in diffs))
    print(f"ok: {len(commands)} replies byte for byte as redis-server's")


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    if not shutil.which("redis-cli"):
        print("SKIP: redis-cli is not installed (Debian: apt-get install redis-tools)")
        return 77
    argv = [sys.argv[1], "--port", "0"] + sys.argv[2:]
    try:
        with Server(argv) as srv:
            for check in (check_redis_cli, check_pipe, check_raw_pipelining, check_expiry, check_concurrent,
                          check_malformed, check_scan, check_nul_in_name, check_against_redis):
                check(srv.port)
            # An idle connection open: SIGINT still stops the server, within its grace period.
            idle = Conn(srv.port)
            expect(idle.call("PING") == b"+PONG\r\n", "the idle client")
            start = time.monotonic()
            srv.stop(signal.SIGINT)
            took = time.monotonic() - start
            expect(took < 5.0, f"SIGINT took {took:.2f} s with an idle connection open")
            idle.close()
            expect(srv.stderr_text() == "", f"unexpected stderr: {srv.stderr_text()!r}")
    except (CheckFailed, OSError, subprocess.SubprocessError) as e:
        print(f"FAIL: kv_server {' '.join(sys.argv[2:])}: {type(e).__name__}: {e}")
        return 1
    print(f"ok: kv_server {' '.join(sys.argv[2:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
