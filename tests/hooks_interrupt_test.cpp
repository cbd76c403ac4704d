// The interrupted-connection rule (docs/hooks.md), without any server: a cancel, with_timeout or
// TimeoutScope that ends a hooked wait on a connected stream socket shuts the socket down; the
// socket's own SO_RCVTIMEO, listeners, UDP, pipes and epoll sets are left alone; keep_after_interrupt
// and SKEIN_HOOKS_KEEP_INTERRUPTED opt out. Run twice by Meson, the second time with the variable.
#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

// SKEIN_HOOKS_KEEP_INTERRUPTED=1: the whole process opted out, every connection is kept.
bool keep_all() {
  const char* env = std::getenv("SKEIN_HOOKS_KEEP_INTERRUPTED");
  return env && *env && std::strcmp(env, "0") != 0;
}

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A blocking TCP listener on 127.0.0.1 and a connection to it (client and accepted end), closed at
// the end of the scope. Made outside fibers: plain libc calls.
struct Tcp {
  Tcp() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    REQUIRE(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(listener, 8) == 0);
    REQUIRE(getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
    client = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    server = accept(listener, nullptr, nullptr);
    REQUIRE(server >= 0);
  }
  ~Tcp() {
    close(client);
    close(server);
    close(listener);
  }
  int listener = -1, client = -1, server = -1, port = 0;
};

