// Token ring: F fibers (default 1,000) in a ring of unbuffered skein::Channel<long>s pass a token
// H hops (default 1,000,000): fiber i receives from channel i and sends the token, counted down,
// on channel i + 1. The fiber that receives 0 closes every channel, which ends the others. Reports
// nanoseconds per hop (from the first send until the last hop arrives), peak RSS and user/system CPU.
//
// Variants, each in a process of its own:
//   skein-1w   one worker
//   skein-2w   two workers, fiber i on worker i % 2: every hop crosses between workers
// bench/token_ring.go is the same ring in Go; scripts/bench-fibers runs both and prints the ratios.
//
//   token_ring [--variant NAME]... [--fibers F] [--hops H] [--json-line]     (--help for details)

#include <skein/channel.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "fiber_bench_run.hpp"

namespace {

using fiber_bench::Outcome;
using fiber_bench::Seconds;

constexpr long long kDefaultFibers = 1'000;
constexpr long long kDefaultHops = 1'000'000;

constexpr std::string_view kVariants[] = {"skein-1w", "skein-2w"};

// Hops so far, counted one in 65536: only for the progress line.
std::atomic<long> hops_seen_65536{0};

struct Ring {
  std::deque<skein::Channel<long>> channels;  // a deque: channels neither move nor copy
  long last = -1;                             // the value the closing fiber received (0 if right)
  long hops = 0;                              // sends between ring members
  std::chrono::steady_clock::time_point end;  // when the last hop arrived
};

void member(Ring& ring, std::size_t i) {
  skein::Channel<long>& in = ring.channels[i];
  skein::Channel<long>& out = ring.channels[(i + 1) % ring.channels.size()];
  long sent = 0;
  while (const std::optional<long> token = in.recv()) {
    if (*token == 0) {
      ring.end = std::chrono::steady_clock::now();
      ring.last = 0;
      for (auto& c : ring.channels) c.close();
      break;
    }
    if ((*token & 65535) == 0) hops_seen_65536.fetch_add(1, std::memory_order_relaxed);
    out.send(*token - 1);
    ++sent;
  }
  // Every member adds its own count at its end; the runtime joins them all before run returns.
  std::atomic_ref<long>(ring.hops).fetch_add(sent, std::memory_order_relaxed);
}

int run_variant(std::string_view variant, long long fibers, long long hops, bool json_line) {
  Outcome o;
  o.bench = "token_ring";
  o.variant = std::string(variant);
  o.size = "\"fibers\": " + std::to_string(fibers) + ", \"hops\": " + std::to_string(hops);
  const std::size_t workers = variant == "skein-2w" ? 2 : 1;
  o.label = workers == 1 ? "skein, 1 worker" : "skein, 2 workers, neighbours apart";
  std::fprintf(stderr, "token_ring [%s]: %lld fibers, %lld hops\n", o.variant.c_str(), fibers, hops);
  Ring ring;
  double wall = 0;
  try {
    fiber_bench::Progress progress("token_ring", o.variant, [] {
      return ", ~" + std::to_string(hops_seen_65536.load(std::memory_order_relaxed) * 65536) + " hops done";
    });
    skein::run(skein::RuntimeOptions{workers}, [&] {
      for (long long i = 0; i < fibers; ++i) ring.channels.emplace_back();
      std::vector<skein::Task<void>> members;
      members.reserve(static_cast<std::size_t>(fibers));
      for (long long i = 0; i < fibers; ++i) {
        const auto at = static_cast<std::size_t>(i);
        members.push_back(skein::spawn_on(at % workers, [&ring, at] { member(ring, at); }));
      }
      const auto t0 = std::chrono::steady_clock::now();
      ring.channels[0].send(static_cast<long>(hops));
      for (auto& m : members) m.join();
      wall = Seconds(ring.end - t0).count();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "token_ring [%s]: %s\n", o.variant.c_str(), e.what());
    return 1;
  }
  o.wall_s = wall;
  o.per_op_ns = hops > 0 ? wall * 1e9 / static_cast<double>(hops) : 0;
  fiber_bench::fill_usage(o);
  o.answer = ring.hops;
  o.ok = ring.last == 0 && ring.hops == hops;
  print_outcome(o, json_line);
  if (!o.ok)
    std::fprintf(stderr, "token_ring [%s]: %ld hops made, %lld expected\n", o.variant.c_str(), ring.hops,
                 hops);
  return o.ok ? 0 : 1;
}

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--variant NAME]... [--fibers F] [--hops H] [--json-line]\n"
      "\n"
      "F fibers in a ring of unbuffered channels pass a token H hops. Prints nanoseconds per hop,\n"
      "peak RSS and user/system CPU per variant; each variant runs in a process of its own. The\n"
      "hop count is checked (exit 1 if wrong).\n"
      "\n"
      "  --variant NAME  run only this variant (repeatable; default: all, in this order):\n"
      "                    skein-1w  one worker\n"
      "                    skein-2w  two workers, fiber i on worker i %% 2 (F even: every hop\n"
      "                              crosses between workers)\n"
      "  --fibers F      fibers in the ring, at least 2 (default %lld)\n"
      "  --hops H        hops the token makes (default %lld)\n"
      "  --json-line     print each result as one JSON object per line instead\n"
      "  --help          this text\n"
      "\n"
      "A progress line goes to stderr every 5 s while a variant runs.\n",
      argv0, kDefaultFibers, kDefaultHops);
}

}  // namespace

int main(int argc, char** argv) {
  long long fibers = kDefaultFibers, hops = kDefaultHops;
  fiber_bench::CommonArgs args;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (fiber_bench::take_common_arg("token_ring", kVariants, usage, i, argc, argv, args)) {
    } else if (a == "--fibers" && has_value && fiber_bench::parse_count(argv[i + 1], fibers) && fibers >= 2) {
      ++i;
    } else if (a == "--hops" && has_value && fiber_bench::parse_count(argv[i + 1], hops)) {
      ++i;
    } else {
      std::fprintf(stderr, "token_ring: bad argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  if (fibers % 2 != 0)
    std::fprintf(stderr,
                 "token_ring: note: with an odd number of fibers one hop per lap stays on a worker\n");
  return fiber_bench::run_variants("token_ring", kVariants, args.variants, [&](std::string_view v) {
    return run_variant(v, fibers, hops, args.json_line);
  });
}
