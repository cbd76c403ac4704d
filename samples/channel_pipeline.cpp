// channel_pipeline: producers and consumers on different worker threads, joined by one bounded
// channel. Go's
//
//   ch := make(chan int, capacity)
//   var wg sync.WaitGroup
//   for p := 0; p < producers; p++ {
//       wg.Add(1)
//       go func(p int) { defer wg.Done(); for i := 1; i <= items; i++ { ch <- p*items + i } }(p)
//   }
//   go func() { wg.Wait(); close(ch) }()
//   for c := 0; c < consumers; c++ { go func() { for v := range ch { ... } }() }
//
// or Python's queue.Queue(maxsize) between threads, written with skein: each producer and consumer
// is a fiber started with spawn_on on a worker of its own side (producers on the first half of
// the workers, consumers on the rest, so every item crosses threads when there are two or more).
// A producer's send parks it while `capacity` items wait (the bound is the back-pressure); a
// consumer's range-for receives until the channel is closed and drained. A WaitGroup counts the
// producers; once it is back to zero the main fiber closes the channel, which ends the consumers'
// loops after the last queued item. Producer p sends the values p*K+1 .. p*K+K, so the items are
// 1 .. N*K, each once: the consumers mark each value they get, and the last line checks the count
// and the sum against N*K and N*K*(N*K+1)/2. Exit status 1 if any item went missing or came twice.

#include <skein/skein.hpp>

#include "cli.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <string_view>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: channel_pipeline [--producers N] [--consumers M] [--items K] [--capacity C] [--threads T]\n"
    "\n"
    "N producer fibers each send K numbered items into one channel of capacity C; M consumer\n"
    "fibers receive them until the channel is closed, which happens once every producer is done.\n"
    "Producers run on the first half of the T worker threads, consumers on the other half. Prints\n"
    "what each producer and consumer did, then checks that every item arrived exactly once:\n"
    "'received N*K items, sum S (expected S)'. Exits 1 if not.\n"
    "\n"
    "  --producers N  producer fibers, 1..64; default 2\n"
    "  --consumers M  consumer fibers, 1..64; default 2\n"
    "  --items K      items per producer, 0..1000000; default 1000\n"
    "  --capacity C   items the channel holds before a send waits, 0..1000000 (0: every send\n"
    "                 waits for a receiver); default 8\n"
    "  --threads T    worker threads, 1..256; default 2\n"
    "  -h, --help     show this help and exit\n";

struct Options {
  std::size_t producers = 2;
  std::size_t consumers = 2;
  std::uint64_t items = 1000;
  std::size_t capacity = 8;
  std::size_t threads = 2;
};

struct ConsumerReport {
  std::size_t worker = 0;
  std::uint64_t count = 0;
  std::uint64_t sum = 0;
  std::size_t largest_backlog = 0;  // the most items seen waiting in the channel
};

// Worker of producer p and consumer c: producers take workers 0 .. split-1, consumers split .. T-1
// (with one worker, everything shares worker 0).
std::size_t split_of(std::size_t threads) {
  return threads < 2 ? 1 : (threads + 1) / 2;
}
std::size_t producer_worker(std::size_t p, std::size_t threads) {
  return p % split_of(threads);
}
std::size_t consumer_worker(std::size_t c, std::size_t threads) {
  if (threads < 2) return 0;
  const std::size_t split = split_of(threads);
  return split + c % (threads - split);
}

