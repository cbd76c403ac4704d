// Channel ping-pong (issue 5): one round trip of an int, A sends on one channel, B replies on a
// second, between
//   - two skein fibers on one worker, unbuffered and bounded(1) Channel<int>;
//   - two skein fibers on two workers (RuntimeOptions{2}, spawn_on(1, ...)), same two kinds, and
//     unbuffered without the idle spin (idle_spin = 0: every message to a sleeping worker is a
//     futex wake-up) and with a 50 us polling window (spin_before_sleep);
//   - two std::threads through a std::mutex + std::condition_variable queue, one per direction;
//   - two Boost.Fiber fibers on one thread, buffered_channel<int>(2) (one slot, like bounded(1))
//     and unbuffered_channel<int>;
// all in the same run (machines are noisy: only ratios within one run mean anything). After
// Google Benchmark's own output come an absolute table and a ratio table checked against the
// targets; the targets inform, they never fail the run.
//
//   channel_bench [--quick] [Google Benchmark flags...]     (--help for details)
//
// Every iteration is a real round trip: A sends v, B answers v + 1, A checks the answer and sends
// it on, so each value depends on the previous reply. At the end of each benchmark A closes its
// channel, B sees the end of the stream and returns, and A joins it.

#include <benchmark/benchmark.h>

#include <boost/fiber/buffered_channel.hpp>
#include <boost/fiber/channel_op_status.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/unbuffered_channel.hpp>

#include <skein/channel.hpp>
#include <skein/net.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include "context.hpp"  // skein::detail::context_backend, for the JSON context
#include "ratio_report.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

constexpr const char* kDefaultOut = "out/bench/channel_bench.json";
constexpr const char* kQuickMinTime = "0.01";

// ---- the two sides of a round trip ---------------------------------------------------------

// A's loop, the same for every variant: `send(v)` hands v to B, `recv()` returns B's answer
// (std::nullopt if the stream ended). B answers v + 1; the answer, kept small, is the next value.
template <class Send, class Recv>
void ping(benchmark::State& state, Send&& send, Recv&& recv) {
  int value = 0;
  for (auto _ : state) {
    send(value);
    const std::optional<int> reply = recv();
    if (!reply || *reply != value + 1) {
      state.SkipWithError("the reply was not the value sent plus one");
      break;
    }
    value = *reply & 0xffffff;
    benchmark::DoNotOptimize(value);
  }
}

// ---- skein ---------------------------------------------------------------------------------

// Runs `body` on a fiber of a new runtime, on worker 0 (this thread). Its stack is larger than the
// default because Google Benchmark's bookkeeping runs on it too.
template <class F>
void in_skein(skein::RuntimeOptions options, F&& body) {
  skein::run(options, [&] { skein::spawn(skein::FiberOptions{"bench", 256 * 1024}, body).join(); });
}

// B: answers every value on `in` with value + 1 on `out` until `in` is closed.
void skein_echo(skein::Channel<int>& in, skein::Channel<int>& out) {
  while (const std::optional<int> v = in.recv()) out.send(*v + 1);
}

// Ping-pong between the benchmark's fiber (worker 0) and B on worker `partner_worker`, over two
// channels of `capacity`.
// The same from a fiber of a runtime already running.
void skein_ping_pong_body(benchmark::State& state, std::size_t partner_worker, std::size_t capacity) {
  skein::Channel<int> there(capacity), back(capacity);
  auto partner =
      skein::spawn_on(partner_worker, skein::FiberOptions{"echo"}, [&] { skein_echo(there, back); });
  ping(
      state, [&](int v) { there.send(v); }, [&] { return back.recv(); });
  there.close();
  partner.join();
}

void skein_ping_pong(benchmark::State& state, skein::RuntimeOptions options, std::size_t partner_worker,
                     std::size_t capacity) {
  in_skein(options, [&] { skein_ping_pong_body(state, partner_worker, capacity); });
}

void BM_skein_same_thread_unbuffered(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{1}, 0, 0);
}
BENCHMARK(BM_skein_same_thread_unbuffered)->UseRealTime();

void BM_skein_same_thread_bounded1(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{1}, 0, 1);
}
BENCHMARK(BM_skein_same_thread_bounded1)->UseRealTime();

void BM_skein_cross_worker_unbuffered(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{2}, 1, 0);
}
BENCHMARK(BM_skein_cross_worker_unbuffered)->UseRealTime();

