// skynet: a root fiber spawns 10 children, each spawns 10, down to N leaves (default 1,000,000,
// so 1,111,111 fibers); each leaf returns its number and every parent returns the sum of its
// children's, so the root's answer is N(N-1)/2 (499999500000). Checked: a wrong sum exits 1.
//
// Variants, each in a process of its own (peak RSS is that variant's):
//   skein-1w       one worker, spawn + join
//   skein-2w-all   two workers, every parent puts child i on worker i % 2 with spawn_on
//   skein-2w-top   two workers, only the root spreads its children (spawn_on); below, spawn
//   boost          Boost.Fiber, launch::dispatch, detached fibers answering on a buffered_channel
//                  (the structure of Boost.Fiber's own skynet), default stack allocator
// bench/skynet.go is the classic Go version (goroutines + unbuffered channels); scripts/bench-fibers
// runs them all, interleaved, and prints the ratios.
//
//   skynet [--variant NAME]... [--leaves N] [--json-line]     (--help for details)

#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include <boost/fiber/all.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "fiber_bench_run.hpp"

namespace {

using fiber_bench::Outcome;
using fiber_bench::Seconds;

constexpr long long kDefaultLeaves = 1'000'000;
constexpr std::uint64_t kBranching = 10;

constexpr std::string_view kVariants[] = {"skein-1w", "skein-2w-all", "skein-2w-top", "boost"};

// Leaves seen so far, counted one in 4096 so that the count costs nothing measurable: only for
// the progress line.
std::atomic<std::uint64_t> leaves_seen_4096{0};

inline void note_leaf(std::uint64_t num) {
  if ((num & 4095) == 0) leaves_seen_4096.fetch_add(1, std::memory_order_relaxed);
}

// ---- skein ---------------------------------------------------------------------------------

enum class Spread { none, all_levels, top_level };

std::uint64_t skein_node(std::uint64_t num, std::uint64_t size, Spread spread, bool root) {
  if (size == 1) {
    note_leaf(num);
    return num;
  }
  const std::uint64_t child = size / kBranching;
  const std::size_t workers = skein::worker_count();
  const bool spread_here = spread == Spread::all_levels || (spread == Spread::top_level && root);
  std::array<skein::Task<std::uint64_t>, kBranching> kids;
  for (std::uint64_t i = 0; i < kBranching; ++i) {
    auto body = [num = num + i * child, child, spread] { return skein_node(num, child, spread, false); };
    kids[i] = spread_here ? skein::spawn_on(i % workers, body) : skein::spawn(body);
  }
  std::uint64_t sum = 0;
  for (auto& k : kids) sum += k.join();
  return sum;
}

std::uint64_t run_skein(std::size_t workers, Spread spread, std::uint64_t leaves) {
  return skein::run(skein::RuntimeOptions{workers}, [&] { return skein_node(0, leaves, spread, true); });
}

// ---- Boost.Fiber ---------------------------------------------------------------------------

using BoostChannel = boost::fibers::buffered_channel<std::uint64_t>;

void boost_node(BoostChannel& out, std::uint64_t num, std::uint64_t size) {
  if (size == 1) {
    note_leaf(num);
    out.push(num);
    return;
  }
  const std::uint64_t child = size / kBranching;
  BoostChannel answers(16);  // a power of two above the 10 answers: no child waits to push
  for (std::uint64_t i = 0; i < kBranching; ++i)
    boost::fibers::fiber(boost::fibers::launch::dispatch, boost_node, std::ref(answers), num + i * child,
                         child)
        .detach();
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < kBranching; ++i) sum += answers.value_pop();
  out.push(sum);
}

std::uint64_t run_boost(std::uint64_t leaves) {
  BoostChannel answer(2);
  boost::fibers::fiber(boost::fibers::launch::dispatch, boost_node, std::ref(answer), 0, leaves).detach();
  return answer.value_pop();
}

// ---- one variant ---------------------------------------------------------------------------

