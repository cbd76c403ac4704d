// RuntimeOptions::dump_signal: a signal prints skein::debug::dump to stderr while the runtime goes
// on; without it the signal's disposition is left alone; the last runtime holding a signal gives
// back the disposition it found.
//
// stderr (fd 2) is redirected to a temporary file while a case runs; a dump comes from another
// thread, so each case polls the file for up to 10 s.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

namespace {

using namespace std::chrono_literals;

// fd 2 goes to a temporary file until destroyed.
class CaptureStderr {
 public:
  CaptureStderr() : file_(std::tmpfile()), saved_(::dup(2)) {
    REQUIRE(file_ != nullptr);
    REQUIRE(saved_ >= 0);
    std::cerr.flush();
    REQUIRE(::dup2(::fileno(file_), 2) == 2);
  }
  ~CaptureStderr() {
    std::cerr.flush();
    ::dup2(saved_, 2);
    ::close(saved_);
    std::fclose(file_);
  }
  CaptureStderr(const CaptureStderr&) = delete;
  CaptureStderr& operator=(const CaptureStderr&) = delete;

  std::string text() const {
    std::string out;
    char buf[4096];
    for (off_t at = 0;;) {
      const ssize_t n = ::pread(::fileno(file_), buf, sizeof buf, at);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
      at += n;
    }
    return out;
  }

  // How often `needle` occurs in what was written so far.
  std::size_t count(const std::string& needle) const {
    const std::string all = text();
    std::size_t n = 0;
    for (std::size_t at = all.find(needle); at != std::string::npos; at = all.find(needle, at + 1)) ++n;
    return n;
  }

  // Waits up to 10 s for `needle` to occur at least `times` times.
  bool wait_for(const std::string& needle, std::size_t times = 1) const {
    for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
      if (count(needle) >= times) return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

 private:
  FILE* file_;
  int saved_;
};

// Raises `sig` until `needle` has been printed `times` times (a dump may come just before the
// fiber it looks for parks); false after 10 s.
bool dumps_until(const CaptureStderr& err, int sig, const std::string& needle, std::size_t times) {
  for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
    const std::size_t dumps = err.count("skein: ");
    if (::raise(sig) != 0) return false;
    // This dump's header, then either the needle or the next try.
    while (err.count("skein: ") == dumps && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(2ms);
    std::this_thread::sleep_for(20ms);
    if (err.count(needle) >= times) return true;
  }
  return false;
}

struct sigaction disposition(int sig) {
  struct sigaction now {};
  ::sigaction(sig, nullptr, &now);
  return now;
}

std::atomic<int> own_handler_calls{0};
void own_handler(int) {
  own_handler_calls.fetch_add(1);
}

// Installs own_handler for `sig` for the scope, then puts back what was there.
class OwnHandler {
 public:
  explicit OwnHandler(int sig) : sig_(sig) {
    struct sigaction action {};
    action.sa_handler = own_handler;
    sigemptyset(&action.sa_mask);
    ::sigaction(sig, &action, &before_);
  }
  ~OwnHandler() { ::sigaction(sig_, &before_, nullptr); }
  OwnHandler(const OwnHandler&) = delete;
  OwnHandler& operator=(const OwnHandler&) = delete;

 private:
  int sig_;
  struct sigaction before_ {};
};

skein::RuntimeOptions options_with(int sig) {
  skein::RuntimeOptions o;
  o.workers = 2;
  o.dump_signal = sig;
  return o;
}

}  // namespace

TEST_SUITE("debug-signal") {
  TEST_CASE("a dump signal prints every fiber to stderr and the runtime keeps running") {
    CaptureStderr err;
    skein::Runtime rt(options_with(SIGUSR1));
    skein::Event go;
    std::atomic<bool> waiting{false};
    auto waiter = rt.spawn_on(1, skein::FiberOptions{"signal-waiter"}, [&] {
      waiting = true;
      go.wait();
      return 7;
    });
    while (!waiting) std::this_thread::sleep_for(1ms);
    CHECK(dumps_until(err, SIGUSR1, "\"signal-waiter\" parked: event", 1));
    CHECK(dumps_until(err, SIGUSR1, "\"signal-waiter\" parked: event", 2));
    // Still serving: the parked fiber wakes, and new fibers run on both workers.
    rt.spawn_on(0, [&] { go.set(); }).join();
    CHECK(waiter.join() == 7);
    CHECK(rt.spawn_on(1, [] { return 8; }).join() == 8);
  }

  TEST_CASE("skein::run dumps on its signal from inside a fiber's wait") {
    CaptureStderr err;
    const bool seen = skein::run(options_with(SIGUSR1), [&] {
      // A thread of its own sends the signals: a dump asked for while this fiber runs shows it
      // running, so it waits parked, and every dump meanwhile should find it asleep.
      std::atomic<bool> stop{false};
      std::thread sender([&] {
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);  // a worker's thread mask blocks it
        while (!stop) {
          ::raise(SIGUSR1);  // handled on this thread before raise returns
          std::this_thread::sleep_for(100ms);
        }
      });
      bool found = false;
      for (auto until = std::chrono::steady_clock::now() + 10s;
           !found && std::chrono::steady_clock::now() < until;) {
        skein::sleep_for(5ms);
        found = err.count("\"main\" parked: sleep") > 0;
      }
      stop = true;
      sender.join();  // before the runtime ends and gives SIGUSR1 back its default
      return found;
    });
    CHECK(seen);
  }

