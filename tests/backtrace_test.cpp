// Backtraces (runtime/src/backtrace.hpp): a parked fiber unwound from its saved context, the
// running fiber's own stack, symbolisation with names and source lines, a thousand parked fibers.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include "backtrace.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace bt = skein::detail;

// Where the fibers under test park: a channel receive called from a function no other code has.
// Not inlined, and the addition after the call keeps the call from becoming a tail jump.
[[gnu::noinline]] int skein_test_parked_in_here(skein::Channel<int>& ch) {
  const int v = ch.recv().value_or(-1);
  asm volatile("" ::: "memory");
  return v + 1;
}

// The second place, for stacks that fold into two groups. Its body differs from the first's, or
// identical code folding (-fipa-icf, on at -O2) could make the two one function.
[[gnu::noinline]] int skein_test_parked_elsewhere(skein::Channel<int>& ch) {
  const int v = ch.recv().value_or(-1);
  asm volatile("" ::: "memory");
  return v + 2;
}

// A fiber parked inside a generator's body, which its consumer resumed.
[[gnu::noinline]] int skein_test_parked_in_generator(skein::Channel<int>& ch) {
  const int v = ch.recv().value_or(-1);
  asm volatile("" ::: "memory");
  return v + 3;
}

[[gnu::noinline]] int skein_test_consumer_of_generator(skein::Generator<int>& g) {
  const int v = g.next().value_or(-1);
  asm volatile("" ::: "memory");
  return v;
}

// The running fiber's own backtrace, taken two calls deep.
[[gnu::noinline]] std::string skein_test_running_inner() {
  std::uintptr_t pcs[bt::backtrace_max_frames];
  const std::size_t n = bt::unwind_here(pcs, bt::backtrace_max_frames);
  std::string text;
  bt::format_backtrace(text, pcs, n);
  asm volatile("" ::: "memory");
  return text;
}

[[gnu::noinline]] std::string skein_test_running_outer() {
  std::string text = skein_test_running_inner();
  asm volatile("" ::: "memory");
  return text;
}

// A backtrace taken in a signal handler, as a watchdog takes one of a fiber that hogs its worker.
namespace {
std::uintptr_t signal_pcs[bt::backtrace_max_frames];
volatile std::size_t signal_frames = 0;
}  // namespace

extern "C" void skein_test_on_signal(int) {
  signal_frames = bt::unwind_here(signal_pcs, bt::backtrace_max_frames);
}

[[gnu::noinline]] void skein_test_signalled_in_here() {
  std::raise(SIGUSR1);
  asm volatile("" ::: "memory");
}

namespace {

// Under TSan, starting and ending a thousand fibers takes some 15 s (its shadow state per fiber
// stack), none of it in the unwinder: fewer there.
#if defined(__SANITIZE_THREAD__)
constexpr int default_fibers = 100;
#else
constexpr int default_fibers = 1000;
#endif

// The backtrace of a parked (or ready) fiber, formatted.
std::string backtrace_of(const bt::Fiber* f) {
  std::uintptr_t pcs[bt::backtrace_max_frames];
  const std::size_t n = bt::unwind_suspended(*f->resume_at, pcs, bt::backtrace_max_frames);
  std::string text;
  bt::format_backtrace(text, pcs, n);
  return text;
}

bool contains(const std::string& text, const char* what) {
  return text.find(what) != std::string::npos;
}

}  // namespace