void BM_skein_cross_worker_bounded1(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{2}, 1, 1);
}
BENCHMARK(BM_skein_cross_worker_bounded1)->UseRealTime();

// The same across workers that never spin before sleeping (RuntimeOptions::idle_spin = 0): every
// message to a sleeping worker is a futex wake-up.
void BM_skein_cross_worker_unbuffered_nospin(benchmark::State& state) {
  skein::RuntimeOptions options{2};
  options.idle_spin = std::chrono::microseconds(0);
  skein_ping_pong(state, options, 1, 0);
}
BENCHMARK(BM_skein_cross_worker_unbuffered_nospin)->UseRealTime();

// The same across workers that poll their driver for 50 us after each round before sleeping
// (RuntimeOptions::spin_before_sleep): with a free core for each worker the wake-up becomes a
// cache-line transfer, not a syscall; on a machine with fewer free cores the polling worker takes
// CPU time from the one it waits for.
void BM_skein_cross_worker_unbuffered_spin(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{2, std::chrono::microseconds(50)}, 1, 0);
}
BENCHMARK(BM_skein_cross_worker_unbuffered_spin)->UseRealTime();

// Across workers that never spin and sleep in their io_uring ring (a fiber on each waits on an
// idle socket, so its scheduler sleeps in the driver, not on its futex): every message wakes the
// other worker by `wake` (SKEIN_IO_URING_WAKE: eventfd, or msg_ring: a completion posted
// straight into the sleeper's ring, which saves it the eventfd's read).
void skein_ping_pong_in_ring(benchmark::State& state, const char* wake) {
  ::setenv("SKEIN_IO_URING_WAKE", wake, 1);
  skein::RuntimeOptions options{2};
  options.idle_spin = std::chrono::microseconds(0);
  in_skein(options, [&] {
    if (skein::io_backend() != skein::IoBackendKind::io_uring) {
      state.SkipWithError("io_uring is unavailable");
      return;
    }
    int pair[2][2];
    for (auto& p : pair)
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) {
        state.SkipWithError("socketpair failed");
        return;
      }
    auto idle = [](int fd) {
      skein::Stream s(fd);
      char b[1];
      s.read(std::span<char>(b, 1));  // 0 when the benchmark closes the other end
    };
    auto idle1 = skein::spawn_on(1, [&] { idle(pair[1][0]); });
    auto idle0 = skein::spawn([&] { idle(pair[0][0]); });
    skein_ping_pong_body(state, 1, 0);
    ::close(pair[0][1]);
    ::close(pair[1][1]);
    idle0.join();
    idle1.join();
  });
  ::unsetenv("SKEIN_IO_URING_WAKE");
}

void BM_skein_cross_worker_in_ring_eventfd(benchmark::State& state) {
  skein_ping_pong_in_ring(state, "eventfd");
}
BENCHMARK(BM_skein_cross_worker_in_ring_eventfd)->UseRealTime();

void BM_skein_cross_worker_in_ring_msg_ring(benchmark::State& state) {
  skein_ping_pong_in_ring(state, "msg_ring");
}
BENCHMARK(BM_skein_cross_worker_in_ring_msg_ring)->UseRealTime();

// ---- std::thread + std::mutex + std::condition_variable ------------------------------------

// The blocking queue threads usually hand work over with: unbounded, closable; pop() waits for a
// value and returns std::nullopt once the queue is closed and empty. The notify comes after the
// unlock, so the woken thread does not wake into a held mutex.
class BlockingQueue {
 public:
  void push(int v) {
    {
      std::lock_guard lock(mu_);
      items_.push_back(v);
    }
    cv_.notify_one();
  }
  std::optional<int> pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return !items_.empty() || closed_; });
    if (items_.empty()) return std::nullopt;
    const int v = items_.front();
    items_.pop_front();
    return v;
  }
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> items_;
  bool closed_ = false;
};

