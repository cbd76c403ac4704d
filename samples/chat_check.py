#!/usr/bin/env python3
"""Checks samples/chat_server over loopback; the driver of its tests in `meson test --suite samples`.

    chat_check.py room       CHAT_SERVER [SERVER ARGS...]   three clients join, chat and leave
    chat_check.py slow       CHAT_SERVER [SERVER ARGS...]   a client that never reads is dropped
    chat_check.py many       CHAT_SERVER [SERVER ARGS...]   1,000 clients, one broadcast to all
    chat_check.py bad-input  CHAT_SERVER [SERVER ARGS...]   bad nicks, long lines, a full room

Each check starts the server with --port 0 (and the extra arguments, e.g. --threads 3), reads the
port from its 'listening on HOST:PORT' line, talks to it over 127.0.0.1 and stops it by its pid
with SIGINT, expecting exit status 0 and nothing on stderr; a server that does not exit is killed
and the check fails. Every read has a deadline, so nothing hangs. Nothing depends on timing: where
the server could legitimately drop a client for being slow, the test keeps the client's backlog
below the server's --queue by waiting for its lines before sending more. Exits 0 when the check
holds, 1 when it fails, 77 (skipped) if the file-descriptor limit cannot be raised for 'many'.
"""

import os
import re
import resource
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

