// producer_consumer: two routines taking turns on one thread, no locks, no queue. The skein
// counterpart of this Python:
//
//   def consumer():
//       r = ''
//       while True:
//           n = yield r
//           if not n:
//               return
//           print('[CONSUMER] Consuming %s...' % n)
//           r = '200 OK'
//
//   def produce(c):
//       c.send(None)
//       n = 0
//       while n < 5:
//           n = n + 1
//           print('[PRODUCER] Producing %s...' % n)
//           r = c.send(n)
//           print('[PRODUCER] Consumer return: %s' % r)
//       c.close()
//
//   produce(consumer())
//
// The consumer is a skein::Coroutine<int, std::string>: resume(n) sends n in and returns what the
// body yields next. close() unwinds the suspended body like Python's GeneratorExit: every
// destructor on its stack runs, which the Goodbye guard below makes visible.

#include <skein/skein.hpp>

#include "cli.hpp"

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: producer_consumer [--count N]\n"
    "\n"
    "A producer sends the items 1..N to a consumer coroutine, which answers '200 OK' for each;\n"
    "then the producer closes the consumer, unwinding its stack.\n"
    "\n"
    "  --count N     how many items, 0..1000000; default 5\n"
    "  -h, --help    show this help and exit\n";

using Consumer = skein::Coroutine<int, std::string>;

// Lives on the consumer's stack; its destructor runs however the body ends: by returning, by
// throwing, or by close() unwinding it while it waits at a yield.
struct Goodbye {
  ~Goodbye() { std::puts("[CONSUMER] Closed: my stack was unwound and this destructor ran"); }
};

Consumer consumer() {
  // The first resume's value starts the body (Python's c.send(None)); we ignore it.
  return Consumer([](skein::CoYield<int, std::string>& yield, int /*start*/) {
    Goodbye goodbye;
    std::string r;
    for (;;) {
      const int n = yield(r);  // hands r to the producer, waits for its next item
      if (n == 0) return;      // Python's `if not n: return`
      std::printf("[CONSUMER] Consuming %d...\n", n);
      r = "200 OK";
    }
  });
}

void produce(Consumer& c, int count) {
  c.resume(0);  // prime: run the body to its first yield
  for (int n = 1; n <= count; ++n) {
    std::printf("[PRODUCER] Producing %d...\n", n);
    const std::optional<std::string> r = c.resume(n);
    std::printf("[PRODUCER] Consumer return: %s\n", r->c_str());
  }
  c.close();  // the body is suspended inside yield(): unwind it now
  std::printf("[PRODUCER] Consumer closed: done() = %s\n", c.done() ? "true" : "false");
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "producer_consumer";
  int count = 5;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--count", i, argc, argv, value)) {
      count = cli::number("--count", value, 0, 1000000);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  // Plain code on the thread's own stack: a coroutine needs no scheduler, only someone to resume it.
  Consumer c = consumer();
  produce(c, count);
  return 0;
}
