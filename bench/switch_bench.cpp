// Context switch, spawn and scheduling costs of skein, each next to a baseline measured in the same
// run (machines are noisy: only ratios within one run mean anything). After Google Benchmark's own
// output comes a ratio table checked against the targets in DESIGN.md; the targets inform, they
// never fail the run.
//
//   switch_bench [--quick] [Google Benchmark flags...]     (--help for details)

#include <benchmark/benchmark.h>

#include <boost/context/detail/fcontext.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/pooled_fixedsize_stack.hpp>

#include <skein/detail/exec_context.hpp>
#include <skein/generator.hpp>
#include <skein/run.hpp>
#include <skein/stack.hpp>
#include <skein/task.hpp>

#include "context.hpp"
#include "ratio_report.hpp"
#include "stackless_generator.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

namespace {

namespace bctx = boost::context::detail;

constexpr const char* kDefaultOut = "out/bench/switch_bench.json";
constexpr const char* kQuickMinTime = "0.01";

// A stack from skein's pool, so the raw-switch benchmarks run on exactly what fibers run on.
class PoolStack {
 public:
  PoolStack() : s_(skein::detail::acquire_stack(skein::default_stack_size)) {}
  ~PoolStack() { skein::detail::release_stack(s_); }
  PoolStack(const PoolStack&) = delete;
  PoolStack& operator=(const PoolStack&) = delete;
  char* top() const noexcept { return s_.hi(); }
  char* base() const noexcept { return s_.lo; }
  std::size_t size() const noexcept { return s_.size; }

 private:
  skein::detail::Stack s_;
};

// ---- raw switch round trips ----------------------------------------------------------------
//
// The partner context of each round trip hands control straight back, forever. When the benchmark
// ends it is simply abandoned: nothing on its stack needs destroying.

#if SKEIN_BENCH_HAS_ASM
[[noreturn]] void skein_echo(skein::detail::Transfer t) noexcept {
  for (;;) t = skein_jump_fcontext(t.ctx, t.data);
}

void BM_switch_skein_asm(benchmark::State& state) {
  PoolStack stack;
  void* ctx = skein_make_fcontext(stack.top(), stack.size(), &skein_echo);
  for (auto _ : state) {
    ctx = skein_jump_fcontext(ctx, nullptr).ctx;
    benchmark::DoNotOptimize(ctx);
  }
}
BENCHMARK(BM_switch_skein_asm)->UseRealTime();

#if defined(__x86_64__)
// The two ways the x86-64 switch restores the FP control words, whichever the CPU vendor picked at
// start-up for BM_switch_skein_asm: compare them and load only on a difference (chosen on Intel),
// or load MXCSR always and compare only the x87 word (chosen on AMD).
void switch_skein_asm_fp_mode(benchmark::State& state, unsigned char mode) {
  const unsigned char picked = skein_switch_fp_mode.mode;
  skein_switch_fp_mode.mode = mode;
  BM_switch_skein_asm(state);
  skein_switch_fp_mode.mode = picked;
}
void BM_switch_skein_asm_fp_compare(benchmark::State& state) {
  switch_skein_asm_fp_mode(state, skein::detail::switch_fp_compare);
}
BENCHMARK(BM_switch_skein_asm_fp_compare)->UseRealTime();
void BM_switch_skein_asm_fp_load(benchmark::State& state) {
  switch_skein_asm_fp_mode(state, skein::detail::switch_fp_load);
}
BENCHMARK(BM_switch_skein_asm_fp_load)->UseRealTime();
#endif
#endif

[[noreturn]] void boost_echo(bctx::transfer_t t) noexcept {
  for (;;) t = bctx::jump_fcontext(t.fctx, t.data);
}

void BM_switch_boost_fcontext(benchmark::State& state) {
  PoolStack stack;
  bctx::fcontext_t ctx = bctx::make_fcontext(stack.top(), stack.size(), &boost_echo);
  for (auto _ : state) {
    ctx = bctx::jump_fcontext(ctx, nullptr).fctx;
    benchmark::DoNotOptimize(ctx);
  }
}
BENCHMARK(BM_switch_boost_fcontext)->UseRealTime();

// makecontext passes only ints to the entry function, so the pair lives in a global.
struct UcontextPair {
  ucontext_t caller;
  ucontext_t echo;
};
UcontextPair* g_ucontext = nullptr;

void ucontext_echo() {
  for (;;) swapcontext(&g_ucontext->echo, &g_ucontext->caller);
}

void BM_switch_ucontext(benchmark::State& state) {
  PoolStack stack;
  auto pair = std::make_unique<UcontextPair>();
  g_ucontext = pair.get();
  getcontext(&pair->echo);
  pair->echo.uc_stack.ss_sp = stack.base();
  pair->echo.uc_stack.ss_size = stack.size();
  pair->echo.uc_link = nullptr;
  makecontext(&pair->echo, &ucontext_echo, 0);
  for (auto _ : state) {
    swapcontext(&pair->caller, &pair->echo);
    benchmark::ClobberMemory();
  }
  g_ucontext = nullptr;
}
BENCHMARK(BM_switch_ucontext)->UseRealTime();

// skein's own wrapper around the switch (exception state, running context), as a generator sees
// it: the gap to the raw asm switch is what the runtime adds per switch.
void BM_generator_next(benchmark::State& state) {
  skein::Generator<int> gen([](skein::Yield<int>& yield) {
    for (int i = 0;; ++i) yield(i);
  });
  for (auto _ : state) benchmark::DoNotOptimize(gen.next());
}
BENCHMARK(BM_generator_next)->UseRealTime();

// The same generator as a C++20 stackless coroutine: the compiler's frame instead of a stack, a
// resume through the frame's resume pointer instead of a switch.
skein_bench::StacklessGenerator<int> count_up() {
  for (int i = 0;; ++i) co_yield i;
}

void BM_generator_next_cpp20(benchmark::State& state) {
  auto gen = count_up();
  for (auto _ : state) benchmark::DoNotOptimize(gen.next());
}
BENCHMARK(BM_generator_next_cpp20)->UseRealTime();

// ---- OS-thread handoff ---------------------------------------------------------------------

// A two-thread ping-pong on one futex word. Each side blocks in the kernel until the other hands
// over, so a round trip is two wakeups and two sleeps: the cost a fiber switch exists to avoid.
// No spinning: a spin would measure cache-line transfer, not a handoff.
class Handoff {
 public:
  void to_partner() noexcept { pass(kPartner); }
  void to_caller() noexcept { pass(kCaller); }
  void stop() noexcept {
    turn_.store(kStop, std::memory_order_release);
    wake();
  }
  // Blocks the partner until it is its turn; false once told to stop.
  bool partner_wait() noexcept {
    std::uint32_t v;
    while ((v = turn_.load(std::memory_order_acquire)) == kCaller) wait(kCaller);
    return v != kStop;
  }