WRAPPER = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
IO_TIMEOUT = 10.0
GREETING = "* welcome to skein chat; send your nick"
NICK_RULE = "use 1 to 32 letters, digits, '-', '_' or '.'"


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Server:
    """chat_server on a free port; a context manager that always stops it."""

    def __init__(self, exe, *args):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(WRAPPER + [exe, "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.stopped = False
        try:
            line = self._read_line(IO_TIMEOUT)
            m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
            expect(m, f"expected 'listening on 127.0.0.1:PORT', got {line!r}")
            self.port = int(m.group(1))
            expect(self.port != 0, "reported port 0, not the bound port")
        except BaseException:
            self.kill()
            raise

    def _read_line(self, timeout):
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while not data.endswith(b"\n"):
                if not sel.select(max(deadline - time.monotonic(), 0)):
                    raise CheckFailed(f"no 'listening on' line within {timeout} s")
                chunk = os.read(fd, 1)
                if not chunk:
                    raise CheckFailed(f"chat_server exited before listening: {self.stderr_text()}")
                data += chunk
        finally:
            sel.close()
        return data.decode("utf-8", "replace")

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGINT, timeout=10.0):
        """Signals the server by its pid; it must exit 0 within `timeout` s with nothing on stderr."""
        self.stopped = True
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(f"chat_server still running {timeout} s after {sig.name}")
        took = time.monotonic() - start
        expect(code == 0, f"exit status {code} after {sig.name}; stderr: {self.stderr_text()}")
        expect(self.stderr_text() == "", f"unexpected stderr: {self.stderr_text()!r}")
        return took

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


class Client:
    """A chat connection reading lines, each read bounded by a deadline."""

    def __init__(self, port, rcvbuf=None, name="client"):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window scale is agreed on in the handshake
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait for an ACK
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, text):
        self.sock.sendall(text.encode() + b"\n")

    def send_raw(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed(f"{self.name}: no {what} within {IO_TIMEOUT} s; have {len(self.buf)} bytes: "
                              f"{self.buf[:100]!r} ... {self.buf[-100:]!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            raise CheckFailed(f"{self.name}: no {what} within {IO_TIMEOUT} s; have {len(self.buf)} bytes: "
                              f"{self.buf[:100]!r} ... {self.buf[-100:]!r}")
        return chunk

    def line(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            chunk = self._fill(deadline, "line")
            if not chunk:
                raise CheckFailed(f"{self.name}: connection closed; have {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def expect(self, want):
        got = self.line()
        expect(got == want, f"{self.name}: expected {want!r}, got {got!r}")

    def expect_bytes(self, want):
        deadline = time.monotonic() + IO_TIMEOUT
        chunks, have = [self.buf], len(self.buf)
        while have < len(want):
            chunk = self._fill(deadline, f"{len(want)} bytes")
            expect(chunk, f"{self.name}: connection closed after {have} of {len(want)} bytes")
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        got, self.buf = data[:len(want)], data[len(want):]
        expect(got == want, f"{self.name}: expected {want[:100]!r}..., got {got[:100]!r}...")

    def rest_until_eof(self, timeout=IO_TIMEOUT):
        """Everything up to the end of the stream, as lines (a reset counts as the end)."""
        deadline = time.monotonic() + timeout
        chunks = [self.buf]  # (not bytes +=: a slow client's backlog comes in many small pieces)
        while True:
            try:
                chunk = self._fill(deadline, "end of stream")
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            chunks.append(chunk)
        data, self.buf = b"".join(chunks), b""
        text = data.decode("utf-8", "replace")
        expect(text == "" or text.endswith("\n"), f"{self.name}: stream ended in a partial line {text[-80:]!r}")
        return text.splitlines()

    def expect_eof(self):
        rest = self.rest_until_eof()
        expect(rest == [], f"{self.name}: expected the end of the stream, got {rest[:5]!r}")

    def join(self, nick, online=None):
        self.expect(GREETING)
        self.send(nick)
        welcome = self.line()
        m = re.fullmatch(rf"\* joined as {re.escape(nick)} \((\d+) online\)", welcome)
        expect(m, f"{self.name}: joining as {nick!r} got {welcome!r}")
        if online is not None:
            expect(int(m.group(1)) == online, f"{nick}: {welcome!r}, expected {online} online")
        self.name = nick
        return self

    def close(self):
        self.sock.close()


def member(port, nick, online=None, **kw):
    return Client(port, name=nick, **kw).join(nick, online)


# ---- (a) three clients -------------------------------------------------------------------------


def check_room(exe, args):
    with Server(exe, *args) as srv:
        port = srv.port
        alice = member(port, "alice", 1)
        bob = member(port, "bob", 2)
        alice.expect("* bob joined")
        carol = member(port, "carol", 3)
        alice.expect("* carol joined")
        bob.expect("* carol joined")

        alice.send("hello, everyone")
        bob.expect("alice: hello, everyone")
        carol.expect("alice: hello, everyone")
        # alice's next line is bob's: her own never came back to her.
        bob.send("hi alice")
        alice.expect("bob: hi alice")
        carol.expect("bob: hi alice")
        # CRLF endings, empty lines (ignored), a tab kept, control characters shown as '?'.
        carol.send_raw(b"crlf works\r\n\n\r\ntab\there \x1b[31mred\x07\n")
        for c in (alice, bob):
            c.expect("carol: crlf works")
            c.expect("carol: tab\there ?[31mred?")
        # A burst of lines in one write (fewer than --queue, so no reader can be too slow for it)
        # reaches the others whole and in order, everyone seeing the same interleaving.
        alice.send_raw(b"".join(f"burst {i}\n".encode() for i in range(40)))
        bob.send("between")
        for c in (bob, carol):
            got = [c.line() for _ in range(40 + (c is carol))]
            alice_lines = [g for g in got if g.startswith("alice: ")]
            expect(alice_lines == [f"alice: burst {i}" for i in range(40)], f"{c.name}: burst {got!r}")
        got = [alice.line()]
        expect(got == ["bob: between"], f"alice: {got!r}")

        carol.close()
        alice.expect("* carol left")
        bob.expect("* carol left")
        # The nick is free again.
        carol2 = member(port, "carol", 3)
        alice.expect("* carol joined")
        bob.expect("* carol joined")
        carol2.send("back")
        alice.expect("carol: back")
        bob.expect("carol: back")
        # A final line without a line ending, then the hang-up.
        carol2.send_raw(b"no newline")
        carol2.sock.shutdown(socket.SHUT_WR)
        for c in (alice, bob):
            c.expect("carol: no newline")
            c.expect("* carol left")
        carol2.close()
        # Ctrl-C with clients connected: out within the grace period (1 s) and a bit.
        took = srv.stop(signal.SIGINT)
        expect(took < 5.0, f"SIGINT took {took:.2f} s with clients connected")
        for c in (alice, bob):
            c.rest_until_eof()
            c.close()
        print(f"room: 3 clients chatted; SIGINT with 2 connected took {took:.2f} s")


# ---- (b) a slow client -------------------------------------------------------------------------


def check_slow(exe, args):
    queue, batch, pad = 16, 8, "x" * 80
    with Server(exe, "--queue", str(queue), *args) as srv:
        port = srv.port
        normal = member(port, "normal", 1)
        flood = member(port, "flood", 2)
        normal.expect("* flood joined")
        # A tiny receive buffer, and it never reads after its welcome: its queue must fill.
        slow = Client(port, rcvbuf=1024, name="slow").join("slow", 3)
        normal.expect("* slow joined")
        flood.expect("* slow joined")

        # flood sends `batch` lines at a time and waits until normal has them all, so normal never
        # has more than `batch` (< queue) lines outstanding: it cannot be too slow, whatever the
        # scheduling. slow's backlog only grows, until the server drops it.
        sent, dropped_at, worst = 0, None, 0.0
        start = time.monotonic()
        while dropped_at is None or sent < dropped_at + 5 * batch:
            expect(sent < 200_000 and time.monotonic() - start < 25,
                   f"slow was not dropped after {sent} lines in {time.monotonic() - start:.1f} s")
            t0 = time.monotonic()
            flood.send_raw(b"".join(f"line {sent + i:06d} {pad}\n".encode() for i in range(batch)))
            want = [f"flood: line {sent + i:06d} {pad}" for i in range(batch)]
            while want:
                got = normal.line()
                if got == "* slow left (too slow)" and dropped_at is None:
                    dropped_at = sent
                    continue
                expect(got == want[0], f"normal: expected {want[0]!r}, got {got!r}")
                want.pop(0)
            worst = max(worst, time.monotonic() - t0)
            sent += batch
        flood_took = time.monotonic() - start
        flood.expect("* slow left (too slow)")
        expect(worst < 2.0, f"normal waited {worst:.2f} s for a batch: the slow client held it up")

        # slow now reads: a prefix of flood's lines, whole, then the farewell, then the end.
        rest = slow.rest_until_eof()
        expect(rest and rest[-1] == "* you were too slow; disconnecting",
               f"slow: the last lines were {rest[-3:]!r}, not the farewell")
        lines = rest[:-1]
        expect(lines == [f"flood: line {i:06d} {pad}" for i in range(len(lines))],
               f"slow: not a prefix of flood's lines: {[x[:30] for x in lines[:3]]} ... "
               f"{[x[:30] for x in lines[-3:]]}")
        # The room goes on without it.
        normal.send("still here")
        flood.expect("normal: still here")
        flood.send("me too")
        normal.expect("flood: me too")
        for c in (normal, flood, slow):
            c.close()
        srv.stop()
        print(f"slow: dropped after {dropped_at} of flood's lines (it had received {len(lines)}); "
              f"{sent} lines in {flood_took:.2f} s; normal's slowest batch of {batch}: {worst * 1000:.1f} ms")


# ---- (c) 1,000 clients -------------------------------------------------------------------------


def raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise Skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def check_many(exe, args):
    n = 1000
    raise_fd_limit(n + 200)  # the server inherits it, and raises its own as needed
    start = time.monotonic()
    with Server(exe, "--max-clients", str(n), "--queue", "2048", *args) as srv:
        port = srv.port
        # All connect, then all send their nicks at once: the room takes the joins in whatever
        # order they come, and each welcome says where in that order its client came. The queues
        # (2048) hold more than all the announcements, so nobody can be dropped for being slow.
        clients = [Client(port, name=f"u{i:04d}") for i in range(n)]
        for c in clients:
            c.send(c.name)
        position = {}
        for c in clients:
            c.expect(GREETING)
            welcome = c.line()
            m = re.fullmatch(rf"\* joined as {c.name} \((\d+) online\)", welcome)
            expect(m, f"{c.name}: {welcome!r}")
            position[c.name] = int(m.group(1))
        expect(sorted(position.values()) == list(range(1, n + 1)), "the welcomes do not count 1 .. n")
        order = sorted(clients, key=lambda c: position[c.name])  # in the order they joined
        joined = time.monotonic() - start
        extra = Client(port, name="extra")
        extra.expect(GREETING)
        extra.send("one-too-many")
        extra.expect(f"* room is full ({n} clients); try again later")
        extra.expect_eof()
        extra.close()

        # Each has the joins of those after it, in order; read them all first, so that what is
        # timed below is the broadcast alone.
        for k, c in enumerate(order):
            c.expect_bytes("".join(f"* {o.name} joined\n" for o in order[k + 1:]).encode())
        sender = order[0]
        want = f"{sender.name}: hello, all of you\n".encode()
        pending = {c.sock.fileno(): c for c in order[1:]}
        sel = selectors.DefaultSelector()
        for c in pending.values():
            expect(c.buf == b"", f"{c.name}: unexpected {c.buf[:100]!r}")
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, c)
        t0 = time.monotonic()
        sender.send("hello, all of you")
        deadline = t0 + 20
        while pending:
            left = deadline - time.monotonic()
            expect(left > 0, f"{len(pending)} of {n - 1} clients did not get the broadcast within 20 s")
            for key, _ in sel.select(left):
                c = key.data
                chunk = c.sock.recv(65536)
                expect(chunk, f"{c.name}: connection closed before the broadcast")
                c.buf += chunk
                if len(c.buf) >= len(want):
                    expect(c.buf == want, f"{c.name}: expected {want!r}, got {c.buf[:100]!r}")
                    sel.unregister(c.sock)
                    del pending[c.sock.fileno()]
        broadcast = time.monotonic() - t0
        sel.close()
        for c in order[1:]:
            c.sock.setblocking(True)
            c.sock.settimeout(IO_TIMEOUT)
            c.buf = b""
        # The sender did not get its own line: after the joins, its next one is the reply.
        order[-1].send("and hello back")
        sender.expect(f"{order[-1].name}: and hello back")
        order[1].expect(f"{order[-1].name}: and hello back")

        for c in clients:
            c.close()
        took = srv.stop()
    total = time.monotonic() - start
    print(f"many: {n} clients joined in {joined:.2f} s; one broadcast reached the other {n - 1} in "
          f"{broadcast * 1000:.1f} ms; SIGINT took {took:.2f} s; {total:.2f} s in all")


# ---- (d) bad input -----------------------------------------------------------------------------


def check_bad_input(exe, args):
    with Server(exe, "--max-line", "64", "--max-clients", "3", *args) as srv:
        port = srv.port
        alice = member(port, "alice", 1)

        # Invalid nicks get another try, three in all: empty, a space, too long, then a good one.
        c = Client(port, name="newcomer")
        c.expect(GREETING)
        c.send("")
        c.expect(f"* invalid nick '': {NICK_RULE}; try another")
        c.send("two words")
        c.expect(f"* invalid nick 'two words': {NICK_RULE}; try another")
        c.send("zed")
        c.expect("* joined as zed (2 online)")
        alice.expect("* zed joined")
        zed = c
        zed.name = "zed"

        # A taken nick: another try, and after the third the connection is closed.
        c = Client(port, name="copycat")
        c.expect(GREETING)
        c.send("alice")
        c.expect("* nick 'alice' is taken; try another")
        c.send("a" * 33)
        c.expect(f"* invalid nick '{'a' * 33}': {NICK_RULE}; try another")
        c.send("zed")
        c.expect("* nick 'zed' is taken; disconnecting")
        c.expect_eof()
        c.close()

        # A line of exactly --max-line bytes is fine; one more byte disconnects, and it is told.
        alice.send("y" * 64)
        zed.expect("alice: " + "y" * 64)
        zed.send("z" * 65)
        zed.expect("* line too long (max 64 bytes); disconnecting")
        zed.expect_eof()
        zed.close()
        alice.expect("* zed left (line too long)")
        # So does a flood with no line ending at all, and an over-long nick line.
        c = member(port, "nonl", 2)
        alice.expect("* nonl joined")
        c.send_raw(b"q" * 100_000)
        c.expect("* line too long (max 64 bytes); disconnecting")
        c.expect_eof()
        c.close()
        alice.expect("* nonl left (line too long)")
        c = Client(port, name="longnick")
        c.expect(GREETING)
        c.send("n" * 70)
        c.expect("* line too long (max 64 bytes); disconnecting")
        c.expect_eof()
        c.close()

        # Hanging up while choosing a nick, or halfway through a nick line, disturbs nobody.
        for data in (b"", b"half-a-ni"):
            c = Client(port, name="quitter")
            c.expect(GREETING)
            c.send_raw(data)
            c.close()

        # The room holds 3: the fourth is told and disconnected.
        b = member(port, "b", 2)
        alice.expect("* b joined")
        cc = member(port, "c", 3)
        alice.expect("* c joined")
        b.expect("* c joined")
        c = Client(port, name="fourth")
        c.expect(GREETING)
        c.send("d")
        c.expect("* room is full (3 clients); try again later")
        c.expect_eof()
        c.close()
        # Someone leaves: there is room again.
        cc.close()
        alice.expect("* c left")
        b.expect("* c left")
        d = member(port, "d", 3)
        alice.expect("* d joined")
        b.expect("* d joined")
        alice.send("all good")
        b.expect("alice: all good")
        d.expect("alice: all good")
        for c in (alice, b, d):
            c.close()
        srv.stop(signal.SIGTERM)
        print("bad-input: nick rules, duplicates, long lines and the room cap hold")


CHECKS = {"room": check_room, "slow": check_slow, "many": check_many, "bad-input": check_bad_input}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        CHECKS[sys.argv[1]](sys.argv[2], sys.argv[3:])
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
