// skein::Server: 1,000 concurrent echo clients, the connection cap, stop and its grace period,
// cancelling serve(), handler errors, stop on signals and fd exhaustion (in forked children),
// and plain threads as clients of a server running in another thread's skein::run.
#include "net_test_util.hpp"
#include "skip.hpp"

#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono_literals;
using namespace skein_test;
using skein::Address;

namespace {

void echo(skein::Stream s) {
  char buf[16 * 1024];
  for (std::size_t n; (n = s.read(std::span<char>(buf, sizeof buf))) > 0;)
    s.write_all(std::string_view(buf, n));
}

// Echoes lines; "quit" stops the server.
skein::Server::Handler line_echo(skein::Server& server) {
  return [&server](skein::Stream s) {
    skein::BufferedReader r(s);
    for (;;) {
      const std::string line = r.read_line(8u << 20, 10s);
      if (line.empty()) return;
      if (line == "quit\n") {
        server.stop();
        return;
      }
      s.write_all(line, 10s);
    }
  };
}

// Polls `cond` every millisecond until it holds or `limit` passes.
template <class F>
bool eventually(F cond, std::chrono::milliseconds limit = 2s) {
  const auto until = skein::Clock::now() + limit;
  while (!cond()) {
    if (skein::Clock::now() > until) return false;
    skein::sleep_for(1ms);
  }
  return true;
}

// Counts a scope as a live handler.
struct Live {
  int& live;
  explicit Live(int& l, int& peak) : live(l) { peak = std::max(peak, ++live); }
  ~Live() { --live; }
};

// Plain POSIX client pieces for the fd-exhaustion test, which must not depend on the code under
// test on the client side.
int raw_connect(std::uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const Address a = Address::loopback(port);
  if (connect(fd, a.data(), a.size()) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads until a newline or `limit` passes; returns what arrived.
std::string raw_read_line(int fd, std::chrono::milliseconds limit) {
  std::string out;
  const auto until = std::chrono::steady_clock::now() + limit;
  while (out.empty() || out.back() != '\n') {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now())
            .count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char c[256];
    const ssize_t n = recv(fd, c, sizeof c, 0);
    if (n <= 0) break;
    out.append(c, static_cast<std::size_t>(n));
  }
  return out;
}

bool raw_send(int fd, std::string_view s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

}  // namespace

TEST_SUITE("server") {
  // May skip: a Meson test of its own (tests/skip.hpp).
  TEST_CASE("1,000 concurrent echo clients, every byte checked" * doctest::test_suite("server-many")) {
    static constexpr int clients = 1000;
    const rlim_t limit = raise_fd_limit();
    if (limit < 2 * clients + 200) {
      skein_test::skip("RLIMIT_NOFILE is " + std::to_string(limit) + ", need " +
                       std::to_string(2 * clients + 200));
      return;
    }
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      const Address at = l.local_address();
      skein::Server server;
      auto srv = skein::spawn([&] { server.serve(l, echo); });
      CancelOnExit guard{srv};

      const auto start = skein::Clock::now();
      int ok = 0;
      std::uint64_t bytes = 0;
      std::vector<skein::Task<void>> tasks;
      for (int i = 0; i < clients; ++i) {
        tasks.push_back(skein::spawn([&, i] {
          std::mt19937 rng(static_cast<std::mt19937::result_type>(i));
          std::uniform_int_distribution<int> count(3, 6);
          std::uniform_int_distribution<std::size_t> size(1, 8192);
          skein::Stream c = skein::connect(at, 20s);
          const int n = count(rng);
          for (int m = 0; m < n; ++m) {
            const std::string msg = pattern(static_cast<std::uint64_t>(i) * 100 + m, size(rng));
            c.write_all(msg, 20s);
            std::string back(msg.size(), '\0');
            c.read_exact(back, 20s);
            REQUIRE_MESSAGE(back == msg, "client " << i << " message " << m << " came back different");
            bytes += msg.size();
          }
          c.shutdown();
          char b[1];
          CHECK(c.read(std::span<char>(b, 1), 20s) == 0);
          ++ok;
        }));
      }
      skein::join_all(tasks);
      const double took = ms_since(start);
      CHECK(ok == clients);
      MESSAGE(clients << " clients, " << bytes << " bytes echoed in " << took << " ms");
      CHECK(eventually([&] { return server.active() == 0; }));
      CHECK(server.accepted() == clients);
      server.stop();
      srv.join();
    });
  }