int pipeline(const Options& o) {
  const std::uint64_t total = o.producers * o.items;
  skein::Channel<std::uint64_t> channel(o.capacity);
  // seen[v - 1] counts the deliveries of value v, from any consumer's thread.
  auto seen = std::make_unique<std::atomic<std::uint8_t>[]>(total);

  std::printf("%zu producers, %zu consumers, %llu items each, channel capacity %zu, %zu worker threads\n",
              o.producers, o.consumers, static_cast<unsigned long long>(o.items), o.capacity, o.threads);
  std::fflush(stdout);
  const auto start = skein::Clock::now();

  std::vector<skein::Task<ConsumerReport>> consumers;
  for (std::size_t c = 0; c < o.consumers; ++c)
    consumers.push_back(skein::spawn_on(consumer_worker(c, o.threads), [&channel, &seen] {
      ConsumerReport r;
      r.worker = skein::this_worker();
      for (std::uint64_t v : channel) {
        ++r.count;
        r.sum += v;
        seen[v - 1].fetch_add(1, std::memory_order_relaxed);
        r.largest_backlog = std::max(r.largest_backlog, channel.size());
      }
      return r;
    }));

  skein::WaitGroup producing;
  std::vector<skein::Task<std::size_t>> producers;
  for (std::size_t p = 0; p < o.producers; ++p) {
    producing.add(1);
    producers.push_back(skein::spawn_on(producer_worker(p, o.threads), [&channel, &producing, &o, p] {
      struct Done {
        skein::WaitGroup& wg;
        ~Done() { wg.done(); }
      } done{producing};
      for (std::uint64_t i = 1; i <= o.items; ++i) channel.send(p * o.items + i);
      return skein::this_worker();
    }));
  }

  // The last producer's done() lets this through; closing ends the consumers' range-for loops once
  // they have drained what is still queued.
  producing.wait();
  channel.close();

  for (std::size_t p = 0; p < producers.size(); ++p)
    std::printf("producer %zu (worker %zu): sent %llu items\n", p, producers[p].join(),
                static_cast<unsigned long long>(o.items));
  std::uint64_t count = 0;
  std::uint64_t sum = 0;
  std::size_t backlog = 0;
  for (std::size_t c = 0; c < consumers.size(); ++c) {
    const ConsumerReport r = consumers[c].join();
    std::printf("consumer %zu (worker %zu): received %llu items\n", c, r.worker,
                static_cast<unsigned long long>(r.count));
    count += r.count;
    sum += r.sum;
    backlog = std::max(backlog, r.largest_backlog);
  }
  const double seconds = std::chrono::duration<double>(skein::Clock::now() - start).count();

  std::uint64_t missing = 0;
  std::uint64_t repeated = 0;
  for (std::uint64_t v = 0; v < total; ++v) {
    const unsigned n = seen[v].load(std::memory_order_relaxed);
    if (n == 0) ++missing;
    if (n > 1) ++repeated;
  }
  const std::uint64_t expected_sum = total * (total + 1) / 2;
  std::printf("largest backlog seen: %zu (capacity %zu)\n", backlog, o.capacity);
  std::printf("%.3f s, %.0f items/s\n", seconds, seconds > 0 ? static_cast<double>(count) / seconds : 0.0);
  std::printf("exactly once: %llu missing, %llu received more than once\n",
              static_cast<unsigned long long>(missing), static_cast<unsigned long long>(repeated));
  std::printf("received %llu items, sum %llu (expected %llu)\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(sum), static_cast<unsigned long long>(expected_sum));
  const bool ok = missing == 0 && repeated == 0 && count == total && sum == expected_sum;
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "channel_pipeline";
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--producers", i, argc, argv, value)) {
      o.producers = cli::number<std::size_t>("--producers", value, 1, 64);
    } else if (cli::option("--consumers", i, argc, argv, value)) {
      o.consumers = cli::number<std::size_t>("--consumers", value, 1, 64);
    } else if (cli::option("--items", i, argc, argv, value)) {
      o.items = cli::number<std::uint64_t>("--items", value, 0, 1'000'000);
    } else if (cli::option("--capacity", i, argc, argv, value)) {
      o.capacity = cli::number<std::size_t>("--capacity", value, 0, 1'000'000);
    } else if (cli::option("--threads", i, argc, argv, value)) {
      o.threads = cli::number<std::size_t>("--threads", value, 1, 256);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  try {
    return skein::run(skein::RuntimeOptions{o.threads}, [&] { return pipeline(o); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "channel_pipeline: %s\n", e.what());
    return 1;
  }
}
