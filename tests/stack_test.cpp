// Stacks: guard pages (both kinds), the stack-overflow report (death tests in a child process),
// pool reuse, and what a parked fiber costs in memory mappings.
#include "skip.hpp"

#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <algorithm>
#include <set>
#include <system_error>
#include <thread>

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

struct ChildResult {
  int status = 0;
  std::string err;  // what the child wrote to stderr
  bool aborted() const { return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT; }
};

// Runs `body` in a forked child with stderr captured; the child's death is the test's evidence.
ChildResult run_in_child(const std::function<void()>& body) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    dup2(pipefd[1], STDERR_FILENO);
    body();
    _exit(0);
  }
  close(pipefd[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    r.err.append(buf, static_cast<std::size_t>(n));
  }
  close(pipefd[0]);
  REQUIRE(waitpid(pid, &r.status, 0) == pid);
  return r;
}

[[gnu::noinline]] int recurse(int depth) {
  volatile char frame[256];
  frame[0] = static_cast<char>(depth);
  if (depth > 1'000'000'000) return 0;  // never: keeps the compiler from calling it infinite
  return recurse(depth + 1) + frame[0];
}

// Frames of 24 KiB: on a 64 KiB stack the third one starts about 8 KiB below the stack, past the
// 4 KiB guard page, unless stack-clash probing touches each page on the way down.
[[gnu::noinline]] int recurse_big(int depth) {
  volatile char frame[24 * 1024];
  frame[0] = static_cast<char>(depth);
  frame[sizeof frame - 1] = 1;
  if (depth > 1'000'000'000) return 0;
  return recurse_big(depth + 1) + frame[0] + frame[sizeof frame - 1];
}

std::size_t mapping_count() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}

// Parks `fibers` fibers and returns how many mappings that added.
std::size_t mappings_for_parked_fibers(int fibers) {
  std::size_t added = 0;
  skein::run([&] {
    std::vector<skein::Task<void>> tasks;
    const std::size_t before = mapping_count();
    bool release = false;
    for (int i = 0; i < fibers; ++i)
      tasks.push_back(skein::spawn([&release] {
        while (!release) skein::sleep_for(1ms);
      }));
    skein::yield();  // every fiber has started and parked
    added = mapping_count() - before;
    release = true;
    for (auto& t : tasks) t.join();
  });
  return added;
}

// True if the page holding `p` is inaccessible: write(2) from it fails with EFAULT.
bool page_is_guarded(const void* p) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const bool guarded = write(fds[1], p, 1) < 0 && errno == EFAULT;
  close(fds[0]);
  close(fds[1]);
  return guarded;
}

bool page_is_resident(const void* p) {
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  unsigned char v = 0;
  void* start = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) & ~(page - 1));
  REQUIRE(mincore(start, 1, &v) == 0);
  return v & 1;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SKEIN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SKEIN_TEST_SANITIZED 1
#endif
#endif

struct GuardModeScope {
  explicit GuardModeScope(skein::GuardMode m) { skein::set_guard_mode(m); }
  ~GuardModeScope() { skein::set_guard_mode(skein::GuardMode::automatic); }
};

}  // namespace