  TEST_CASE("serve(address) across workers: every worker takes connections; stop() ends them all") {
    for (const std::size_t workers : {2u, 4u}) {
      for (const auto distribution : {skein::Distribution::reuse_port, skein::Distribution::acceptor}) {
        CAPTURE(workers);
        const std::string mode = distribution == skein::Distribution::reuse_port ? "reuse_port" : "acceptor";
        CAPTURE(mode);
        FdCheck fds;
        skein::run(skein::RuntimeOptions{workers}, [&] {
          skein::ServeOptions opts;
          opts.distribution = distribution;
          std::atomic<std::uint16_t> port{0};
          opts.on_listening = [&port](const Address& a) { port = a.port(); };
          std::vector<std::atomic<int>> served(workers);
          skein::Server server(opts);
          auto srv = skein::spawn([&] {
            server.serve(Address::loopback(0), [&served](skein::Stream s) {
              ++served[skein::this_worker()];
              echo(std::move(s));
            });
          });
          CancelOnExit guard{srv};
          REQUIRE(eventually([&] { return port != 0; }));
          // Clients on every worker, many connections each, every byte checked.
          std::vector<skein::Task<int>> clients;
          for (int i = 0; i < 200; ++i)
            clients.push_back(skein::spawn_on(static_cast<std::size_t>(i) % workers, [&port, i] {
              skein::Stream c = skein::connect(Address::loopback(port), 10s);
              const std::string msg =
                  pattern(static_cast<std::uint64_t>(i), 1000 + static_cast<std::size_t>(i));
              c.write_all(msg, 10s);
              std::string back(msg.size(), '\0');
              c.read_exact(back, 10s);
              return back == msg ? 1 : 0;
            }));
          int ok = 0;
          for (auto& c : clients) ok += c.join();
          CHECK(ok == 200);
          CHECK(eventually([&] { return server.active() == 0; }));
          CHECK(server.accepted() == 200);
          int total = 0, busy = 0;
          for (auto& n : served) {
            total += n;
            busy += n > 0;
          }
          CHECK(total == 200);
          // The kernel's SO_REUSEPORT hash or the round robin: more than one worker took some.
          CHECK(busy > 1);
          MESSAGE("connections per worker spread over " << busy << " of " << workers);
          server.stop();
          srv.join();
        });
      }
    }
  }