 private:
  static constexpr std::uint32_t kCaller = 0, kPartner = 1, kStop = 2;

  // Hands the turn to the other side and sleeps until it comes back (or the partner is stopped).
  void pass(std::uint32_t to) noexcept {
    turn_.store(to, std::memory_order_release);
    wake();
    while (turn_.load(std::memory_order_acquire) == to) wait(to);
  }
  void wait(std::uint32_t expected) noexcept {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&turn_), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
  }
  void wake() noexcept {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&turn_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }

  alignas(64) std::atomic<std::uint32_t> turn_{kCaller};
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
};

// The same ping-pong through std::mutex + std::condition_variable: how threads usually hand work
// to each other. Each handoff takes the mutex and goes through the condvar's futex as well.
class CondvarHandoff {
 public:
  void to_partner() { pass(kPartner); }
  void to_caller() { pass(kCaller); }
  void stop() {
    {
      std::lock_guard lock(mu_);
      turn_ = kStop;
    }
    cv_.notify_one();
  }
  bool partner_wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return turn_ != kCaller; });
    return turn_ != kStop;
  }

 private:
  static constexpr int kCaller = 0, kPartner = 1, kStop = 2;
  void pass(int to) {
    std::unique_lock lock(mu_);
    turn_ = to;
    cv_.notify_one();
    cv_.wait(lock, [this, to] { return turn_ != to; });
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int turn_ = kCaller;
};