TEST_SUITE("stack") {
  TEST_CASE("the guard mode in use is a concrete one") {
    const skein::GuardMode m = skein::effective_guard_mode();
    CHECK((m == skein::GuardMode::madvise || m == skein::GuardMode::mprotect));
    const std::string how = m == skein::GuardMode::madvise ? "MADV_GUARD_INSTALL" : "mprotect";
    MESSAGE("guard pages by " << how);
  }

  TEST_CASE("a finished fiber's stack is reused by the next one") {
    skein::run([] {
      auto where = [] {
        int local = 0;
        return reinterpret_cast<std::uintptr_t>(&local);
      };
      const std::uintptr_t first = skein::spawn(where).join();
      const std::uintptr_t second = skein::spawn(where).join();
      CHECK(first == second);
    });
  }

  TEST_CASE("stack overflow in a fiber names the fiber and aborts") {
    for (skein::GuardMode mode : {skein::GuardMode::automatic, skein::GuardMode::mprotect}) {
      CAPTURE(static_cast<int>(mode));
      const ChildResult r = run_in_child([mode] {
        skein::set_guard_mode(mode);
        skein::run([] {
          skein::spawn(skein::FiberOptions{"deep", 64 * 1024}, [] { return recurse(0); }).join();
        });
      });
      CAPTURE(r.err);
      CHECK(r.aborted());
      CHECK(r.err.find("skein: stack overflow in fiber #2 \"deep\" (stack 64 KiB") != std::string::npos);
    }
  }

  TEST_CASE("stack overflow on a worker thread that never mapped a stack is reported too") {
    // The fiber's stack comes from the spawning (plain) thread; the worker running it must still
    // have the handler's alternate signal stack.
    const ChildResult r = run_in_child([] {
      skein::Runtime rt(skein::RuntimeOptions{2});
      rt.spawn_on(1, skein::FiberOptions{"deep-on-worker", 64 * 1024}, [] { return recurse(0); }).join();
    });
    CAPTURE(r.err);
    CHECK(r.aborted());
    CHECK(r.err.find("\"deep-on-worker\" (stack 64 KiB") != std::string::npos);
  }

  TEST_CASE("a frame larger than the guard page still lands on it (stack-clash probing)") {
    const ChildResult r = run_in_child([] {
      skein::run([] {
        skein::spawn(skein::FiberOptions{"big-frames", 64 * 1024}, [] { return recurse_big(0); }).join();
      });
    });
    CAPTURE(r.err);
    CHECK(r.aborted());
    CHECK(r.err.find("stack overflow in fiber #2 \"big-frames\"") != std::string::npos);
  }

  TEST_CASE("stack overflow in a generator body is reported as such") {
    const ChildResult r = run_in_child([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) { yield(recurse(0)); });
      g.next();
    });
    CAPTURE(r.err);
    CHECK(r.aborted());
    CHECK(r.err.find("skein: stack overflow in a coroutine") != std::string::npos);
  }

  TEST_CASE("other segmentation faults are left to the previous handler") {
    const ChildResult r = run_in_child([] {
      skein::run([] {
        volatile int* nowhere = nullptr;
        *nowhere = 1;
      });
    });
    CAPTURE(r.err);
    CHECK(!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0));
    CHECK(r.err.find("stack overflow") == std::string::npos);
  }

  TEST_CASE("a SIGSEGV sent by someone (not a fault) is not swallowed") {
    const ChildResult r = run_in_child([] {
      skein::run([] {});  // installs skein's handler
      raise(SIGSEGV);
      std::fputs("survived raise(SIGSEGV)\n", stderr);
    });
    CAPTURE(r.err);
    CHECK(!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0));
    CHECK(r.err.find("survived") == std::string::npos);
  }

  TEST_CASE("a task destroyed after its thread's stack pool (static destruction) frees its stack") {
    const ChildResult r = run_in_child([] {
      static skein::Task<int> kept;
      kept = skein::run([] { return skein::spawn([] { return 1; }); });
      std::exit(0);  // thread_local pool first, then `kept`
    });
    CAPTURE(r.err);
    CHECK(WIFEXITED(r.status));
    CHECK(WEXITSTATUS(r.status) == 0);
  }

  TEST_CASE("generators made after their thread's stack pool is destroyed get stacks of their own") {
    static std::atomic<int> outcome{0};  // 1: two distinct stacks that both ran; 2: not
    struct Late {
      ~Late() {
        auto body = [](skein::Yield<std::uintptr_t>& yield) {
          volatile char here = 0;
          yield(reinterpret_cast<std::uintptr_t>(&here));
          yield(7);
        };
        skein::Generator<std::uintptr_t> a(body), b(body);
        const std::uintptr_t pa = a.next().value_or(0), pb = b.next().value_or(0);
        const std::uintptr_t gap = pa > pb ? pa - pb : pb - pa;
        outcome = gap >= skein::min_stack_size && a.next() == 7u && b.next() == 7u ? 1 : 2;
      }
    };
    std::thread t([] {
      thread_local Late late;  // constructed before the thread's stack pool, so destroyed after it
      (void)&late;
      skein::Generator<int> first([](skein::Yield<int>& yield) { yield(1); });
      CHECK(first.next() == 1);
    });
    t.join();
    CHECK(outcome == 1);
  }

  TEST_CASE("a coroutine that swallows its forced unwind and yields again aborts loudly") {
    const ChildResult r = run_in_child([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) {
        for (;;) {
          try {
            yield(1);
          } catch (...) {  // wrong: swallows the unwind
          }
        }
      });
      g.next();
    });
    CHECK(r.aborted());
    CHECK(r.err.find("caught the forced unwind") != std::string::npos);
  }

  TEST_CASE("an overflow on a reused stack still hits the guard installed when its slot was carved") {
    for (skein::GuardMode mode : {skein::GuardMode::automatic, skein::GuardMode::mprotect}) {
      CAPTURE(static_cast<int>(mode));
      const ChildResult r = run_in_child([mode] {
        skein::set_guard_mode(mode);
        skein::run([] {
          auto where = [] {
            int local = 0;
            return reinterpret_cast<std::uintptr_t>(&local) & ~std::uintptr_t{0xffff};
          };
          const std::uintptr_t first = skein::spawn(where).join();
          if (skein::spawn(where).join() != first) std::fputs("stack not reused\n", stderr);
          skein::spawn(skein::FiberOptions{"deep-reused", 64 * 1024}, [] { return recurse(0); }).join();
        });
      });
      CAPTURE(r.err);
      CHECK(r.aborted());
      CHECK(r.err.find("stack not reused") == std::string::npos);
      CHECK(r.err.find("stack overflow in fiber #4 \"deep-reused\" (stack 64 KiB") != std::string::npos);
    }
  }

  TEST_CASE("stacks released on another thread, or left in an ended thread's cache, are reused") {
    constexpr int n = 1000;
    std::vector<skein::detail::Stack> stacks;
    std::thread([&] {
      for (int i = 0; i < n; ++i) stacks.push_back(skein::detail::acquire_stack(skein::default_stack_size));
    }).join();
    const std::size_t carved = skein::stack_stats().slots_carved;
    std::set<char*> first;
    for (const auto& s : stacks) first.insert(s.lo);
    // Released by a thread that did not map them, which then ends with some in its own cache.
    std::thread([&] {
      for (const auto& s : stacks) skein::detail::release_stack(s);
    }).join();
    stacks.clear();
    std::thread([&] {
      for (int i = 0; i < n; ++i) stacks.push_back(skein::detail::acquire_stack(skein::default_stack_size));
    }).join();
    std::set<char*> second;
    for (const auto& s : stacks) second.insert(s.lo);
    CHECK(skein::stack_stats().slots_carved == carved);
    std::vector<char*> missing;
    std::set_difference(first.begin(), first.end(), second.begin(), second.end(),
                        std::back_inserter(missing));
    CAPTURE(first.size());
    CAPTURE(second.size());
    CHECK(missing.size() == 0);
    for (const auto& s : stacks) skein::detail::release_stack(s);
  }

  TEST_CASE("free stacks idle past the high-water mark go back to the kernel and keep their guards") {
    for (skein::GuardMode mode : {skein::GuardMode::automatic, skein::GuardMode::mprotect}) {
      CAPTURE(static_cast<int>(mode));
      GuardModeScope scope(mode);
      // More than the 1024 free stacks kept resident; each has its top two pages touched.
      std::vector<skein::detail::Stack> idle, triggers;
      for (int i = 0; i < 800; ++i)
        triggers.push_back(skein::detail::acquire_stack(skein::default_stack_size));
      for (int i = 0; i < 2000; ++i) {
        idle.push_back(skein::detail::acquire_stack(skein::default_stack_size));
        idle.back().hi()[-1] = 1;
        idle.back().hi()[-4097] = 1;
      }
      const std::size_t trims = skein::stack_stats().trims;
      for (const auto& s : idle) skein::detail::release_stack(s);
      // A trim takes the stacks no one took for a whole epoch (shortened here to 20 ms), once the
      // demand of the last four epochs has passed: six epochs, each ended by a release that
      // reaches the shared list.
      skein::detail::set_stack_trim_epoch(20);
      for (int round = 0; round < 6; ++round) {
        std::this_thread::sleep_for(25ms);
        for (int i = 0; i < 128; ++i) {  // a thread's cache shares 128 at a time
          skein::detail::release_stack(triggers.back());
          triggers.pop_back();
        }
      }
      skein::detail::set_stack_trim_epoch(250);
      for (const auto& s : triggers) skein::detail::release_stack(s);
      const skein::StackStats st = skein::stack_stats();
      CHECK(st.trims > trims);
      CHECK(st.slots_trimmed > 0);
      int returned = 0;
      for (const auto& s : idle) {
        if (page_is_resident(s.hi() - 1)) continue;
        ++returned;
        CHECK(page_is_guarded(s.lo - 1));  // the guard page, just below the stack
      }
      MESSAGE(returned, " of 2000 idle stacks returned to the kernel");
      CHECK(returned >= 500);
    }
  }

  TEST_CASE("a stack of an unusual size has a mapping and a guard of its own, and is reused") {
    skein::detail::Stack s = skein::detail::acquire_stack(100 * 1024);
    CHECK(s.size == 100 * 1024);
    CHECK(page_is_guarded(s.lo - 1));
    s.hi()[-1] = 1;
    char* const lo = s.lo;
    skein::detail::release_stack(s);
    s = skein::detail::acquire_stack(100 * 1024);
    CHECK(s.lo == lo);
    skein::detail::release_stack(s);
    // A fiber on a larger stack may use more than the default size.
    const int depth = skein::run([] {
      return skein::spawn(skein::FiberOptions{"big", 256 * 1024},
                          [] {
                            volatile char frame[160 * 1024];
                            frame[0] = 1;
                            frame[sizeof frame - 1] = 2;
                            return frame[0] + frame[sizeof frame - 1];
                          })
          .join();
    });
    CHECK(depth == 3);
  }