  TEST_CASE("serve(address) across workers, stopped and started again: every worker serves again") {
    // Each worker registers its listener in its own driver; the second round's listeners (likely
    // the same descriptor numbers) must not be mistaken for the first round's on any worker.
    FdCheck fds;
    skein::run(skein::RuntimeOptions{2}, [] {
      for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        skein::ServeOptions opts;
        std::atomic<std::uint16_t> port{0};
        opts.on_listening = [&port](const Address& a) { port = a.port(); };
        skein::Server server(opts);
        auto srv = skein::spawn([&] { server.serve(Address::loopback(0), echo); });
        REQUIRE(eventually([&] { return port != 0; }));
        std::vector<skein::Task<void>> clients;
        for (int i = 0; i < 32; ++i)
          clients.push_back(skein::spawn_on(static_cast<std::size_t>(i) % 2, [&port] {
            skein::Stream c = skein::connect(Address::loopback(port), 5s);
            c.write_all("hello", 5s);
            std::string back(5, '\0');
            c.read_exact(back, 5s);
            CHECK(back == "hello");
          }));
        skein::join_all(clients);
        CHECK(server.accepted() == 32);
        server.stop();
        srv.join();
      }
    });
  }

  TEST_CASE("serve(address) across workers: a second signal or a cancel cuts every worker's grace") {
    FdCheck fds;
    skein::run(skein::RuntimeOptions{3}, [] {
      skein::ServeOptions opts;
      opts.grace_period = 30s;
      std::atomic<std::uint16_t> port{0};
      opts.on_listening = [&port](const Address& a) { port = a.port(); };
      skein::Server server(opts);
      std::atomic<int> cancelled{0};
      auto srv = skein::spawn([&] {
        server.serve(Address::loopback(0), [&cancelled](skein::Stream s) {
          try {
            skein::sleep_for(60s);
          } catch (const std::system_error& e) {
            if (e.code() == std::errc::operation_canceled) ++cancelled;
            throw;
          }
          (void)s;
        });
      });
      REQUIRE(eventually([&] { return port != 0; }));
      std::vector<skein::Stream> held;
      for (int i = 0; i < 12; ++i) held.push_back(skein::connect(Address::loopback(port), 5s));
      REQUIRE(eventually([&] { return server.active() == 12; }));
      const auto start = skein::Clock::now();
      srv.cancel();
      CHECK(code_of([&] { srv.join(); }) == std::errc::operation_canceled);
      CHECK(ms_since(start) < 5000);
      CHECK(cancelled == 12);
      CHECK(server.active() == 0);
    });
  }

  TEST_CASE("serve(address) on one worker, and on a Unix path (always one acceptor)") {
    FdCheck fds;
    skein::run(skein::RuntimeOptions{2}, [] {
      const std::string path = "/tmp/skein-serve-test-" + std::to_string(getpid()) + ".sock";
      ::unlink(path.c_str());
      for (const bool unix_socket : {false, true}) {
        skein::ServeOptions opts;
        if (!unix_socket) opts.workers = 1;
        std::atomic<bool> listening{false};
        Address bound;
        opts.on_listening = [&](const Address& a) {
          bound = a;
          listening = true;
        };
        skein::Server server(opts);
        auto srv = skein::spawn(
            [&] { server.serve(unix_socket ? Address::unix_path(path) : Address::loopback(0), echo); });
        REQUIRE(eventually([&] { return listening.load(); }));
        for (std::size_t w = 0; w < 2; ++w)
          skein::spawn_on(w, [&bound] {
            skein::Stream c = skein::connect(bound, 5s);
            c.write_all("ping", 5s);
            std::string back(4, '\0');
            c.read_exact(back, 5s);
            CHECK(back == "ping");
          }).join();
        CHECK(server.accepted() == 2);
        server.stop();
        srv.join();
      }
      ::unlink(path.c_str());
    });
  }

  TEST_CASE("a server on a Unix-domain listener (unnamed peers)") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::unix_path(abstract_name("server")));
      skein::Server server;
      auto srv = skein::spawn([&] { server.serve(l, echo); });
      CancelOnExit guard{srv};
      for (int i = 0; i < 3; ++i) {
        skein::Stream c = skein::connect(l.local_address(), 5s);
        const std::string msg = pattern(static_cast<std::uint64_t>(i), 1000);
        c.write_all(msg, 5s);
        std::string back(msg.size(), '\0');
        c.read_exact(back, 5s);
        CHECK(back == msg);
      }
      CHECK(server.accepted() == 3);
      server.stop();
      srv.join();
    });
  }

  TEST_CASE("max_connections caps the live handlers; the next is accepted when one ends") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::ServeOptions opts;
      opts.max_connections = 2;
      skein::Server server(opts);
      int live = 0, peak = 0;
      auto srv = skein::spawn([&] {
        server.serve(l, [&](skein::Stream s) {
          Live scope(live, peak);
          char b[1];
          s.read(std::span<char>(b, 1), 10s);  // until the test releases this one
        });
      });
      CancelOnExit guard{srv};

      std::vector<skein::Stream> c;
      for (int i = 0; i < 3; ++i) c.push_back(skein::connect(l.local_address(), 5s));
      CHECK(eventually([&] { return server.active() == 2; }));
      skein::sleep_for(100ms);  // room for a wrong third accept to happen
      CHECK(server.accepted() == 2);
      CHECK(server.active() == 2);
      CHECK(live == 2);

      c[0].write_all("x");
      CHECK(eventually([&] { return server.accepted() == 3; }));
      CHECK(eventually([&] { return live == 2; }));
      CHECK(peak == 2);
      c[1].write_all("x");
      c[2].write_all("x");
      CHECK(eventually([&] { return server.active() == 0; }));
      CHECK(peak == 2);
      server.stop();
      srv.join();
    });
  }

  TEST_CASE("stop: no new connections; handlers in flight finish within the grace period") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::ServeOptions opts;
      opts.grace_period = 5s;
      skein::Server server(opts);
      auto srv = skein::spawn([&] {
        server.serve(l, [](skein::Stream s) {
          skein::sleep_for(300ms);
          s.write_all("done");
        });
      });
      CancelOnExit guard{srv};

      skein::Stream c = skein::connect(l.local_address(), 5s);
      REQUIRE(eventually([&] { return server.active() == 1; }));
      const auto start = skein::Clock::now();
      server.stop();
      server.stop();  // idempotent
      skein::sleep_for(50ms);
      // Arrives while stopping: must not be served.
      skein::Stream late;
      try {
        late = skein::connect(l.local_address(), 200ms);
        late.write_all("hi");
      } catch (const std::system_error& e) {
        MESSAGE("connect while stopping: " << std::string(e.what()));
      }
      srv.join();
      const double took = ms_since(start);
      CHECK(took >= 200);  // waited for the handler...
      CHECK(took < 2000);  // ...not for the whole grace period
      char buf[4];
      c.read_exact(std::span<char>(buf, 4), 5s);
      CHECK(std::string_view(buf, 4) == "done");
      CHECK(server.accepted() == 1);
      CHECK(server.active() == 0);
      CHECK(l.is_open());  // the listener is the caller's

      // After serve() returned: a connection is queued at most, never served.
      if (late) {
        char b[1];
        std::size_t n = 0;
        const std::error_code e = code_of([&] { n = late.read(std::span<char>(b, 1), 200ms); });
        CHECK(n == 0);
        CHECK_MESSAGE((e == std::errc::timed_out || e == std::errc::connection_reset || !e), describe(e));
      }
      CHECK(server.accepted() == 1);
    });
  }

  TEST_CASE("stopping(): an idle keep-alive handler sees the stop and leaves before the grace ends") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::ServeOptions opts;
      opts.grace_period = 10s;
      skein::Server server(opts);
      CHECK_FALSE(server.stopping());
      auto srv = skein::spawn([&] {
        server.serve(l, [&server](skein::Stream s) {
          // A keep-alive loop: wait for a request in short slices, and give up between requests
          // once the server is stopping.
          char buf[64];
          while (!server.stopping()) {
            try {
              if (s.read(std::span<char>(buf), 20ms) == 0) return;
            } catch (const std::system_error& e) {
              if (e.code() != std::errc::timed_out) throw;
            }
          }
        });
      });
      CancelOnExit guard{srv};
      skein::Stream c = skein::connect(l.local_address(), 5s);
      REQUIRE(eventually([&] { return server.active() == 1; }));
      const auto start = skein::Clock::now();
      server.stop();
      CHECK(server.stopping());
      srv.join();
      CHECK(ms_since(start) < 2000);  // not the 10 s grace period
      char b[1];
      CHECK(c.read(std::span<char>(b, 1), 2s) == 0);  // the handler closed the connection
    });
  }

  // A server on a loopback listener with one connection whose handler sleeps until cancelled: the
  // setup of the tests of stopping with a handler still running. `seen` is what ended the sleep;
  // `serve_for`, if given, bounds serve() with a TimeoutScope. Handler errors are not printed.
  struct SleepingHandler {
    explicit SleepingHandler(std::chrono::milliseconds grace_period,
                             std::optional<std::chrono::milliseconds> serve_for = std::nullopt)
        : server(quiet(grace_period)),
          serving(skein::spawn([this, serve_for] {
            skein::TimeoutScope scope(serve_for ? skein::Deadline(*serve_for) : skein::Deadline());
            server.serve(listener, [this](skein::Stream) {
              try {
                skein::sleep_for(30s);
              } catch (const std::system_error& e) {
                seen = e.code();
                throw;
              }
            });
          })),
          client(skein::connect(listener.local_address(), 5s)) {
      REQUIRE(eventually([&] { return server.active() == 1; }));
    }
    static skein::ServeOptions quiet(std::chrono::milliseconds grace_period) {
      skein::ServeOptions opts;
      opts.grace_period = grace_period;
      opts.on_error = [](const Address&, std::exception_ptr) {};
      return opts;
    }

    skein::Listener listener = skein::listen(Address::loopback(0));
    skein::Server server;
    std::error_code seen;
    skein::Task<void> serving;
    CancelOnExit<void> guard{serving};
    skein::Stream client;
  };

  TEST_CASE("cancelling serve() during the grace period cuts it short") {
    FdCheck fds;
    skein::run([] {
      SleepingHandler h(10s);
      h.server.stop();
      skein::sleep_for(100ms);  // serve() is in its grace period now
      const auto start = skein::Clock::now();
      h.serving.cancel();
      const std::error_code e = code_of([&] { h.serving.join(); });
      CHECK_MESSAGE(e == std::errc::operation_canceled, describe(e));
      CHECK(ms_since(start) < 2000);  // not the remaining ~10 s
      CHECK(h.server.active() == 0);
    });
  }

  TEST_CASE("stop: handlers still running after the grace period are cancelled") {
    FdCheck fds;
    skein::run([] {
      SleepingHandler h(100ms);
      const auto start = skein::Clock::now();
      h.server.stop();
      h.serving.join();
      const double took = ms_since(start);
      CHECK(took >= 90);
      CHECK(took < 2000);
      CHECK_MESSAGE(h.seen == std::errc::operation_canceled, describe(h.seen));
      CHECK(h.server.active() == 0);
    });
  }

  TEST_CASE("cancelling the fiber in serve() cancels the handlers, then throws operation_canceled") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::ServeOptions opts;
      opts.grace_period = 10s;  // a cancel cuts it to zero
      opts.on_error = [](const Address&, std::exception_ptr) {};
      skein::Server server(opts);
      std::error_code seen;
      bool handler_done = false;
      auto srv = skein::spawn([&] {
        server.serve(l, [&](skein::Stream s) {
          try {
            char b[1];
            s.read(std::span<char>(b, 1));
          } catch (const std::system_error& e) {
            seen = e.code();
          }
          handler_done = true;
        });
      });
      CancelOnExit guard{srv};
      skein::Stream c = skein::connect(l.local_address(), 5s);
      REQUIRE(eventually([&] { return server.active() == 1; }));
      const auto start = skein::Clock::now();
      srv.cancel();
      const std::error_code e = code_of([&] { srv.join(); });
      CHECK_MESSAGE(e == std::errc::operation_canceled, describe(e));
      CHECK(ms_since(start) < 1000);
      CHECK(handler_done);  // serve() returned only after the handler ended
      CHECK_MESSAGE(seen == std::errc::operation_canceled, describe(seen));
      CHECK(server.active() == 0);
      CHECK(l.is_open());
    });
  }

  TEST_CASE("a TimeoutScope expiring around serve() stops it like a cancel, then it throws timed_out") {
    FdCheck fds;
    skein::run([] {
      SleepingHandler h(10s, 300ms);  // the expiry cuts the grace period to zero
      const std::error_code e = code_of([&] { h.serving.join(); });
      CHECK_MESSAGE(e == std::errc::timed_out, describe(e));
      CHECK(h.server.stopping());
      CHECK_MESSAGE(h.seen == std::errc::operation_canceled, describe(h.seen));
      CHECK(h.server.active() == 0);
    });
  }

  TEST_CASE("a handler's exception goes to on_error with the peer; the server goes on") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::ServeOptions opts;
      std::vector<std::pair<Address, std::string>> errors;
      opts.on_error = [&](const Address& peer, std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          errors.emplace_back(peer, x.what());
        } catch (...) {
          errors.emplace_back(peer, "(not a std::exception)");
        }
      };
      skein::Server server(opts);
      auto srv = skein::spawn([&] {
        server.serve(l, [](skein::Stream s) {
          skein::BufferedReader r(s);
          for (std::string line; !(line = r.read_line(1024, 5s)).empty();) {
            if (line == "boom\n") throw std::runtime_error("boom");
            s.write_all(line);
          }
        });
      });
      CancelOnExit guard{srv};

      skein::Stream bad = skein::connect(l.local_address(), 5s);
      bad.write_all("boom\n");
      REQUIRE(eventually([&] { return !errors.empty(); }));
      CHECK(errors.size() == 1);
      CHECK(errors[0].first == bad.local_address());
      CHECK(errors[0].second == "boom");
      char b[8];
      const std::error_code e = code_of([&] { CHECK(bad.read(std::span<char>(b, sizeof b), 2s) == 0); });
      CHECK_MESSAGE((!e || e == std::errc::connection_reset), describe(e));

      for (int i = 0; i < 3; ++i) {
        skein::Stream good = skein::connect(l.local_address(), 5s);
        good.write_all("fine\n");
        skein::BufferedReader r(good);
        CHECK(r.read_line(1024, 5s) == "fine\n");
      }
      CHECK(errors.size() == 1);
      CHECK(server.accepted() == 4);
      server.stop();
      srv.join();
    });
  }

  TEST_CASE("the default on_error prints a handler's error, but not the routine endings") {
    FdCheck fds;
    const ChildResult r = run_in_child([] {
      return skein::run([] {
        skein::Listener l = skein::listen(Address::loopback(0));
        skein::Server server;
        auto srv = skein::spawn([&] {
          server.serve(l, [](skein::Stream s) {
            char b[32];
            const std::size_t n = s.read(std::span<char>(b, sizeof b), 5s);
            const std::string_view what(b, n);
            if (what == "logic") throw std::logic_error("handler-bug-visible");
            if (what == "reset")
              throw std::system_error(std::make_error_code(std::errc::connection_reset), "routine-reset");
            if (what == "timeout")
              throw std::system_error(std::make_error_code(std::errc::timed_out), "routine-timeout");
            if (what == "eos")
              throw std::system_error(make_error_code(skein::net_errc::end_of_stream), "routine-eos");
          });
        });
        CancelOnExit guard{srv};
        for (const char* m : {"logic", "reset", "timeout", "eos"}) {
          skein::Stream c = skein::connect(l.local_address(), 5s);
          c.write_all(m);
          char b[1];
          try {
            c.read(std::span<char>(b, 1), 5s);  // until the handler has ended
          } catch (const std::system_error&) {
          }
        }
        server.stop();
        srv.join();
        return 0;
      });
    });
    CAPTURE(r.err);
    CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
    CHECK(r.err.find("handler-bug-visible") != std::string::npos);
    CHECK(r.err.find("routine-") == std::string::npos);
  }

  TEST_CASE("stop() before serve() makes it return at once; the free serve() function") {
    FdCheck fds;
    skein::run([] {
      skein::Listener l = skein::listen(Address::loopback(0));
      skein::Server server;
      server.stop();
      const auto start = skein::Clock::now();
      server.serve(l, echo);
      CHECK(ms_since(start) < 500);
      CHECK(server.accepted() == 0);
    });
  }

  TEST_CASE("stop_on_signals: SIGTERM or SIGINT makes serve() return; a second one cancels handlers") {
    FdCheck fds;
    // Children: a signal that the server fails to catch kills only them.
    SUBCASE("raise(SIGTERM) with the free serve()") {
      const ChildResult r = run_in_child([] {
        return skein::run([] {
          skein::Listener l = skein::listen(Address::loopback(0));
          skein::ServeOptions opts;
          opts.stop_on_signals = true;
          auto sender = skein::spawn([] {
            skein::sleep_for(50ms);
            raise(SIGTERM);
          });
          skein::serve(l, echo, opts);
          sender.join();
          // serve() restores the thread's signal mask: SIGTERM is deliverable again.
          sigset_t now;
          pthread_sigmask(SIG_SETMASK, nullptr, &now);
          if (sigismember(&now, SIGTERM) || sigismember(&now, SIGINT)) {
            std::fprintf(stderr, "SIGINT/SIGTERM still blocked after serve() returned\n");
            return 2;
          }
          return 0;
        });
      });
      CAPTURE(r.err);
      CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
    }
    SUBCASE("kill(getpid(), SIGINT) with an in-flight handler that then finishes") {
      const ChildResult r = run_in_child([] {
        return skein::run([] {
          skein::Listener l = skein::listen(Address::loopback(0));
          skein::ServeOptions opts;
          opts.stop_on_signals = true;
          skein::Server server(opts);
          bool finished = false;
          auto client = skein::spawn([&] {
            skein::Stream c = skein::connect(l.local_address(), 5s);
            skein::sleep_for(50ms);
            kill(getpid(), SIGINT);
            skein::sleep_for(50ms);
            c.shutdown();  // lets the handler finish within the grace period
            char b[1];
            c.read(std::span<char>(b, 1), 5s);
          });
          server.serve(l, [&](skein::Stream s) {
            echo(std::move(s));
            finished = true;
          });
          client.join();
          if (!finished) {
            std::fprintf(stderr, "the handler did not finish normally\n");
            return 2;
          }
          return 0;
        });
      });
      CAPTURE(r.err);
      CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
    }
    SUBCASE("a SIGINT the process inherited as ignored still stops the server") {
      const ChildResult r = run_in_child([] {
        signal(SIGINT, SIG_IGN);  // what a non-interactive shell does for `server &`
        return skein::run([] {
          skein::Listener l = skein::listen(Address::loopback(0));
          skein::ServeOptions opts;
          opts.stop_on_signals = true;
          auto sender = skein::spawn([] {
            skein::sleep_for(50ms);
            raise(SIGINT);
          });
          skein::serve(l, echo, opts);  // returns: the watch saw the SIGINT
          sender.join();
          return 0;
        });
      });
      CAPTURE(r.err);
      CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
    }
    SUBCASE("a second SIGTERM cancels handlers at once instead of waiting out the grace") {
      const ChildResult r = run_in_child([] {
        return skein::run([] {
          skein::Listener l = skein::listen(Address::loopback(0));
          skein::ServeOptions opts;
          opts.stop_on_signals = true;
          opts.grace_period = 10s;
          opts.on_error = [](const Address&, std::exception_ptr) {};
          skein::Server server(opts);
          bool cancelled = false;
          skein::TimePoint second{};
          auto driver = skein::spawn([&] {
            skein::Stream c = skein::connect(l.local_address(), 5s);
            skein::sleep_for(50ms);
            raise(SIGTERM);
            skein::sleep_for(200ms);
            second = skein::Clock::now();
            raise(SIGTERM);
            char b[1];
            try {
              c.read(std::span<char>(b, 1), 5s);
            } catch (const std::system_error&) {
            }
          });
          server.serve(l, [&](skein::Stream) {
            try {
              skein::sleep_for(20s);
            } catch (const std::system_error& e) {
              cancelled = e.code() == std::errc::operation_canceled;
              throw;
            }
          });
          const double after_second = ms_since(second);
          driver.join();
          if (!cancelled || after_second > 1000) {
            std::fprintf(stderr, "handler cancelled: %d, serve returned %.0f ms after the second signal\n",
                         cancelled, after_second);
            return 2;
          }
          return 0;
        });
      });
      CAPTURE(r.err);
      CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
    }
  }

  TEST_CASE("out of descriptors: accept backs off without spinning and recovers once clients go") {
    FdCheck fds;
    int port_pipe[2];
    REQUIRE(pipe(port_pipe) == 0);
    constexpr int clients = 40;
    std::string parent_log;
    int first_served = -1;
    std::string after_recovery;

    const ChildResult r = run_in_child(
        [&] {
          close(port_pipe[0]);
          return skein::run([&] {
            skein::Listener l = skein::listen(Address::loopback(0));
            const std::uint16_t port = l.local_address().port();
            if (write(port_pipe[1], &port, sizeof port) != sizeof port) return 4;
            close(port_pipe[1]);
            // Ten descriptors to spare: the server runs out long before the clients do.
            rlimit lim{};
            getrlimit(RLIMIT_NOFILE, &lim);
            lim.rlim_cur = open_fd_count() + 10;
            setrlimit(RLIMIT_NOFILE, &lim);
            skein::ServeOptions opts;
            opts.grace_period = 1s;
            opts.on_error = [](const Address&, std::exception_ptr) {};
            skein::Server server(opts);
            const double cpu0 = cpu_ms();
            const auto start = skein::Clock::now();
            server.serve(l, line_echo(server));
            const double cpu = cpu_ms() - cpu0, wall = ms_since(start);
            std::fprintf(stderr, "child: serve ran %.0f ms, used %.0f ms of CPU, accepted %llu\n", wall, cpu,
                         static_cast<unsigned long long>(server.accepted()));
            // A server that retries accept in a loop while out of descriptors burns a whole core.
            return cpu < 0.3 * wall ? 0 : 3;
          });
        },
        30s,
        [&](pid_t) {
          close(port_pipe[1]);
          std::uint16_t port = 0;
          pollfd p{port_pipe[0], POLLIN, 0};
          if (poll(&p, 1, 10'000) == 1) REQUIRE(read(port_pipe[0], &port, sizeof port) == sizeof port);
          close(port_pipe[0]);
          REQUIRE(port != 0);

          std::vector<int> c;
          for (int i = 0; i < clients; ++i) {
            const int fd = raw_connect(port);  // the kernel queues them; the server accepts what it can
            REQUIRE(fd >= 0);
            c.push_back(fd);
            raw_send(fd, "hello " + std::to_string(i) + "\n");
          }
          first_served = 0;
          for (int i = 0; i < clients; ++i)
            first_served += raw_read_line(c[static_cast<std::size_t>(i)], i == 0 ? 2000ms : 50ms) ==
                            "hello " + std::to_string(i) + "\n";
          std::this_thread::sleep_for(1s);  // the server sits out of descriptors with connections queued
          for (int fd : c) close(fd);

          // The queued (now closed) connections drain; then new ones are served again.
          for (int i = 0; i < 3; ++i) {
            const int fd = raw_connect(port);
            REQUIRE(fd >= 0);
            raw_send(fd, "again\n");
            after_recovery += raw_read_line(fd, 5000ms);
            close(fd);
          }
          const int q = raw_connect(port);
          if (q >= 0) {
            raw_send(q, "quit\n");
            raw_read_line(q, 2000ms);  // until the server closes it
            close(q);
          }
        });
    MESSAGE(r.err);
    CHECK(first_served >= 1);
    CHECK_MESSAGE(first_served < clients, "every client was served: the descriptor limit never bit");
    CHECK(after_recovery == "again\nagain\nagain\n");
    CHECK_MESSAGE(r.exited_ok(), "child: " << r.how());
  }

  TEST_CASE("plain threads as clients of a server in another thread's skein::run") {
    FdCheck fds;
    std::atomic<std::uint16_t> port{0};
    std::string server_error;
    std::thread server_thread([&] {
      try {
        skein::run([&] {
          skein::Listener l = skein::listen(Address::loopback(0));
          skein::Server server;
          auto watchdog = skein::spawn([&] {
            skein::sleep_for(20s);  // the test's safety net: never outlive it
            server.stop();
          });
          CancelOnExit guard{watchdog};
          port = l.local_address().port();
          server.serve(l, line_echo(server));
        });
      } catch (const std::exception& e) {
        server_error = e.what();
      }
    });
    struct Join {
      std::thread& t;
      ~Join() {
        if (t.joinable()) t.join();
      }
    } join{server_thread};

    for (int i = 0; i < 5000 && port == 0; ++i) std::this_thread::sleep_for(1ms);
    REQUIRE(port != 0);
    const Address at = Address::loopback(port);

    auto client = [&at](int id) {
      skein::Stream c = skein::connect(at, 5s);
      skein::BufferedReader r(c);
      for (int m = 0; m < 20; ++m) {
        const std::string line = "thread " + std::to_string(id) + " message " + std::to_string(m) + "\n";
        c.write_all(line, 5s);
        if (r.read_line(1024, 5s) != line) return false;
      }
      // A big line: both sides park on full buffers, this one in poll(2).
      const std::string big = std::string(2u << 20, static_cast<char>('a' + id)) + "\n";
      std::thread writer([&] { c.write_all(big, 10s); });
      const std::string back = r.read_line(4u << 20, 10s);
      writer.join();
      return back == big;
    };
    CHECK(client(0));
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int i = 1; i <= 4; ++i)
      threads.emplace_back([&, i] {
        try {
          ok += client(i) ? 1 : 0;
        } catch (const std::exception& e) {
          std::fprintf(stderr, "client thread %d: %s\n", i, e.what());
        }
      });
    for (auto& t : threads) t.join();
    CHECK(ok == 4);

    skein::Stream q = skein::connect(at, 5s);
    q.write_all("quit\n", 5s);
    char b[1];
    CHECK(q.read(std::span<char>(b, 1), 5s) == 0);
    q.close();
    server_thread.join();
    CHECK(server_error.empty());
  }
}
