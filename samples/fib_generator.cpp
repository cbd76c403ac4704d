// fib_generator: lazy production with skein::Generator, and a producer steered by its consumer
// with skein::Coroutine. The skein counterpart of this Python:
//
//   def fibs(n):                 # builds the whole list first
//       result = []; a, b = 0, 1
//       while len(result) < n: result.append(b); a, b = b, a + b
//       return result
//
//   def fib(n):                  # produces one number per request
//       index, a, b = 0, 0, 1
//       while index < n: yield b; a, b = b, a + b; index += 1
//
//   def stupid_fib(n):           # the consumer tells the producer how long to think
//       index, a, b = 0, 0, 1
//       while index < n:
//           sleep_cnt = yield b
//           print('let me think {0} secs'.format(sleep_cnt))
//           time.sleep(sleep_cnt)
//           a, b = b, a + b; index += 1
//
//   sfib = stupid_fib(N); fib_res = next(sfib)
//   while True:
//       print(fib_res)
//       try: fib_res = sfib.send(random.uniform(0, 0.5))
//       except StopIteration: break
//
// A skein generator body is ordinary code on its own small stack: `yield(b)` suspends it in the
// middle of its loop, and the next request continues it from there.

#include <skein/skein.hpp>

#include "cli.hpp"

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: fib_generator [--count N] [--think SECONDS]\n"
    "\n"
    "Prints the first N Fibonacci numbers three ways: from a list built up front (fibs), from a\n"
    "lazy skein::Generator (fib), and from a skein::Coroutine steered by its consumer (stupid_fib),\n"
    "which sends the producer a random think time of up to SECONDS before each number.\n"
    "\n"
    "  --count N          how many numbers, 0..93 (fib(94) overflows uint64_t); default 10\n"
    "  --think SECONDS    longest think time the consumer sends, 0..10; default 0.1\n"
    "  -h, --help         show this help and exit\n";

// fibs(n): every value exists at once, in a vector of n elements.
std::vector<std::uint64_t> fibs(int n) {
  std::vector<std::uint64_t> result;
  std::uint64_t a = 0, b = 1;
  while (static_cast<int>(result.size()) < n) {
    result.push_back(b);
    a = std::exchange(b, a + b);  // unsigned: the unused F(n+1) may wrap, harmlessly
  }
  return result;
}

// fib(n): the same numbers, one per request. Only a, b and the loop index live on the body's
// stack between requests, whatever n is.
skein::Generator<std::uint64_t> fib(int n) {
  return skein::Generator<std::uint64_t>([n](skein::Yield<std::uint64_t>& yield) {
    std::uint64_t a = 0, b = 1;
    for (int index = 0; index < n; ++index) {
      yield(b);  // hands b to the consumer; returns when it asks for the next number
      a = std::exchange(b, a + b);
    }
  });
}

// stupid_fib(n): each `yield(b)` returns the think time the consumer sends with its next
// resume(x), and the body sleeps that long. resume's first value starts the body (Python's
// next(), which sends nothing): it arrives as the body's second argument, unused here.
skein::Coroutine<double, std::uint64_t> stupid_fib(int n) {
  return skein::Coroutine<double, std::uint64_t>(
      [n](skein::CoYield<double, std::uint64_t>& yield, double /*start*/) {
        std::uint64_t a = 0, b = 1;
        for (int index = 0; index < n; ++index) {
          const double sleep_cnt = yield(b);
          std::printf("  let me think %.3f secs\n", sleep_cnt);
          // Inside skein::run this parks only the fiber that resumed us, never the thread.
          skein::sleep_for(std::chrono::duration<double>(sleep_cnt));
          a = std::exchange(b, a + b);
        }
      });
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "fib_generator";
  int count = 10;
  double max_think = 0.1;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--count", i, argc, argv, value)) {
      count = cli::number("--count", value, 0, 93);
    } else if (cli::option("--think", i, argc, argv, value)) {
      max_think = cli::number("--think", value, 0.0, 10.0);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  // 1. The list: all `count` numbers are computed and stored before the first is printed.
  const std::vector<std::uint64_t> list = fibs(count);
  std::printf("fibs(%d), list-building:", count);
  for (std::uint64_t x : list) std::printf(" %" PRIu64, x);
  std::printf("\n  (all %zu values held at once: %zu bytes)\n", list.size(),
              list.size() * sizeof(std::uint64_t));

  // 2. The generator: range-for asks for one number at a time; nothing is stored.
  std::printf("fib(%d), generator:", count);
  for (std::uint64_t x : fib(count)) std::printf(" %" PRIu64, x);
  std::printf("\n  (one value at a time, whatever N is)\n");

  // Laziness pays when the consumer stops early: numbers past the break are never computed, and
  // leaving the loop destroys the generator, unwinding its suspended body.
  for (std::uint64_t x : fib(93)) {
    if (x > 1000) {
      std::printf("fib(93), stopped at the first value over 1000: %" PRIu64 "\n", x);
      break;
    }
  }

  // 3. The steered producer. The think times come from a fixed seed so runs are repeatable.
  std::printf("stupid_fib(%d), steered by the consumer (think times up to %.3f s):\n", count, max_think);
  const double slept = skein::run([&] {
    skein::Coroutine<double, std::uint64_t> sfib = stupid_fib(count);
    std::mt19937 rng(20240601);
    std::uniform_real_distribution<double> think(0.0, max_think);
    double total = 0;
    // resume(0.0) is Python's next(sfib); every later resume(t) is sfib.send(t). nullopt means
    // the body returned (Python's StopIteration).
    for (auto fib_res = sfib.resume(0.0); fib_res;) {
      std::printf("%" PRIu64 "\n", *fib_res);
      const double t = think(rng);
      total += t;
      fib_res = sfib.resume(t);
    }
    return total;
  });
  std::printf("stupid_fib done: the consumer chose %.3f s of thinking in all\n", slept);
  return 0;
}