bool pin_self_to(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

// Ping-pong between the benchmark's thread and a partner thread; with `cpu` >= 0 both are pinned
// to that CPU (the affinity of the benchmark thread is restored afterwards).
void thread_ping_pong(benchmark::State& state, int cpu) {
  cpu_set_t saved;
  CPU_ZERO(&saved);
  if (cpu >= 0) {
    if (pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0 || !CPU_ISSET(cpu, &saved)) {
      state.SkipWithError("the CPU to pin to is not available to this process");
      return;
    }
    if (!pin_self_to(cpu)) {
      state.SkipWithError("pthread_setaffinity_np failed");
      return;
    }
  }
  BlockingQueue there, back;
  std::atomic<bool> pinned{true};
  std::thread partner([&] {
    if (cpu >= 0) pinned.store(pin_self_to(cpu));
    while (const std::optional<int> v = there.pop()) back.push(*v + 1);
  });
  ping(
      state, [&](int v) { there.push(v); }, [&] { return back.pop(); });
  there.close();
  partner.join();
  if (cpu >= 0) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  if (!pinned.load()) state.SkipWithError("could not pin the partner thread");
}

// As the OS places them: on a machine with idle cores, usually two cores.
void BM_std_thread_queue(benchmark::State& state) {
  thread_ping_pong(state, -1);
}
BENCHMARK(BM_std_thread_queue)->UseRealTime();

// Both threads on CPU 0: the handoff without the cross-core wake-up.
void BM_std_thread_queue_same_core(benchmark::State& state) {
  thread_ping_pong(state, 0);
}
BENCHMARK(BM_std_thread_queue_same_core)->UseRealTime();

// ---- Boost.Fiber ---------------------------------------------------------------------------

// Ping-pong between the thread's main fiber and a second fiber on the same thread (Boost.Fiber's
// default round-robin scheduler), over two channels of type Ch built from `args`.
template <class Ch, class... Args>
void boost_ping_pong(benchmark::State& state, Args... args) {
  using boost::fibers::channel_op_status;
  Ch there(args...), back(args...);
  boost::fibers::fiber partner([&] {
    int v;
    while (there.pop(v) == channel_op_status::success)
      if (back.push(v + 1) != channel_op_status::success) break;
  });
  ping(
      state, [&](int v) { there.push(v); },
      [&]() -> std::optional<int> {
        int v;
        if (back.pop(v) != channel_op_status::success) return std::nullopt;
        return v;
      });
  there.close();
  partner.join();
}

// Capacity 2 is the smallest Boost allows (a power of two); its ring keeps one slot free, so it
// holds one value, as skein's bounded(1) does.
void BM_boost_fiber_buffered(benchmark::State& state) {
  boost_ping_pong<boost::fibers::buffered_channel<int>>(state, std::size_t{2});
}
BENCHMARK(BM_boost_fiber_buffered)->UseRealTime();

void BM_boost_fiber_unbuffered(benchmark::State& state) {
  boost_ping_pong<boost::fibers::unbuffered_channel<int>>(state);
}
BENCHMARK(BM_boost_fiber_unbuffered)->UseRealTime();

// ---- the tables ----------------------------------------------------------------------------

using skein_bench::Absolute;
using skein_bench::Goal;
using skein_bench::Ratio;
using skein_bench::Results;

// Every ratio here is baseline / skein: the factor by which skein is faster (above 1) or slower
// (below 1).
const Ratio kRatios[] = {
    {"same-thread skein unbuffered vs std::thread queue (x faster)",
     {"BM_std_thread_queue"},
     {"BM_skein_same_thread_unbuffered"},
     Goal::at_least,
     20},
    {"same-thread skein bounded(1) vs std::thread queue (x faster)",
     {"BM_std_thread_queue"},
     {"BM_skein_same_thread_bounded1"},
     Goal::at_least,
     20},
    {"same-thread skein unbuffered vs std::thread queue, one core",
     {"BM_std_thread_queue_same_core"},
     {"BM_skein_same_thread_unbuffered"}},
    {"skein bounded(1) vs Boost.Fiber buffered_channel (x faster)",
     {"BM_boost_fiber_buffered"},
     {"BM_skein_same_thread_bounded1"},
     Goal::at_least,
     1,
     true},
    {"skein unbuffered vs Boost.Fiber buffered_channel (x faster)",
     {"BM_boost_fiber_buffered"},
     {"BM_skein_same_thread_unbuffered"},
     Goal::at_least,
     1,
     true},
    {"skein unbuffered vs Boost.Fiber unbuffered_channel (x faster)",
     {"BM_boost_fiber_unbuffered"},
     {"BM_skein_same_thread_unbuffered"},
     Goal::at_least,
     1,
     true},
    {"cross-worker skein unbuffered vs std::thread queue (x faster)",
     {"BM_std_thread_queue"},
     {"BM_skein_cross_worker_unbuffered"},
     Goal::at_least,
     5},
    {"cross-worker skein bounded(1) vs std::thread queue (x faster)",
     {"BM_std_thread_queue"},
     {"BM_skein_cross_worker_bounded1"},
     Goal::at_least,
     5},
    {"cross-worker skein (no idle spin: futex only) vs std::thread queue",
     {"BM_std_thread_queue"},
     {"BM_skein_cross_worker_unbuffered_nospin"}},
    {"cross-worker skein (workers polling 50 us) vs std::thread queue",
     {"BM_std_thread_queue"},
     {"BM_skein_cross_worker_unbuffered_spin"}},
    {"cross-worker skein in the io_uring ring: MSG_RING vs eventfd wake-ups (x faster)",
     {"BM_skein_cross_worker_in_ring_eventfd"},
     {"BM_skein_cross_worker_in_ring_msg_ring"}},
    {"same-thread vs cross-worker skein, unbuffered",
     {"BM_skein_cross_worker_unbuffered"},
     {"BM_skein_same_thread_unbuffered"}},
};

const Absolute kAbsolutes[] = {
    {"skein, one worker, unbuffered", {"BM_skein_same_thread_unbuffered"}},
    {"skein, one worker, bounded(1)", {"BM_skein_same_thread_bounded1"}},
    {"skein, two workers, unbuffered", {"BM_skein_cross_worker_unbuffered"}},
    {"skein, two workers, bounded(1)", {"BM_skein_cross_worker_bounded1"}},
    {"skein, two workers, no idle spin, unbuffered", {"BM_skein_cross_worker_unbuffered_nospin"}},
    {"skein, two workers polling 50 us, unbuffered", {"BM_skein_cross_worker_unbuffered_spin"}},
    {"skein, two workers asleep in io_uring, eventfd wake-ups", {"BM_skein_cross_worker_in_ring_eventfd"}},
    {"skein, two workers asleep in io_uring, MSG_RING wake-ups", {"BM_skein_cross_worker_in_ring_msg_ring"}},
    {"std::thread, mutex + condvar queue", {"BM_std_thread_queue"}},
    {"std::thread, mutex + condvar queue, one core", {"BM_std_thread_queue_same_core"}},
    {"Boost.Fiber, one thread, buffered_channel(2)", {"BM_boost_fiber_buffered"}},
    {"Boost.Fiber, one thread, unbuffered_channel", {"BM_boost_fiber_unbuffered"}},
};

void print_tables(const Results& results) {
  // This run keeps one or two CPUs busy.
  skein_bench::print_absolutes(
      "skein channel_bench: time per ping-pong round trip of an int, median of repetitions", kAbsolutes,
      results, 2);
  skein_bench::print_ratios(
      "ratios of wall times from this run, baseline / skein (informational: a MISS never fails the run)",
      kRatios, results);
}

void print_usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [Google Benchmark flags...]\n"
      "\n"
      "Measures a channel ping-pong round trip of an int: skein fibers on one worker and on two\n"
      "(unbuffered and bounded(1) Channel<int>; across workers also without the idle spin and with\n"
      "a 50 us polling window), two std::threads through a mutex + condition\n"
      "variable queue, and two Boost.Fiber fibers (buffered_channel, unbuffered_channel), in one\n"
      "run; then prints a ratio table against the targets (informational; exit code 0).\n"
      "\n"
      "  --quick     short runs (--benchmark_min_time=%s): a smoke test, not a measurement\n"
      "  --help      this text, then Google Benchmark's flags\n"
      "\n"
      "Google Benchmark flags are accepted, e.g. --benchmark_filter=skein,\n"
      "--benchmark_repetitions=5. JSON goes to --benchmark_out (default %s,\n"
      "directories created); it is Google Benchmark's format plus a \"skein_ratios\" array.\n"
      "\nGoogle Benchmark's flags:\n",
      argv0, kQuickMinTime, kDefaultOut);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("skein_runtime_context_backend", skein::detail::context_backend);
  return skein_bench::run_main(
      argc, argv, {"channel_bench", kDefaultOut, kQuickMinTime, print_usage, kRatios, print_tables});
}