bool pin_self_to(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

template <class HandoffT>
void thread_handoff(benchmark::State& state, int partner_cpu) {
  cpu_set_t saved;
  CPU_ZERO(&saved);
  if (pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0 || !CPU_ISSET(0, &saved) ||
      !CPU_ISSET(partner_cpu, &saved)) {
    state.SkipWithError("CPU 0 or the partner CPU is not available to this process");
    return;
  }
  if (!pin_self_to(0)) {
    state.SkipWithError("pthread_setaffinity_np failed");
    return;
  }
  HandoffT handoff;
  std::atomic<bool> pinned{false};
  std::thread partner([&] {
    pinned.store(pin_self_to(partner_cpu));
    while (handoff.partner_wait()) handoff.to_caller();
  });
  for (auto _ : state) handoff.to_partner();
  handoff.stop();
  partner.join();
  pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  if (!pinned.load()) state.SkipWithError("could not pin the partner thread");
}

void BM_thread_handoff_same_core(benchmark::State& state) {
  thread_handoff<Handoff>(state, 0);
}
BENCHMARK(BM_thread_handoff_same_core)->UseRealTime();

void BM_thread_handoff_two_cores(benchmark::State& state) {
  thread_handoff<Handoff>(state, 1);
}
BENCHMARK(BM_thread_handoff_two_cores)->UseRealTime();

void BM_thread_handoff_condvar_same_core(benchmark::State& state) {
  thread_handoff<CondvarHandoff>(state, 0);
}
BENCHMARK(BM_thread_handoff_condvar_same_core)->UseRealTime();

// ---- spawn + run + join of an empty body ---------------------------------------------------

// Runs `body` on a fiber inside skein::run. Its stack is larger than the default because Google
// Benchmark's bookkeeping runs on it too.
template <class F>
void in_skein(F&& body) {
  skein::run([&] { skein::spawn(skein::FiberOptions{"bench", 256 * 1024}, body).join(); });
}

void BM_spawn_join_skein(benchmark::State& state) {
  in_skein([&] {
    for (auto _ : state) {
      auto task = skein::spawn([] {});
      task.join();
    }
  });
}
BENCHMARK(BM_spawn_join_skein)->UseRealTime();

void BM_spawn_join_std_thread(benchmark::State& state) {
  for (auto _ : state) {
    std::thread t([] {});
    t.join();
  }
}
BENCHMARK(BM_spawn_join_std_thread)->UseRealTime();

// Boost.Fiber as it comes: each fiber's stack is malloc'd and freed.
void BM_spawn_join_boost_fiber(benchmark::State& state) {
  for (auto _ : state) {
    boost::fibers::fiber f([] {});
    f.join();
  }
}
BENCHMARK(BM_spawn_join_boost_fiber)->UseRealTime();

// Boost.Fiber with a stack pool of skein's stack size: the fairest comparison of the rest.
void BM_spawn_join_boost_fiber_pooled(benchmark::State& state) {
  boost::fibers::pooled_fixedsize_stack pool(skein::default_stack_size);
  for (auto _ : state) {
    boost::fibers::fiber f(std::allocator_arg, pool, [] {});
    f.join();
  }
}
BENCHMARK(BM_spawn_join_boost_fiber_pooled)->UseRealTime();

// ---- yield through K live fibers -----------------------------------------------------------

// K fibers loop on yield() next to the benchmark's own fiber, so each iteration (one yield of the
// benchmark fiber) is a round of K + 1 yields. ns_per_yield divides the round out: one switch into
// a fiber and back out through the scheduler. At large K every switch lands on a cold stack, so
// this is the cache and TLB cost of a big ready queue as much as the switch.
void BM_skein_yield_k_fibers(benchmark::State& state) {
  const auto k = static_cast<std::size_t>(state.range(0));
  in_skein([&] {
    bool stop = false;
    for (std::size_t i = 0; i < k; ++i)
      skein::spawn([&stop] {
        while (!stop) skein::yield();
      }).detach();
    skein::yield();  // the first round starts every fiber; leave its page faults out
    const auto t0 = std::chrono::steady_clock::now();
    for (auto _ : state) skein::yield();
    const auto t1 = std::chrono::steady_clock::now();
    stop = true;
    const double yields = static_cast<double>(state.iterations()) * static_cast<double>(k + 1);
    state.counters["ns_per_yield"] = std::chrono::duration<double, std::nano>(t1 - t0).count() / yields;
  });
}
BENCHMARK(BM_skein_yield_k_fibers)->Arg(10)->Arg(1000)->Arg(100000)->UseRealTime();

// ---- the ratio table -----------------------------------------------------------------------

using skein_bench::Absolute;
using skein_bench::Goal;
using skein_bench::Ratio;
using skein_bench::Results;

const Ratio kRatios[] = {
    {"asm switch / boost switch", {"BM_switch_skein_asm"}, {"BM_switch_boost_fcontext"}, Goal::at_most, 0.70},
    {"same-core thread handoff (futex) / asm switch",
     {"BM_thread_handoff_same_core"},
     {"BM_switch_skein_asm"},
     Goal::at_least,
     600},
    {"same-core thread handoff (condvar) / asm switch",
     {"BM_thread_handoff_condvar_same_core"},
     {"BM_switch_skein_asm"},
     Goal::at_least,
     600},
    {"two-core thread handoff (futex) / asm switch",
     {"BM_thread_handoff_two_cores"},
     {"BM_switch_skein_asm"}},
    {"ucontext swapcontext / asm switch", {"BM_switch_ucontext"}, {"BM_switch_skein_asm"}},
    {"asm switch, FP words compared (Intel's path) / boost switch",
     {"BM_switch_skein_asm_fp_compare"},
     {"BM_switch_boost_fcontext"}},
    {"asm switch, MXCSR always loaded (AMD's path) / boost switch",
     {"BM_switch_skein_asm_fp_load"},
     {"BM_switch_boost_fcontext"}},
    {"skein Generator::next / asm switch", {"BM_generator_next"}, {"BM_switch_skein_asm"}},
    {"skein Generator::next / C++20 stackless generator next",
     {"BM_generator_next"},
     {"BM_generator_next_cpp20"}},
    {"std::thread spawn+join / skein spawn+join",
     {"BM_spawn_join_std_thread"},
     {"BM_spawn_join_skein"},
     Goal::at_least,
     250},
    {"boost.fiber spawn+join / skein spawn+join",
     {"BM_spawn_join_boost_fiber"},
     {"BM_spawn_join_skein"},
     Goal::at_least,
     3},
    {"boost.fiber (pooled stacks) spawn+join / skein spawn+join",
     {"BM_spawn_join_boost_fiber_pooled"},
     {"BM_spawn_join_skein"}},
    {"yield with 100000 fibers / yield with 10 fibers",
     {"BM_skein_yield_k_fibers/100000", "ns_per_yield"},
     {"BM_skein_yield_k_fibers/10", "ns_per_yield"}},
};

const Absolute kAbsolutes[] = {
    {"switch round trip, skein asm", {"BM_switch_skein_asm"}},
    {"switch round trip, Boost.Context fcontext", {"BM_switch_boost_fcontext"}},
    {"switch round trip, ucontext swapcontext", {"BM_switch_ucontext"}},
    {"switch round trip, skein asm, FP words compared", {"BM_switch_skein_asm_fp_compare"}},
    {"switch round trip, skein asm, MXCSR always loaded", {"BM_switch_skein_asm_fp_load"}},
    {"skein Generator::next (switch there and back)", {"BM_generator_next"}},
    {"C++20 stackless generator next (resume there and back)", {"BM_generator_next_cpp20"}},
    {"thread handoff round trip, same core (futex)", {"BM_thread_handoff_same_core"}},
    {"thread handoff round trip, same core (condvar)", {"BM_thread_handoff_condvar_same_core"}},
    {"thread handoff round trip, two cores (futex)", {"BM_thread_handoff_two_cores"}},
    {"spawn+run+join, skein", {"BM_spawn_join_skein"}},
    {"create+join, std::thread", {"BM_spawn_join_std_thread"}},
    {"create+join, Boost.Fiber", {"BM_spawn_join_boost_fiber"}},
    {"create+join, Boost.Fiber pooled stacks", {"BM_spawn_join_boost_fiber_pooled"}},
    {"yield per fiber, 10 fibers", {"BM_skein_yield_k_fibers/10", "ns_per_yield"}},
    {"yield per fiber, 1000 fibers", {"BM_skein_yield_k_fibers/1000", "ns_per_yield"}},
    {"yield per fiber, 100000 fibers", {"BM_skein_yield_k_fibers/100000", "ns_per_yield"}},
};

void print_tables(const Results& results) {
  // This run itself keeps about one CPU busy.
  skein_bench::print_absolutes(
      "skein switch_bench: time per round trip (there and back), median of repetitions", kAbsolutes, results,
      1);
  skein_bench::print_ratios("ratios of wall times from this run (informational: a MISS never fails the run)",
                            kRatios, results);
}

void print_usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [Google Benchmark flags...]\n"
      "\n"
      "Measures skein's context switch (both of its x86-64 FP-control paths), generators, spawn+join\n"
      "and yield against Boost.Context, ucontext, a C++20 stackless generator,\n"
      "OS threads (futex handoff, pinned to CPU 0 / CPUs 0 and 1) and Boost.Fiber in one run,\n"
      "then prints a ratio table against the targets in DESIGN.md (informational; exit code 0).\n"
      "\n"
      "  --quick     short runs (--benchmark_min_time=%s): a smoke test, not a measurement\n"
      "  --help      this text, then Google Benchmark's flags\n"
      "\n"
      "Google Benchmark flags are accepted, e.g. --benchmark_filter=switch,\n"
      "--benchmark_repetitions=3. JSON goes to --benchmark_out (default %s,\n"
      "directories created); it is Google Benchmark's format plus a \"skein_ratios\" array.\n"
      "\nGoogle Benchmark's flags:\n",
      argv0, kQuickMinTime, kDefaultOut);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("skein_runtime_context_backend", skein::detail::context_backend);
#if SKEIN_BENCH_HAS_ASM && defined(__x86_64__)
  benchmark::AddCustomContext(
      "skein_switch_fp_mode",
      skein_switch_fp_mode.mode == skein::detail::switch_fp_load ? "load (AMD)" : "compare (Intel)");
#endif
  benchmark::AddCustomContext("skein_guard_mode", skein::effective_guard_mode() == skein::GuardMode::madvise
                                                      ? "madvise"
                                                      : "mprotect");
  return skein_bench::run_main(
      argc, argv, {"switch_bench", kDefaultOut, kQuickMinTime, print_usage, kRatios, print_tables});
}