// What the client end reads once the peer has sent "late": the reply a library would take for the
// answer to its next request if the connection were kept. "" for end of stream or an error.
std::string read_after_late_reply(const Tcp& t) {
  send(t.server, "late", 4, MSG_NOSIGNAL);  // may fail: the client may have shut down already
  char buf[16];
  const ssize_t n = recv(t.client, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
}

// True if the peer of `fd` sees the end of the stream (the hooks shut `fd` down) within a second.
bool peer_sees_eof(int peer) {
  pollfd p{peer, POLLIN, 0};
  if (poll(&p, 1, 1000) != 1) return false;
  char c;
  return recv(peer, &c, 1, MSG_DONTWAIT) == 0;
}

// Runs `wait` (a hooked call on t.client) in a fiber and cancels it after 20 ms.
template <class F>
int cancelled_errno(F wait) {
  int err = 0;
  skein::run([&] {
    auto t = skein::spawn([&] {
      wait();
      err = errno;
    });
    skein::sleep_for(20ms);
    t.cancel();
    try {
      t.join();
    } catch (const std::system_error&) {
    }
  });
  return err;
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE(
      "a read that Task::cancel interrupts shuts the TCP connection down: the late reply is never read") {
    Tcp t;
    char c;
    CHECK(cancelled_errno([&] { return read(t.client, &c, 1); }) == ECANCELED);
    if (keep_all()) {
      CHECK(read_after_late_reply(t) == "late");  // the old behaviour, by the process's choice
      return;
    }
    CHECK(peer_sees_eof(t.server));
    CHECK(read_after_late_reply(t) == "");
    CHECK(send(t.client, "x", 1, MSG_NOSIGNAL) == -1);
    CHECK(errno == EPIPE);
  }

  TEST_CASE("with_timeout and TimeoutScope interrupting recv, send and poll shut the connection down") {
    if (keep_all()) return;
    Tcp a, b, c;
    skein::run([&] {
      char ch;
      try {
        skein::with_timeout(30ms, [&] { return recv(a.client, &ch, 1, 0); });
      } catch (const std::system_error&) {
      }
      {
        // The peer never reads: the send fills both buffers, then waits until the scope ends it,
        // with part of the "request" sent.
        skein::TimeoutScope scope(50ms);
        const std::string big(8 << 20, 'x');
        const ssize_t n = send(b.client, big.data(), big.size(), MSG_NOSIGNAL);
        CHECK(n > 0);
        CHECK(n < static_cast<ssize_t>(big.size()));
      }
      {
        // poll reports the connection it cut as hung up, so the caller's read finds it closed.
        skein::TimeoutScope scope(30ms);
        pollfd p{c.client, POLLIN, 0};
        CHECK(poll(&p, 1, 5000) == 1);
        CHECK((p.revents & POLLHUP));
        CHECK(recv(c.client, &ch, 1, MSG_DONTWAIT) == 0);
      }
    });
    CHECK(read_after_late_reply(a) == "");
    CHECK(send(b.client, "x", 1, MSG_NOSIGNAL) == -1);
    CHECK(read_after_late_reply(c) == "");
  }

  TEST_CASE("the socket's own SO_RCVTIMEO (EAGAIN) and poll's own timeout leave the connection usable") {
    Tcp t;
    const timeval tv{0, 30'000};
    REQUIRE(setsockopt(t.client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    skein::run([&] {
      char c;
      CHECK(recv(t.client, &c, 1, 0) == -1);
      CHECK(errno == EAGAIN);
      pollfd p{t.client, POLLIN, 0};
      CHECK(poll(&p, 1, 30) == 0);
    });
    const timeval none{0, 0};  // the check below waits as long as the reply takes
    REQUIRE(setsockopt(t.client, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) == 0);
    CHECK(read_after_late_reply(t) == "late");
  }

  TEST_CASE("keep_after_interrupt(fd): an interrupted read leaves that connection as it was") {
    Tcp t, other;
    skein::hooks::keep_after_interrupt(t.client);
    char c;
    CHECK(cancelled_errno([&] { return read(t.client, &c, 1); }) == ECANCELED);
    CHECK(read_after_late_reply(t) == "late");
    CHECK(cancelled_errno([&] { return read(other.client, &c, 1); }) == ECANCELED);
    CHECK(read_after_late_reply(other) == (keep_all() ? "late" : ""));
    skein::hooks::keep_after_interrupt(t.client, false);
    CHECK(cancelled_errno([&] { return read(t.client, &c, 1); }) == ECANCELED);
    CHECK(read_after_late_reply(t) == (keep_all() ? "late" : ""));
  }

  TEST_CASE("an interrupted poll leaves its listener, UDP socket, pipe and epoll set alone") {
    Tcp t;
    const int udp = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in ua = loopback(0);
    socklen_t len = sizeof ua;
    REQUIRE(bind(udp, reinterpret_cast<sockaddr*>(&ua), sizeof ua) == 0);
    REQUIRE(getsockname(udp, reinterpret_cast<sockaddr*>(&ua), &len) == 0);
    int pipe_fds[2];
    REQUIRE(pipe(pipe_fds) == 0);
    Tcp in_epoll;
    const int ep = epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    REQUIRE(epoll_ctl(ep, EPOLL_CTL_ADD, in_epoll.client, &ev) == 0);
    pollfd p[4] = {
        {t.listener, POLLIN, 0}, {udp, POLLIN, 0}, {pipe_fds[0], POLLIN, 0}, {t.client, POLLIN, 0}};
    int polled = 0;
    const int poll_err = cancelled_errno([&] { polled = poll(p, 4, -1); });
    if (keep_all()) {
      CHECK(polled == -1);
      CHECK(poll_err == ECANCELED);
    } else {
      // Only the connection was cut, and poll reports it hung up.
      CHECK(polled == 1);
      CHECK(p[0].revents == 0);
      CHECK(p[1].revents == 0);
      CHECK(p[2].revents == 0);
      CHECK((p[3].revents & POLLHUP));
    }
    CHECK(cancelled_errno([&] {
            epoll_event out;
            return epoll_wait(ep, &out, 1, -1);
          }) == ECANCELED);
    // The listener still accepts.
    const int c2 = socket(AF_INET, SOCK_STREAM, 0);
    const sockaddr_in la = loopback(t.port);
    CHECK(connect(c2, reinterpret_cast<const sockaddr*>(&la), sizeof la) == 0);
    const int s2 = accept(t.listener, nullptr, nullptr);
    CHECK(s2 >= 0);
    close(s2);
    close(c2);
    // The datagram socket still receives, the pipe still carries data.
    CHECK(sendto(udp, "u", 1, 0, reinterpret_cast<const sockaddr*>(&ua), sizeof ua) == 1);
    char c = 0;
    CHECK(recv(udp, &c, 1, 0) == 1);
    CHECK(write(pipe_fds[1], "p", 1) == 1);
    CHECK(read(pipe_fds[0], &c, 1) == 1);
    CHECK(c == 'p');
    // The epoll set's members are the program's event loop, not one request: kept.
    CHECK(read_after_late_reply(in_epoll) == "late");
    // The connected stream socket the poll waited on is shut down.
    CHECK(read_after_late_reply(t) == (keep_all() ? "late" : ""));
    close(ep);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    close(udp);
  }

  TEST_CASE("an interrupted connect is aborted, not left to complete behind the caller's back") {
    // A listener whose accept queue is full (backlog 0, one connection not accepted) drops SYNs:
    // the next connect waits in SYN_SENT.
    const int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    REQUIRE(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(l, 0) == 0);
    REQUIRE(getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    const int first = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect(first, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    const int s = socket(AF_INET, SOCK_STREAM, 0);
    int err = 0;
    skein::run([&] {
      skein::TimeoutScope scope(50ms);
      CHECK(connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == -1);
      err = errno;
    });
    CHECK(err == ETIMEDOUT);
    tcp_info info{};
    len = sizeof info;
    REQUIRE(getsockopt(s, IPPROTO_TCP, TCP_INFO, &info, &len) == 0);
    CHECK(info.tcpi_state == (keep_all() ? TCP_SYN_SENT : TCP_CLOSE));
    close(s);
    close(first);
    close(l);
  }

  TEST_CASE("an interrupted read on a Unix stream socket shuts it down; the peer's late send fails") {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    char c;
    CHECK(cancelled_errno([&] { return read(sv[0], &c, 1); }) == ECANCELED);
    const ssize_t sent = send(sv[1], "late", 4, MSG_NOSIGNAL);
    const ssize_t got = recv(sv[0], &c, 1, MSG_DONTWAIT);
    if (keep_all()) {
      CHECK(sent == 4);
      CHECK(got == 1);
    } else {
      CHECK(sent == -1);
      CHECK(got == 0);
    }
    close(sv[0]);
    close(sv[1]);
  }
}

namespace {

// Keeps the worker busy without letting any other fiber run, for `d`.
void spin_for(std::chrono::milliseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
  }
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE("a reply that arrived before the scope's deadline is read, not cut off with the connection") {
    // The reply is in the socket before the deadline, but the fiber waiting for it is resumed only
    // after the deadline (its worker was busy): the read found its answer in time.
    Tcp t;
    ssize_t n = 0;
    char buf[16];
    skein::run([&] {
      auto reader = skein::spawn([&] {
        skein::TimeoutScope scope(100ms);
        n = read(t.client, buf, sizeof buf);
      });
      skein::sleep_for(10ms);
      REQUIRE(send(t.server, "reply", 5, MSG_NOSIGNAL) == 5);
      spin_for(150ms);
      reader.join();
    });
    CHECK(n == 5);
    CHECK(std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0) == "reply");
  }

  TEST_CASE("a poll whose descriptor was ready before the scope's deadline reports it, cutting nothing") {
    Tcp t;
    int r = 0;
    short revents = 0;
    skein::run([&] {
      auto poller = skein::spawn([&] {
        skein::TimeoutScope scope(100ms);
        pollfd p{t.client, POLLIN, 0};
        r = poll(&p, 1, 5000);
        revents = p.revents;
      });
      skein::sleep_for(10ms);
      REQUIRE(send(t.server, "reply", 5, MSG_NOSIGNAL) == 5);
      spin_for(150ms);
      poller.join();
    });
    CHECK(r == 1);
    CHECK(revents == POLLIN);
    char buf[16];
    CHECK(recv(t.client, buf, sizeof buf, MSG_DONTWAIT) == 5);
  }
}

TEST_SUITE("hooks") {
  TEST_CASE(
      "an interrupted poll leaves alone a connection that took the number of a descriptor closed meanwhile") {
    Tcp t;
    const int number = t.client;
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    int r = 0;
    skein::run([&] {
      auto poller = skein::spawn([&] {
        skein::TimeoutScope scope(60ms);
        pollfd p{number, POLLIN, 0};
        r = poll(&p, 1, 5000);
      });
      skein::sleep_for(10ms);
      // Another fiber closes the polled socket; a new connection gets its number.
      REQUIRE(dup2(sv[0], number) == number);
      poller.join();
    });
    CHECK(r == -1);
    CHECK(send(sv[1], "x", 1, MSG_NOSIGNAL) == 1);
    char c = 0;
    CHECK(recv(number, &c, 1, MSG_DONTWAIT) == 1);
    CHECK(c == 'x');
    close(sv[0]);
    close(sv[1]);
  }
}