#if !defined(SKEIN_TEST_SANITIZED)  // the sanitizers reserve terabytes: RLIMIT_AS cannot be set
  TEST_CASE("running out of address space for stacks throws a system_error that says so") {
    const ChildResult r = run_in_child([] {
      std::vector<skein::detail::Stack> held;
      held.reserve(1 << 20);
      std::ifstream status("/proc/self/status");
      long vm_kib = 0;
      for (std::string line; std::getline(status, line);)
        if (line.rfind("VmSize:", 0) == 0) vm_kib = std::stol(line.substr(7));
      const rlimit lim{static_cast<rlim_t>(vm_kib + 32 * 1024) * 1024, RLIM_INFINITY};
      if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(3);
      // qemu-user accepts the limit without applying it (it would bind the emulator itself).
      void* big =
          mmap(nullptr, std::size_t{64} << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (big != MAP_FAILED) _exit(77);
      try {
        for (;;) held.push_back(skein::detail::acquire_stack(skein::default_stack_size));
      } catch (const std::system_error& e) {
        std::fprintf(stderr, "%zu stacks, then: %s\n", held.size(), e.what());
        _exit(e.code() == std::errc::not_enough_memory ? 0 : 4);
      }
    });
    CAPTURE(r.err);
    REQUIRE(WIFEXITED(r.status));
    if (WEXITSTATUS(r.status) == 77) {
      MESSAGE("RLIMIT_AS is not enforced here (an emulator): exhaustion not tested");
      return;
    }
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(r.err.find("skein: reserving address space for fiber stacks") != std::string::npos);
  }
#endif

  // May skip: a Meson test of its own (tests/skip.hpp).
  TEST_CASE("with MADV_GUARD_INSTALL a parked fiber costs no memory mapping" *
            doctest::test_suite("stack-madvise")) {
    if (skein::effective_guard_mode() != skein::GuardMode::madvise) {
      skein_test::skip("kernel without MADV_GUARD_INSTALL");
      return;
    }
    // More fibers than the pool caches, so most stacks are fresh mappings.
    const std::size_t added = mappings_for_parked_fibers(3000);
    MESSAGE("3000 parked fibers added ", added, " mappings");
    CHECK(added < 3000 / 10);  // a handful: the merged stack mappings, allocator growth
  }

  TEST_CASE("with mprotect guards each freshly carved stack costs two mappings") {
    GuardModeScope scope(skein::GuardMode::mprotect);
    const std::size_t carved = skein::stack_stats().slots_carved;
    const std::size_t added = mappings_for_parked_fibers(3000);
    const std::size_t fresh = skein::stack_stats().slots_carved - carved;
    MESSAGE("3000 parked fibers added ", added, " mappings, ", fresh, " freshly carved stacks");
    CHECK(fresh > 0);
    CHECK(added + 16 >= 2 * fresh);  // a guard splits the slab: the guard and the stack above it
    CHECK(added <= 2 * fresh + 16);
  }
}
