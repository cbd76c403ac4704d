// Channel ping-pong (issue 5): one round trip of an int, A sends on one channel, B replies on a
// second, between
//   - two skein fibers on one worker, unbuffered and bounded(1) Channel<int>;
//   - two skein fibers on two workers (RuntimeOptions{2}, spawn_on(1, ...)), same two kinds;
//   - two std::threads through a std::mutex + std::condition_variable queue, one per direction;
//   - two Boost.Fiber fibers on one thread, buffered_channel<int>(2) (one slot, like bounded(1))
//     and unbuffered_channel<int>;
// all in the same run (machines are noisy: only ratios within one run mean anything). After
// Google Benchmark's own output come an absolute table and a ratio table checked against the
// issue's targets; the targets inform, they never fail the run.
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
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include "context.hpp"  // skein::detail::context_backend, for the JSON context

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
void skein_ping_pong(benchmark::State& state, skein::RuntimeOptions options, std::size_t partner_worker,
                     std::size_t capacity) {
  in_skein(options, [&] {
    skein::Channel<int> there(capacity), back(capacity);
    auto partner =
        skein::spawn_on(partner_worker, skein::FiberOptions{"echo"}, [&] { skein_echo(there, back); });
    ping(
        state, [&](int v) { there.send(v); }, [&] { return back.recv(); });
    there.close();
    partner.join();
  });
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

// The same across workers that poll for 50 us before sleeping in the kernel
// (RuntimeOptions::spin_before_sleep): with a free core for each worker the wake-up becomes a
// cache-line transfer, not a syscall; on a machine with fewer free cores the polling worker takes
// CPU time from the one it waits for.
void BM_skein_cross_worker_unbuffered_spin(benchmark::State& state) {
  skein_ping_pong(state, skein::RuntimeOptions{2, std::chrono::microseconds(50)}, 1, 0);
}
BENCHMARK(BM_skein_cross_worker_unbuffered_spin)->UseRealTime();

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
//
// The same reporting as switch_bench (its helpers live in switch_bench.cpp, not in a header).

// Nanoseconds per iteration (wall clock, or CPU time of the benchmark thread) of every benchmark
// that ran, keyed by function name. With repetitions, the median aggregate wins when there is
// one, else the median of the runs.
class Results {
 public:
  void add(const benchmark::BenchmarkReporter::Run& run) {
    if (run.error_occurred) return;
    std::string key = run.run_name.function_name;
    if (!run.run_name.args.empty()) key += "/" + run.run_name.args;
    Entry& e = entries_[key];
    const double to_ns = 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
    const Sample s{run.GetAdjustedRealTime() * to_ns, run.GetAdjustedCPUTime() * to_ns};
    if (run.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate) {
      if (run.aggregate_name == "median") e.median = s;
    } else {
      e.runs.push_back(s);
    }
  }

  std::optional<double> ns(const std::string& key) const { return value(key, false); }
  std::optional<double> cpu_ns(const std::string& key) const { return value(key, true); }

 private:
  struct Sample {
    double ns;
    double cpu_ns;
  };
  struct Entry {
    std::vector<Sample> runs;
    std::optional<Sample> median;
  };

  std::optional<double> value(const std::string& key, bool cpu) const {
    const auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    if (it->second.median) return cpu ? it->second.median->cpu_ns : it->second.median->ns;
    std::vector<double> values;
    for (const Sample& s : it->second.runs) values.push_back(cpu ? s.cpu_ns : s.ns);
    if (values.empty()) return std::nullopt;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  }

  std::map<std::string, Entry> entries_;
};

enum class Goal { info, at_most, at_least };

// num / den of two wall times. Every ratio here is baseline / skein: the factor by which skein is
// faster (above 1) or slower (below 1).
struct Ratio {
  const char* label;
  const char* num;
  const char* den;
  Goal goal = Goal::info;
  double target = 0;
  // Both sides run on the benchmark's thread alone, so its CPU time is their whole cost: the ratio
  // of CPU times is shown too, as a check that a busy machine (which inflates wall time) hardly
  // moves. The verdict is on wall time.
  bool cpu_too = false;
};

const Ratio kRatios[] = {
    {"same-thread skein unbuffered vs std::thread queue (x faster)", "BM_std_thread_queue",
     "BM_skein_same_thread_unbuffered", Goal::at_least, 20},
    {"same-thread skein bounded(1) vs std::thread queue (x faster)", "BM_std_thread_queue",
     "BM_skein_same_thread_bounded1", Goal::at_least, 20},
    {"same-thread skein unbuffered vs std::thread queue, one core", "BM_std_thread_queue_same_core",
     "BM_skein_same_thread_unbuffered"},
    {"skein bounded(1) vs Boost.Fiber buffered_channel (x faster)", "BM_boost_fiber_buffered",
     "BM_skein_same_thread_bounded1", Goal::at_least, 1, true},
    {"skein unbuffered vs Boost.Fiber buffered_channel (x faster)", "BM_boost_fiber_buffered",
     "BM_skein_same_thread_unbuffered", Goal::at_least, 1, true},
    {"skein unbuffered vs Boost.Fiber unbuffered_channel (x faster)", "BM_boost_fiber_unbuffered",
     "BM_skein_same_thread_unbuffered", Goal::at_least, 1, true},
    {"cross-worker skein unbuffered vs std::thread queue", "BM_std_thread_queue",
     "BM_skein_cross_worker_unbuffered"},
    {"cross-worker skein bounded(1) vs std::thread queue", "BM_std_thread_queue",
     "BM_skein_cross_worker_bounded1"},
    {"cross-worker skein (spinning workers) vs std::thread queue", "BM_std_thread_queue",
     "BM_skein_cross_worker_unbuffered_spin"},
    {"same-thread vs cross-worker skein, unbuffered", "BM_skein_cross_worker_unbuffered",
     "BM_skein_same_thread_unbuffered"},
};

struct Absolute {
  const char* label;
  const char* key;
};

const Absolute kAbsolutes[] = {
    {"skein, one worker, unbuffered", "BM_skein_same_thread_unbuffered"},
    {"skein, one worker, bounded(1)", "BM_skein_same_thread_bounded1"},
    {"skein, two workers, unbuffered", "BM_skein_cross_worker_unbuffered"},
    {"skein, two workers, bounded(1)", "BM_skein_cross_worker_bounded1"},
    {"skein, two workers spinning 50 us, unbuffered", "BM_skein_cross_worker_unbuffered_spin"},
    {"std::thread, mutex + condvar queue", "BM_std_thread_queue"},
    {"std::thread, mutex + condvar queue, one core", "BM_std_thread_queue_same_core"},
    {"Boost.Fiber, one thread, buffered_channel(2)", "BM_boost_fiber_buffered"},
    {"Boost.Fiber, one thread, unbuffered_channel", "BM_boost_fiber_unbuffered"},
};

struct Verdict {
  std::optional<double> value;
  const char* mark;  // PASS, MISS, or "" for informational rows
};

Verdict judge(const Ratio& r, const Results& results) {
  const auto num = results.ns(r.num);
  const auto den = results.ns(r.den);
  if (!num || !den || *den <= 0) return {std::nullopt, ""};
  const double v = *num / *den;
  if (r.goal == Goal::info) return {v, ""};
  const bool ok = r.goal == Goal::at_most ? v <= r.target : v >= r.target;
  return {v, ok ? "PASS" : "MISS"};
}

// The ratio of CPU times, for the rows that have one (Ratio::cpu_too).
std::optional<double> cpu_ratio(const Ratio& r, const Results& results) {
  if (!r.cpu_too) return std::nullopt;
  const auto num = results.cpu_ns(r.num);
  const auto den = results.cpu_ns(r.den);
  if (!num || !den || *den <= 0) return std::nullopt;
  return *num / *den;
}

const char* goal_op(Goal g) {
  return g == Goal::at_most ? "<=" : ">=";
}

std::string format_ns(double ns) {
  char buf[32];
  if (ns >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f ms", ns / 1e6);
  else if (ns >= 1e3)
    std::snprintf(buf, sizeof buf, "%.2f us", ns / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f ns", ns);
  return buf;
}

void print_tables(const Results& results) {
  std::printf("\nskein channel_bench: time per ping-pong round trip of an int, median of repetitions\n");
  std::printf("  %-48s %12s %12s\n", "", "wall", "cpu");
  for (const Absolute& a : kAbsolutes) {
    const auto v = results.ns(a.key);
    // CPU time is the benchmark thread's own; for the two-thread and two-worker rows it leaves
    // out the partner's thread.
    const auto cpu = results.cpu_ns(a.key);
    std::printf("  %-48s %12s %12s\n", a.label, v ? format_ns(*v).c_str() : "not run",
                cpu ? format_ns(*cpu).c_str() : "");
  }
  // This run keeps one or two CPUs busy; a load much above that means something else ran.
  double load[1];
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (getloadavg(load, 1) == 1 && load[0] >= 2.5)
    std::printf(
        "  note: 1-minute load average %.1f on %ld CPUs (this run counts ~1-2): other work shared\n"
        "        the CPUs, so wall times may be inflated\n",
        load[0], cpus);
  std::printf(
      "\nratios of wall times from this run, baseline / skein (informational: a MISS never fails the run)\n");
  for (const Ratio& r : kRatios) {
    const Verdict v = judge(r, results);
    char value[32];
    if (v.value)
      std::snprintf(value, sizeof value, "%10.2fx", *v.value);
    else
      std::snprintf(value, sizeof value, "%11s", "n/a");
    char cpu[32] = "";
    if (const auto c = cpu_ratio(r, results)) std::snprintf(cpu, sizeof cpu, "  (cpu %.2fx)", *c);
    if (r.goal == Goal::info)
      std::printf("  %-62s = %s%s\n", r.label, value, cpu);
    else
      std::printf("  %-62s = %s  (target %s %.2f)  %s%s\n", r.label, value, goal_op(r.goal), r.target,
                  v.value ? v.mark : "not run", cpu);
  }
  std::fflush(stdout);
}

std::string json_number(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << *v;
  return s.str();
}

std::string ratios_json(const Results& results) {
  std::ostringstream out;
  out << "[";
  bool first = true;
  for (const Ratio& r : kRatios) {
    const Verdict v = judge(r, results);
    out << (first ? "\n" : ",\n") << "    {\"name\": \"" << r.label
        << "\", \"value\": " << json_number(v.value) << ", \"numerator\": \"" << r.num
        << "\", \"numerator_ns\": " << json_number(results.ns(r.num)) << ", \"denominator\": \"" << r.den
        << "\", \"denominator_ns\": " << json_number(results.ns(r.den))
        << ", \"cpu_value\": " << json_number(cpu_ratio(r, results));
    if (r.goal == Goal::info)
      out << ", \"target\": null, \"pass\": null}";
    else
      out << ", \"target\": \"" << goal_op(r.goal) << " " << r.target
          << "\", \"pass\": " << (v.value ? (*v.mark == 'P' ? "true" : "false") : "null") << "}";
    first = false;
  }
  out << "\n  ]";
  return out.str();
}

// Google Benchmark's JSON file, with the ratio table added as "skein_ratios". It also collects the
// results: the file reporter sees every run and aggregate whatever the display flags say.
class RatioJsonReporter final : public benchmark::JSONReporter {
 public:
  explicit RatioJsonReporter(Results& results) : results_(results) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) results_.add(run);
    JSONReporter::ReportRuns(runs);
  }

  // The base class closes the document; its closing text is captured and reopened rather than
  // reproduced, so a change of its layout cannot make the file invalid.
  void Finalize() override {
    std::ostream& out = GetOutputStream();
    std::ostringstream tail;
    SetOutputStream(&tail);
    JSONReporter::Finalize();
    SetOutputStream(&out);
    std::string closing = tail.str();
    const auto brace = closing.rfind('}');
    if (brace == std::string::npos) {
      out << closing;
      return;
    }
    closing.erase(brace);
    while (!closing.empty() && std::isspace(static_cast<unsigned char>(closing.back()))) closing.pop_back();
    out << closing << ",\n  \"skein_ratios\": " << ratios_json(results_) << "\n}\n";
  }

 private:
  Results& results_;
};

void print_usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [Google Benchmark flags...]\n"
      "\n"
      "Measures a channel ping-pong round trip of an int: skein fibers on one worker and on two\n"
      "(unbuffered and bounded(1) Channel<int>), two std::threads through a mutex + condition\n"
      "variable queue, and two Boost.Fiber fibers (buffered_channel, unbuffered_channel), in one\n"
      "run; then prints a ratio table against issue 5's targets (informational; exit code 0).\n"
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

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args{argv[0]};
  bool quick = false, has_out = false, has_min_time = false;
  std::string out_path = kDefaultOut;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      print_usage(argv[0]);
      benchmark::PrintDefaultHelp();
      return 0;
    }
    if (a == "--quick") {
      quick = true;
      continue;
    }
    if (starts_with(a, "--benchmark_out_format=") && a != "--benchmark_out_format=json") {
      std::fprintf(stderr,
                   "channel_bench: ignoring %s: the output file is always JSON (it carries the ratios)\n",
                   argv[i]);
      continue;
    }
    if (starts_with(a, "--benchmark_out=")) {
      has_out = true;
      out_path = std::string(a.substr(std::strlen("--benchmark_out=")));
    }
    if (starts_with(a, "--benchmark_min_time=")) has_min_time = true;
    args.emplace_back(a);
  }
  if (!has_out) args.push_back(std::string("--benchmark_out=") + kDefaultOut);
  if (quick && !has_min_time) args.push_back(std::string("--benchmark_min_time=") + kQuickMinTime);
  if (const auto dir = std::filesystem::path(out_path).parent_path(); !dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
  }

  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargv.data());
  if (benchmark::ReportUnrecognizedArguments(cargc, cargv.data())) return 1;

  benchmark::AddCustomContext("skein_runtime_context_backend", skein::detail::context_backend);

  Results results;
  RatioJsonReporter file_reporter(results);
  benchmark::RunSpecifiedBenchmarks(nullptr, &file_reporter);
  print_tables(results);
  std::printf("\nJSON: %s\n", out_path.c_str());
  benchmark::Shutdown();
  return 0;
}