  TEST_CASE("without dump_signal a runtime leaves every signal's disposition alone") {
    OwnHandler own(SIGUSR1);
    const auto before = disposition(SIGUSR1);
    {
      skein::Runtime rt(options_with(0));
      CHECK((disposition(SIGUSR1).sa_handler == before.sa_handler));
      CHECK((disposition(SIGQUIT).sa_handler == SIG_DFL));
      rt.spawn_on(0, [] {}).join();
    }
    CHECK((disposition(SIGUSR1).sa_handler == before.sa_handler));
    own_handler_calls = 0;
    ::raise(SIGUSR1);
    CHECK(own_handler_calls.load() == 1);
  }

  TEST_CASE("the last runtime holding a signal restores the disposition it found") {
    CaptureStderr err;
    OwnHandler own(SIGUSR1);
    {
      std::optional<skein::Runtime> a(std::in_place, options_with(SIGUSR1));
      CHECK((disposition(SIGUSR1).sa_handler != own_handler));
      {
        skein::Runtime b(options_with(SIGUSR1));
        a.reset();  // b still holds it
        CHECK((disposition(SIGUSR1).sa_handler != own_handler));
        own_handler_calls = 0;
        ::raise(SIGUSR1);
        CHECK(err.wait_for("skein: "));
        CHECK(own_handler_calls.load() == 0);
      }
      CHECK((disposition(SIGUSR1).sa_handler == own_handler));
    }
    own_handler_calls = 0;
    ::raise(SIGUSR1);
    CHECK(own_handler_calls.load() == 1);
  }

  TEST_CASE("two runtimes holding different signals both dump") {
    CaptureStderr err;
    OwnHandler own1(SIGUSR1);
    OwnHandler own2(SIGUSR2);
    {
      skein::Runtime a(options_with(SIGUSR1));
      skein::Runtime b(options_with(SIGUSR2));
      skein::Event go;
      std::atomic<int> waiting{0};
      auto fa = a.spawn_on(0, skein::FiberOptions{"in-a"}, [&] {
        ++waiting;
        go.wait();
      });
      auto fb = b.spawn_on(0, skein::FiberOptions{"in-b"}, [&] {
        ++waiting;
        go.wait();
      });
      while (waiting < 2) std::this_thread::sleep_for(1ms);
      // A dump may come between a fiber's announcement and its park: then ask again.
      CHECK(dumps_until(err, SIGUSR1, "\"in-a\" parked", 1));
      CHECK(dumps_until(err, SIGUSR2, "\"in-b\" parked", 1));
      CHECK(err.count("\"in-a\" parked") >= 2);  // SIGUSR2's dump covers runtime a too
      CHECK(dumps_until(err, SIGUSR1, "\"in-b\" parked", 2));
      go.set();
      fa.join();
      fb.join();
    }
    CHECK((disposition(SIGUSR1).sa_handler == own_handler));
    CHECK((disposition(SIGUSR2).sa_handler == own_handler));
  }

  TEST_CASE("a signal that cannot be caught, or that skein needs, is refused") {
    for (const int sig : {SIGKILL, SIGSTOP, SIGSEGV, SIGRTMAX - 2, -1, NSIG}) {
      CAPTURE(sig);
      try {
        skein::Runtime rt(options_with(sig));
        FAIL("accepted");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::invalid_argument);
      }
    }
  }
}