TEST_SUITE("debug-bt") {
  TEST_CASE("a parked fiber's backtrace names the function it parked in") {
    if (!bt::backtraces_available()) {
      std::string text;
      bt::format_backtrace(text, nullptr, 0);
      CHECK(text == "(backtraces not built in)\n");
      return;
    }
    skein::run([] {
      skein::Channel<int> ch;
      auto t = skein::spawn([&] { return skein_test_parked_in_here(ch); });
      skein::yield();  // the child runs first, up to its receive
      const bt::Fiber* f = bt::TaskAccess::fiber_of(t);
      REQUIRE(f->state == bt::FiberState::parked);
      const std::string text = backtrace_of(f);
      MESSAGE("parked fiber:\n" << text);
      CHECK(contains(text, "#0 0x"));
      CHECK(contains(text, " in skein_test_parked_in_here(skein::Channel<int>&)"));
      // The receive it waits in is above it, the fiber's body below it.
      CHECK(contains(text, "skein::Channel<int>::recv"));
#if defined(SKEIN_TEST_DEBUG_INFO)
      CHECK(contains(text, "backtrace_test.cpp:"));
#endif
      ch.send(41);
      CHECK(t.join() == 42);
    });
  }

  TEST_CASE("a fiber parked inside a generator shows the body, then the consumer that resumed it") {
    if (!bt::backtraces_available()) return;
    skein::run([] {
      skein::Channel<int> ch;
      auto t = skein::spawn([&] {
        skein::Generator<int> g([&](skein::Yield<int>& yield) { yield(skein_test_parked_in_generator(ch)); });
        return skein_test_consumer_of_generator(g);
      });
      skein::yield();
      const bt::Fiber* f = bt::TaskAccess::fiber_of(t);
      REQUIRE(f->state == bt::FiberState::parked);
      REQUIRE(f->resume_at != f);  // it resumes inside the generator
      std::uintptr_t pcs[bt::backtrace_max_frames];
      std::string text;
      bt::format_backtrace(text, pcs, bt::unwind_parked(*f->resume_at, pcs, bt::backtrace_max_frames));
      MESSAGE("parked inside a generator:\n" << text);
      const auto body = text.find("skein_test_parked_in_generator");
      const auto consumer = text.find("skein_test_consumer_of_generator");
      CHECK(body != std::string::npos);
      CHECK(consumer != std::string::npos);
      CHECK(body < consumer);
      ch.send(1);
      CHECK(t.join() == 4);
    });
  }

  TEST_CASE("the running fiber's backtrace names its callers") {
    if (!bt::backtraces_available()) {
      std::uintptr_t pc = 0;
      CHECK(bt::unwind_here(&pc, 1) == 0);
      return;
    }
    skein::run([] {
      auto t = skein::spawn([] { return skein_test_running_outer(); });
      const std::string text = t.join();
      MESSAGE("running fiber:\n" << text);
      // Frame 0 is the function that asked: unwind_here leaves itself out.
      CHECK(text.rfind("#0 0x", 0) == 0);
      CHECK(text.find("skein_test_running_inner") < text.find('\n'));
      CHECK(contains(text, "skein_test_running_outer"));
    });
    // And on the thread's own stack, outside any fiber.
    CHECK(contains(skein_test_running_outer(), "skein_test_running_outer"));
  }

  TEST_CASE("a backtrace taken in a signal handler reaches the interrupted fiber's frames") {
    if (!bt::backtraces_available()) return;
    struct sigaction act {};
    struct sigaction old {};
    act.sa_handler = skein_test_on_signal;
    REQUIRE(sigaction(SIGUSR1, &act, &old) == 0);
    skein::run([] { skein::spawn([] { skein_test_signalled_in_here(); }).join(); });
    sigaction(SIGUSR1, &old, nullptr);
    std::string text;
    bt::format_backtrace(text, signal_pcs, signal_frames);
    MESSAGE("in the handler:\n" << text);
    CHECK(contains(text, "skein_test_on_signal"));
    CHECK(contains(text, "skein_test_signalled_in_here()"));
#if defined(SKEIN_TEST_LIBDW)
    CHECK(contains(text, "Scheduler::fiber_entry"));  // through the signal frame to the fiber's bottom
#endif
  }

  TEST_CASE("a return address is symbolised once, then served from the cache") {
    if (!bt::backtraces_available()) return;
    std::uintptr_t pc = 0;
    REQUIRE(bt::unwind_here(&pc, 1) == 1);
    const auto& first = bt::symbolize(pc);
    const auto& again = bt::symbolize(pc);
    CHECK(&first == &again);
    REQUIRE(!first.empty());
#if defined(SKEIN_TEST_LIBDW)
    CHECK(contains(first.back().function, "DOCTEST_ANON_FUNC"));  // this test case's function
#endif
    CHECK(!first.back().inlined);
  }

  TEST_CASE("a thousand parked fibers are unwound, folded by stack and symbolised") {
    if (!bt::backtraces_available()) return;
    skein::run([] {
      // SKEIN_BT_FIBERS=10000 measures more (docs/observability.md); the test itself needs few.
      const char* env = std::getenv("SKEIN_BT_FIBERS");
      const int fibers = env ? std::atoi(env) : default_fibers;
      skein::Channel<int> ch;
      std::vector<skein::Task<int>> tasks;
      tasks.reserve(fibers);
      // Two places to park in, so that the stacks fold into two groups.
      for (int i = 0; i < fibers; ++i)
        tasks.push_back(i % 2 ? skein::spawn([&] { return skein_test_parked_in_here(ch); })
                              : skein::spawn([&] { return skein_test_parked_elsewhere(ch); }));
      const auto parked = [&] {
        for (auto& t : tasks)
          if (bt::TaskAccess::fiber_of(t)->state != bt::FiberState::parked) return false;
        return true;
      };
      for (int round = 0; round < fibers && !parked(); ++round) skein::yield();  // each round runs a batch
      CHECK(parked());  // not REQUIRE: the fibers must still be released below

      using clock = std::chrono::steady_clock;
      std::vector<std::uintptr_t> pcs(static_cast<std::size_t>(fibers) * bt::backtrace_max_frames);
      std::vector<std::size_t> sizes(fibers);
      const auto t0 = clock::now();
      for (int i = 0; i < fibers; ++i)
        sizes[i] = bt::unwind_suspended(*bt::TaskAccess::fiber_of(tasks[i])->resume_at,
                                        &pcs[i * bt::backtrace_max_frames], bt::backtrace_max_frames);
      const auto t1 = clock::now();
      // As a dump does: identical stacks folded, each group symbolised and printed once.
      std::map<std::vector<std::uintptr_t>, std::size_t> groups;
      for (int i = 0; i < fibers; ++i) {
        const std::uintptr_t* p = &pcs[i * bt::backtrace_max_frames];
        ++groups[std::vector<std::uintptr_t>(p, p + sizes[i])];
      }
      const auto t2 = clock::now();
      std::string dump;
      std::size_t here = 0, elsewhere = 0;
      for (const auto& [stack, count] : groups) {
        std::string text;
        bt::format_backtrace(text, stack.data(), stack.size(), "    ");
        if (contains(text, "skein_test_parked_in_here")) here += count;
        if (contains(text, "skein_test_parked_elsewhere")) elsewhere += count;
        dump += std::to_string(count) + " fibers:\n" + text;
      }
      const auto t3 = clock::now();
      const auto us = [](auto d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
      MESSAGE(fibers << " parked fibers: unwound in " << us(t1 - t0) << " us, folded into " << groups.size()
                     << " stacks in " << us(t2 - t1) << " us, symbolised and formatted (" << dump.size()
                     << " bytes) in " << us(t3 - t2) << " us");
      CHECK(groups.size() == 2);
      CHECK(here == static_cast<std::size_t>(fibers / 2));
      CHECK(elsewhere == static_cast<std::size_t>(fibers - fibers / 2));

      for (int i = 0; i < fibers; ++i) ch.send(i);
      long sum = 0;
      for (auto& t : tasks) sum += t.join();
      const long n = fibers;
      CHECK(sum == n * (n - 1) / 2 + n / 2 + 2 * (n - n / 2));  // the values sent, plus 1 or 2 each
    });
  }
}

// ---- the dump, the running fibers and the hog watchdog ----------------------------------------

// A fiber that keeps its worker busy, in a function of its own, until `stop` or `for_how_long`.
[[gnu::noinline]] long skein_test_hogging_here(std::chrono::milliseconds for_how_long,
                                               const std::atomic<bool>* stop = nullptr) {
  unsigned long x = 1;
  const auto until = std::chrono::steady_clock::now() + for_how_long;
  while (std::chrono::steady_clock::now() < until && !(stop && stop->load(std::memory_order_relaxed)))
    x = x * 31 + 7;
  asm volatile("" ::: "memory");
  return static_cast<long>(x & 0xffff);
}

namespace {

// Collects the watchdog's reports (it calls from its own thread).
struct HogReports {
  std::mutex mutex;
  std::vector<skein::debug::HogReport> reports;
  std::function<void(const skein::debug::HogReport&)> callback() {
    return [this](const skein::debug::HogReport& r) {
      std::lock_guard g(mutex);
      reports.push_back(r);
    };
  }
  std::vector<skein::debug::HogReport> take() {
    std::lock_guard g(mutex);
    return reports;
  }
};

std::size_t threads_in_process() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

}  // namespace

TEST_SUITE("debug-bt") {
  TEST_CASE("a dump folds fibers parked with the same stack and prints that stack once, named") {
    if (!bt::backtraces_available()) return;
    skein::run([] {
      skein::Channel<int> ch;
      std::vector<skein::Task<int>> tasks;
      for (int i = 0; i < 20; ++i)
        tasks.push_back(i % 4 ? skein::spawn([&] { return skein_test_parked_in_here(ch); })
                              : skein::spawn([&] { return skein_test_parked_elsewhere(ch); }));
      for (int i = 0; i < 3; ++i) skein::yield();
      std::ostringstream out;
      skein::debug::dump(out, {.stats = false});
      const std::string text = out.str();
      MESSAGE(text.substr(0, 3000));
      const auto here = text.find("\n15 fibers parked: channel recv");
      const auto elsewhere = text.find("\n5 fibers parked: channel recv");
      REQUIRE(here != std::string::npos);
      REQUIRE(elsewhere != std::string::npos);
      CHECK(here < elsewhere);  // the larger group first
      // Each group's stack follows it, once.
      CHECK(text.find("skein_test_parked_in_here", here) < elsewhere);
      CHECK(text.find("skein_test_parked_elsewhere", elsewhere) != std::string::npos);
      CHECK(text.find("skein_test_parked_in_here", elsewhere) == std::string::npos);
      // The caller's own stack, unwound in place.
      CHECK(text.find("\"main\" running (runtime ") != std::string::npos);
      CHECK(text.find("DOCTEST_ANON_FUNC") != std::string::npos);
      // Without backtraces the spawn sites fold them: the two lambdas are two lines of this file.
      std::ostringstream plain;
      skein::debug::dump(plain, {.stats = false, .backtraces = false});
      CHECK(plain.str().find("skein_test_parked_in_here") == std::string::npos);
      CHECK(plain.str().find("\n15 fibers parked: channel recv") != std::string::npos);
      ch.close();
      for (auto& t : tasks) t.join();
    });
  }

  TEST_CASE("a fiber running on another worker is reported running, with the stack it has then") {
    if (!bt::backtraces_available()) return;
    skein::run(skein::RuntimeOptions{2}, [] {
      std::atomic<bool> started{false}, stop{false};
      auto busy = skein::spawn_on(1, skein::FiberOptions{"busy"}, [&] {
        started = true;
        return skein_test_hogging_here(std::chrono::seconds(20), &stop);
      });
      while (!started) skein::sleep_for(std::chrono::milliseconds(1));
      // Worker 1 answers the snapshot only once its fiber stops; the signal takes that fiber's
      // record and stack at once.
      auto stopper = skein::spawn([&] {
        skein::sleep_for(std::chrono::milliseconds(100));
        stop = true;
      });
      std::optional<skein::debug::FiberInfo> seen;
      for (auto& f : skein::debug::fibers({.backtraces = true}))
        if (f.id == busy.id()) seen = f;
      stopper.join();
      busy.join();
      REQUIRE(seen);
      CHECK(seen->state == skein::debug::FiberState::running);
      CHECK(seen->worker == 1);
      CHECK(seen->name == "busy");
      const std::string text = skein::debug::format_frames(seen->frames);
      MESSAGE(text);
      CHECK(contains(text, "skein_test_hogging_here"));
    });
  }

  TEST_CASE(
      "a 300 ms hog is reported once, naming its fiber, with a backtrace through the hogging function") {
    if (!bt::backtraces_available()) return;
    HogReports hogs;
    skein::RuntimeOptions options{2};
    options.hog_threshold = std::chrono::milliseconds(100);
    options.on_hog = hogs.callback();
    std::uint64_t id = 0;
    skein::run(options, [&] {
      auto hog = skein::spawn_on(1, skein::FiberOptions{"hog"},
                                 [] { return skein_test_hogging_here(std::chrono::milliseconds(300)); });
      id = hog.id();
      hog.join();
      skein::sleep_for(std::chrono::milliseconds(150));  // a second report would come by now
    });
    const auto reports = hogs.take();
    REQUIRE(reports.size() == 1);
    const auto& r = reports[0];
    CHECK(r.fiber.id == id);
    CHECK(r.fiber.name == "hog");
    CHECK(r.fiber.worker == 1);
    CHECK(r.fiber.state == skein::debug::FiberState::running);
    CHECK(r.running_for >= std::chrono::milliseconds(100));
    CHECK(contains(r.fiber.spawned_at.file_name(), "backtrace_test.cpp"));
    const std::string text = skein::debug::format_frames(r.fiber.frames);
    MESSAGE(skein::debug::describe(r) << "\n" << text);
    CHECK(contains(text, "skein_test_hogging_here"));
    CHECK(contains(skein::debug::describe(r), "\"hog\" has run for "));
  }

  TEST_CASE(
      "a fiber that busy-loops but yields every millisecond is never reported, and the monitor ends with the "
      "runtime") {
    HogReports hogs;
    const std::size_t threads_before = threads_in_process();
    {
      skein::RuntimeOptions options{2};
      options.hog_threshold = std::chrono::milliseconds(50);
      options.on_hog = hogs.callback();
      skein::Runtime rt(options);
      CHECK(threads_in_process() == threads_before + 3);  // two workers and the monitor
      auto polite = rt.spawn_on(0, [] {
        for (int i = 0; i < 300; ++i) {
          skein_test_hogging_here(std::chrono::milliseconds(1));
          skein::yield();
        }
      });
      auto sleeper = rt.spawn_on(1, [] { skein::sleep_for(std::chrono::milliseconds(200)); });
      polite.join();
      sleeper.join();
    }
    CHECK(hogs.take().empty());
    CHECK(threads_in_process() == threads_before);
  }
}
