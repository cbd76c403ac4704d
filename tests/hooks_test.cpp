// The hooks against libc's semantics: outside fibers and on non-blocking descriptors every call
// behaves as libc's; inside a fiber a blocking socket parks only the fiber, with errno, partial
// transfers, timeouts and cancellation as docs/hooks.md says.
#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

double seconds_since(skein::TimePoint start) {
  return std::chrono::duration<double>(skein::Clock::now() - start).count();
}

// A connected pair of blocking Unix stream sockets, closed at the end of the scope.
struct Pair {
  Pair() { REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == 0); }
  ~Pair() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  int fd[2];
};

int raw_getfl(int fd) {
  return static_cast<int>(syscall(SYS_fcntl, fd, F_GETFL));
}

// A blocking TCP listener on 127.0.0.1, some free port.
int tcp_listener(sockaddr_in& addr) {
  const int l = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(l >= 0);
  addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(listen(l, 16) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(l, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  return l;
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE("every call of the list is hooked, and describe() names them") {
    const auto calls = skein::hooks::hooked_calls();
    const char* off = std::getenv("SKEIN_HOOKS_DISABLE");
    for (const char* name :
         {"read",        "write",  "readv",      "writev", "recv",      "recvfrom",  "recvmsg",
          "send",        "sendto", "sendmsg",    "accept", "accept4",   "connect",   "close",
          "poll",        "select", "epoll_wait", "sleep",  "usleep",    "nanosleep", "clock_nanosleep",
          "getaddrinfo", "socket", "fcntl",      "ioctl",  "setsockopt"}) {
      CAPTURE(name);
      const bool disabled = off && std::string_view(off) == name;  // the second run turns off one
      CHECK(skein::hooks::is_hooked(name) == !disabled);
      CHECK((std::find(calls.begin(), calls.end(), name) != calls.end()) == !disabled);
    }
    CHECK_FALSE(skein::hooks::is_hooked("open"));
    const std::string line = skein::hooks::describe();
    CHECK(line.starts_with("skein hooks: "));
    MESSAGE(line);
  }

  TEST_CASE("SKEIN_HOOKS_DISABLE=sleep: sleep() blocks the thread, usleep() still parks the fiber") {
    const char* off = std::getenv("SKEIN_HOOKS_DISABLE");
    if (!off || std::string_view(off) != "sleep") return;  // the suite's second run sets it
    CHECK(skein::hooks::describe().ends_with("(off: sleep)"));
    skein::run([] {
      const auto start = skein::Clock::now();
      auto a = skein::spawn([] { return usleep(300'000); });
      auto b = skein::spawn([] { return usleep(300'000); });
      CHECK(a.join() == 0);
      CHECK(b.join() == 0);
      CHECK(seconds_since(start) < 0.55);  // one after the other: 0.6 s
    });
  }

  TEST_CASE("outside a fiber, a blocking socket is libc's: data, EOF, EAGAIN with MSG_DONTWAIT") {
    Pair p;
    char buf[16];
    CHECK(recv(p.fd[0], buf, sizeof buf, MSG_DONTWAIT) == -1);
    CHECK(errno == EAGAIN);
    CHECK(write(p.fd[1], "hello", 5) == 5);
    CHECK(read(p.fd[0], buf, sizeof buf) == 5);
    CHECK(std::string_view(buf, 5) == "hello");
    CHECK((raw_getfl(p.fd[0]) & O_NONBLOCK) == 0);  // nothing was changed behind the user's back
    CHECK(shutdown(p.fd[1], SHUT_WR) == 0);
    CHECK(read(p.fd[0], buf, sizeof buf) == 0);
    CHECK(read(-1, buf, 1) == -1);
    CHECK(errno == EBADF);
    CHECK(close(-1) == -1);
    CHECK(errno == EBADF);
    pollfd pf{p.fd[0], POLLIN, 0};
    CHECK(poll(&pf, 1, 100) == 1);  // EOF is readable
    CHECK((pf.revents & POLLIN));
    timeval tv{0, 20'000};
    fd_set r;
    FD_ZERO(&r);
    CHECK(select(0, &r, nullptr, nullptr, &tv) == 0);
    CHECK(tv.tv_sec == 0);
    CHECK(tv.tv_usec == 0);  // Linux writes the time left back
    timespec bad{0, 1'000'000'000};
    CHECK(nanosleep(&bad, nullptr) == -1);
    CHECK(errno == EINVAL);
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &bad, nullptr) == EINVAL);
    CHECK(usleep(1000) == 0);
  }

  TEST_CASE("in a fiber, a non-blocking socket is libc's: EAGAIN at once, flags as set") {
    Pair p;
    skein::run([&] {
      REQUIRE(fcntl(p.fd[0], F_SETFL, fcntl(p.fd[0], F_GETFL) | O_NONBLOCK) == 0);
      char buf[4];
      const auto start = skein::Clock::now();
      CHECK(read(p.fd[0], buf, sizeof buf) == -1);
      CHECK(errno == EAGAIN);
      CHECK(recv(p.fd[0], buf, sizeof buf, 0) == -1);
      CHECK(errno == EAGAIN);
      sockaddr_in a{};
      socklen_t alen = sizeof a;
      CHECK(accept(p.fd[0], reinterpret_cast<sockaddr*>(&a), &alen) == -1);
      CHECK(errno == EINVAL);  // not listening: the kernel's answer, unchanged
      CHECK((fcntl(p.fd[0], F_GETFL) & O_NONBLOCK) != 0);
      int on = 1;
      REQUIRE(ioctl(p.fd[1], FIONBIO, &on) == 0);
      CHECK((fcntl(p.fd[1], F_GETFL) & O_NONBLOCK) != 0);
      CHECK(recv(p.fd[1], buf, sizeof buf, 0) == -1);
      CHECK(errno == EAGAIN);
      pollfd pf{p.fd[0], POLLIN, 0};
      CHECK(poll(&pf, 1, 0) == 0);
      CHECK(seconds_since(start) < 0.05);
    });
  }

  TEST_CASE("a blocking read in a fiber parks only that fiber; the user's flags stay blocking") {
    Pair p;
    skein::run([&] {
      std::atomic<int> ticks{0};
      auto reader = skein::spawn([&] {
        char buf[8];
        const ssize_t n = read(p.fd[0], buf, sizeof buf);
        return n == 3 && std::string_view(buf, 3) == "abc";
      });
      auto ticker = skein::spawn([&] {
        for (int i = 0; i < 5; ++i) {
          usleep(5'000);
          ++ticks;
        }
      });
      auto writer = skein::spawn([&] {
        usleep(50'000);
        return write(p.fd[1], "abc", 3);
      });
      CHECK(reader.join());
      ticker.join();
      CHECK(writer.join() == 3);
      CHECK(ticks == 5);
      // The hooks made it non-blocking in the kernel; the user still sees what they set.
      CHECK((raw_getfl(p.fd[0]) & O_NONBLOCK) != 0);
      CHECK((fcntl(p.fd[0], F_GETFL) & O_NONBLOCK) == 0);
    });
    // Outside a fiber it still blocks as the user expects (the hooks wait in poll for it).
    std::thread t([&] {
      std::this_thread::sleep_for(30ms);
      CHECK(write(p.fd[1], "z", 1) == 1);
    });
    char c = 0;
    CHECK(read(p.fd[0], &c, 1) == 1);
    CHECK(c == 'z');
    t.join();
  }

  TEST_CASE("a hooked read parked on a socket another fiber closes fails with EBADF") {
    int fd[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == 0);
    skein::run([&] {
      auto reader = skein::spawn([&] {
        char buf[8];
        const ssize_t n = read(fd[0], buf, sizeof buf);
        return n < 0 ? errno : 0;
      });
      usleep(20'000);
      const auto start = skein::Clock::now();
      CHECK(close(fd[0]) == 0);
      CHECK(reader.join() == EBADF);
      CHECK(seconds_since(start) < 0.5);
    });
    ::close(fd[1]);
  }

  TEST_CASE("a large blocking write transfers everything; MSG_WAITALL waits for all of it") {
    Pair p;
    skein::run([&] {
      const std::size_t size = 4 << 20;
      std::vector<char> out(size);
      for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<char>(i * 7);
      auto writer = skein::spawn([&] { return write(p.fd[1], out.data(), size); });
      auto reader = skein::spawn([&] {
        std::vector<char> in(size);
        const ssize_t n = recv(p.fd[0], in.data(), size, MSG_WAITALL);
        return n == static_cast<ssize_t>(size) && in == out;
      });
      CHECK(writer.join() == static_cast<ssize_t>(size));
      CHECK(reader.join());
      // writev/readv, in pieces.
      char a[3] = {'x', 'y', 'z'}, b[2] = {'1', '2'};
      iovec iov[2] = {{a, 3}, {b, 2}};
      CHECK(writev(p.fd[1], iov, 2) == 5);
      char c[5];
      iovec in[1] = {{c, 5}};
      CHECK(readv(p.fd[0], in, 1) == 5);
      CHECK(std::string_view(c, 5) == "xyz12");
    });
  }

  TEST_CASE("sleeps overlap in fibers: 50 x usleep, nanosleep, clock_nanosleep, sleep(1)") {
    skein::run([] {
      const auto start = skein::Clock::now();
      std::vector<skein::Task<int>> tasks;
      for (int i = 0; i < 50; ++i) {
        tasks.push_back(skein::spawn([] { return usleep(200'000); }));
        tasks.push_back(skein::spawn([] {
          timespec ts{0, 200'000'000};
          return nanosleep(&ts, nullptr);
        }));
        tasks.push_back(skein::spawn([] {
          timespec ts{0, 200'000'000};
          return clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, nullptr);
        }));
      }
      tasks.push_back(skein::spawn([] { return static_cast<int>(sleep(1)); }));
      tasks.push_back(skein::spawn([] {
        timespec now{};
        clock_gettime(CLOCK_REALTIME, &now);
        now.tv_nsec += 100'000'000;
        if (now.tv_nsec >= 1'000'000'000) {
          now.tv_nsec -= 1'000'000'000;
          ++now.tv_sec;
        }
        return clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &now, nullptr);
      }));
      for (auto& t : tasks) CHECK(t.join() == 0);
      const double took = seconds_since(start);
      CHECK(took >= 0.99);
      CHECK(took < 1.8);  // serially: 31 s
    });
  }

  TEST_CASE("SO_RCVTIMEO: EAGAIN after about the timeout, in a fiber and on the thread") {
    Pair p;
    const timeval tv{0, 100'000};
    REQUIRE(setsockopt(p.fd[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    skein::run([&] {
      char c;
      auto start = skein::Clock::now();
      auto t = skein::spawn([&] { return read(p.fd[0], &c, 1) == -1 && errno == EAGAIN; });
      auto other = skein::spawn([] { return usleep(50'000); });  // runs meanwhile
      CHECK(other.join() == 0);
      CHECK(t.join());
      const double took = seconds_since(start);
      CHECK(took >= 0.095);
      CHECK(took < 0.6);
    });
    // The fd is non-blocking in the kernel now, which ignores the timeout: the hooks keep it.
    char c;
    const auto start = skein::Clock::now();
    CHECK(recv(p.fd[0], &c, 1, 0) == -1);
    CHECK(errno == EAGAIN);
    CHECK(seconds_since(start) >= 0.095);
  }

  TEST_CASE("a cancel ends a hooked wait with ECANCELED; with_timeout's deadline too") {
    Pair p;
    int q[2];  // a pipe: an interrupted wait on a socket connection would shut it down
    REQUIRE(pipe(q) == 0);
    skein::run([&] {
      int err = 0;
      auto t = skein::spawn([&] {
        char c;
        const ssize_t n = read(p.fd[0], &c, 1);
        err = errno;
        return n;
      });
      skein::sleep_for(20ms);
      t.cancel();
      ssize_t n = 0;
      try {
        n = t.join();
      } catch (const std::system_error&) {
        n = -2;  // the body returned; cancellation may still be what join reports
      }
      CHECK(n != 0);
      CHECK(err == ECANCELED);
      int serr = 0;
      auto sleeper = skein::spawn([&] {
        const int r = usleep(10'000'000);
        serr = errno;
        return r;
      });
      skein::sleep_for(10ms);
      sleeper.cancel();
      try {
        sleeper.join();
      } catch (const std::system_error&) {
      }
      CHECK(serr == ECANCELED);
      const auto start = skein::Clock::now();
      int perr = 0;
      try {
        skein::with_timeout(50ms, [&] {
          pollfd pf{q[0], POLLIN, 0};
          const int r = poll(&pf, 1, -1);
          perr = errno;
          return r;
        });
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::timed_out);
      }
      CHECK((perr == ECANCELED || perr == ETIMEDOUT));
      CHECK(seconds_since(start) < 1.0);
    });
    close(q[0]);
    close(q[1]);
  }

  TEST_CASE(
      "a TimeoutScope's deadline ends hooked waits with ETIMEDOUT; a shorter SO_RCVTIMEO stays EAGAIN") {
    Pair p, r;  // an interrupted wait shuts its connection down: one pair per wait
    int q[2];   // poll on a pipe: on a cut connection it would report the hang-up (docs/hooks.md)
    REQUIRE(pipe(q) == 0);
    skein::run([&] {
      const auto start = skein::Clock::now();
      char c;
      int read_err = 0, sleep_err = 0, poll_err = 0;
      {
        skein::TimeoutScope scope(50ms);
        CHECK(read(p.fd[0], &c, 1) == -1);
        read_err = errno;
        CHECK(usleep(2'000'000) == -1);
        sleep_err = errno;
        pollfd pf{q[0], POLLIN, 0};
        CHECK(poll(&pf, 1, 2000) == -1);
        poll_err = errno;
      }
      CHECK(read_err == ETIMEDOUT);
      CHECK(sleep_err == ETIMEDOUT);
      CHECK(poll_err == ETIMEDOUT);
      CHECK(seconds_since(start) < 1.0);
      const timeval tv{0, 30'000};
      REQUIRE(setsockopt(r.fd[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
      skein::TimeoutScope scope(5s);
      CHECK(recv(r.fd[0], &c, 1, 0) == -1);
      CHECK(errno == EAGAIN);  // the socket's own timeout came first
    });
    close(q[0]);
    close(q[1]);
  }

  TEST_CASE("accept and connect over loopback TCP park fibers; a refused connect is ECONNREFUSED") {
    skein::run([] {
      sockaddr_in addr;
      const int l = tcp_listener(addr);
      auto server = skein::spawn([&] {
        std::string got;
        for (int i = 0; i < 3; ++i) {
          const int c = accept(l, nullptr, nullptr);
          if (c < 0) return std::string("accept failed");
          char buf[64];
          const ssize_t n = read(c, buf, sizeof buf);
          if (n > 0) {
            got.append(buf, static_cast<std::size_t>(n));
            CHECK(write(c, buf, static_cast<std::size_t>(n)) == n);
          }
          close(c);
        }
        return got;
      });
      std::vector<skein::Task<bool>> clients;
      for (int i = 0; i < 3; ++i)
        clients.push_back(skein::spawn([&addr, i] {
          const int s = socket(AF_INET, SOCK_STREAM, 0);
          if (connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) return false;
          const char m = static_cast<char>('a' + i);
          char back = 0;
          const bool ok = send(s, &m, 1, 0) == 1 && recv(s, &back, 1, 0) == 1 && back == m;
          close(s);
          return ok;
        }));
      for (auto& c : clients) CHECK(c.join());
      std::string got = server.join();
      std::sort(got.begin(), got.end());
      CHECK(got == "abc");
      close(l);
      // The port is free now: nothing listens there.
      const int s = socket(AF_INET, SOCK_STREAM, 0);
      CHECK(connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == -1);
      CHECK(errno == ECONNREFUSED);
      close(s);
    });
  }

  TEST_CASE("poll, select and epoll_wait in fibers wait for any of several descriptors") {
    Pair a, b;
    skein::run([&] {
      auto poller = skein::spawn([&] {
        pollfd pf[3] = {{a.fd[0], POLLIN, 0}, {b.fd[0], POLLIN, 0}, {-1, POLLIN, 0}};
        const int n = poll(pf, 3, 2000);
        return n == 1 && pf[0].revents == 0 && (pf[1].revents & POLLIN) && pf[2].revents == 0;
      });
      auto selector = skein::spawn([&] {
        fd_set r;
        FD_ZERO(&r);
        FD_SET(a.fd[0], &r);
        FD_SET(b.fd[0], &r);
        timeval tv{2, 0};
        const int n = select(std::max(a.fd[0], b.fd[0]) + 1, &r, nullptr, nullptr, &tv);
        return n == 1 && FD_ISSET(b.fd[0], &r) && !FD_ISSET(a.fd[0], &r) && tv.tv_sec < 2;
      });
      auto epoller = skein::spawn([&] {
        const int ep = epoll_create1(0);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = 7;
        epoll_ctl(ep, EPOLL_CTL_ADD, b.fd[0], &ev);
        epoll_event out[4];
        const int n = epoll_wait(ep, out, 4, 2000);
        close(ep);
        return n == 1 && out[0].data.u32 == 7;
      });
      auto timeout = skein::spawn([&] {
        pollfd pf{a.fd[0], POLLIN, 0};
        const auto start = skein::Clock::now();
        return poll(&pf, 1, 50) == 0 && seconds_since(start) >= 0.045;
      });
      skein::sleep_for(80ms);
      CHECK(write(b.fd[1], "!", 1) == 1);
      CHECK(poller.join());
      CHECK(selector.join());
      CHECK(epoller.join());
      CHECK(timeout.join());
    });
  }

  TEST_CASE("regular files fall through to libc; dup keeps the hooks' view; getaddrinfo resolves") {
    char path[] = "/tmp/skein-hooks-XXXXXX";
    const int f = mkstemp(path);
    REQUIRE(f >= 0);
    unlink(path);
    skein::run([&] {
      CHECK(write(f, "file", 4) == 4);
      CHECK(lseek(f, 0, SEEK_SET) == 0);
      char buf[8];
      CHECK(read(f, buf, sizeof buf) == 4);
      Pair p;
      char c;
      auto t = skein::spawn([&] { return read(p.fd[0], &c, 1); });
      skein::sleep_for(10ms);
      CHECK(write(p.fd[1], "q", 1) == 1);
      CHECK(t.join() == 1);
      const int d = dup(p.fd[0]);
      CHECK((fcntl(d, F_GETFL) & O_NONBLOCK) == 0);  // shares the description the hooks changed
      auto t2 = skein::spawn([&] { return read(d, &c, 1); });
      skein::sleep_for(10ms);
      CHECK(write(p.fd[1], "r", 1) == 1);
      CHECK(t2.join() == 1);
      close(d);
      addrinfo hints{};
      hints.ai_family = AF_INET;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      REQUIRE(getaddrinfo("127.0.0.1", "6379", &hints, &res) == 0);
      CHECK(reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_port == htons(6379));
      freeaddrinfo(res);
      CHECK(getaddrinfo("no-such-host.invalid", nullptr, &hints, &res) != 0);
    });
    close(f);
  }

  TEST_CASE("Bypass: the calls block the thread, as without the hooks") {
    skein::run([] {
      const auto start = skein::Clock::now();
      auto a = skein::spawn([] {
        skein::hooks::Bypass bypass;
        return usleep(60'000);
      });
      auto b = skein::spawn([] {
        skein::hooks::Bypass bypass;
        return usleep(60'000);
      });
      CHECK(a.join() == 0);
      CHECK(b.join() == 0);
      CHECK(seconds_since(start) >= 0.115);  // one after the other
    });
  }
}