int run_variant(std::string_view variant, long long leaves, bool json_line) {
  Outcome o;
  o.bench = "skynet";
  o.variant = std::string(variant);
  o.size = "\"leaves\": " + std::to_string(leaves);
  const auto n = static_cast<std::uint64_t>(leaves);
  const std::uint64_t expected = n * (n - 1) / 2;
  std::fprintf(stderr, "skynet [%s]: %lld leaves\n", o.variant.c_str(), leaves);
  std::uint64_t sum = 0;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    fiber_bench::Progress progress("skynet", o.variant, [] {
      return ", ~" + std::to_string(leaves_seen_4096.load(std::memory_order_relaxed) * 4096) + " leaves done";
    });
    if (variant == "skein-1w") {
      o.label = "skein, 1 worker, spawn + join";
      sum = run_skein(1, Spread::none, n);
    } else if (variant == "skein-2w-all") {
      o.label = "skein, 2 workers, spawn_on at every level";
      sum = run_skein(2, Spread::all_levels, n);
    } else if (variant == "skein-2w-top") {
      o.label = "skein, 2 workers, spawn_on at the top only";
      sum = run_skein(2, Spread::top_level, n);
    } else {
      o.label = "Boost.Fiber, launch::dispatch, channels";
      sum = run_boost(n);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "skynet [%s]: %s\n", o.variant.c_str(), e.what());
    return 1;
  }
  o.wall_s = Seconds(std::chrono::steady_clock::now() - t0).count();
  fiber_bench::fill_usage(o);
  o.answer = static_cast<long long>(sum);
  o.ok = sum == expected;
  print_outcome(o, json_line);
  if (!o.ok)
    std::fprintf(stderr, "skynet [%s]: sum %llu, expected %llu\n", o.variant.c_str(),
                 static_cast<unsigned long long>(sum), static_cast<unsigned long long>(expected));
  return o.ok ? 0 : 1;
}

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--variant NAME]... [--leaves N] [--json-line]\n"
      "\n"
      "skynet: a root fiber spawns 10 children, each spawns 10, down to N leaves; each leaf returns\n"
      "its number, each parent the sum of its children's. The sum is checked (exit 1 if wrong).\n"
      "Prints wall time, peak RSS and user/system CPU per variant; each variant runs in a process\n"
      "of its own.\n"
      "\n"
      "  --variant NAME  run only this variant (repeatable; default: all, in this order):\n"
      "                    skein-1w      one worker, spawn + join\n"
      "                    skein-2w-all  two workers, child i on worker i %% 2 (spawn_on) at every level\n"
      "                    skein-2w-top  two workers, spawn_on for the root's children, spawn below\n"
      "                    boost         Boost.Fiber, launch::dispatch, buffered_channel answers\n"
      "  --leaves N      leaves, a power of 10 (default %lld)\n"
      "  --json-line     print each result as one JSON object per line instead\n"
      "  --help          this text\n"
      "\n"
      "A progress line goes to stderr every 5 s while a variant runs.\n",
      argv0, kDefaultLeaves);
}

bool power_of_ten(long long n) {
  if (n < 1) return false;
  while (n % 10 == 0) n /= 10;
  return n == 1;
}

}  // namespace

int main(int argc, char** argv) {
  long long leaves = kDefaultLeaves;
  fiber_bench::CommonArgs args;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (fiber_bench::take_common_arg("skynet", kVariants, usage, i, argc, argv, args)) {
    } else if (a == "--leaves" && i + 1 < argc && fiber_bench::parse_count(argv[i + 1], leaves) &&
               power_of_ten(leaves)) {
      ++i;
    } else {
      std::fprintf(stderr, "skynet: bad argument '%s' (see --help; --leaves takes a power of 10)\n", argv[i]);
      return 2;
    }
  }
  return fiber_bench::run_variants("skynet", kVariants, args.variants, [&](std::string_view v) {
    return run_variant(v, leaves, args.json_line);
  });
}
