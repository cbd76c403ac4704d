// hello_sleep: two fibers sleep at the same time on one thread. The skein counterpart of this
// asyncio program:
//
//   @asyncio.coroutine
//   def hello():
//       print('Hello world! (%s)' % threading.currentThread())
//       yield from asyncio.sleep(1)
//       print('Hello again! (%s)' % threading.currentThread())
//
//   loop = asyncio.get_event_loop()
//   loop.run_until_complete(asyncio.wait([hello(), hello()]))
//
// skein::sleep_for parks only the calling fiber: while the first hello() sleeps, the scheduler
// runs the second, so both sleeps overlap and the whole run takes about 1 s, not 2. There is one
// thread throughout; every line prints its id to show it.

#include <skein/skein.hpp>

#include "cli.hpp"

#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: hello_sleep [--seconds S]\n"
    "\n"
    "Two fibers each print 'Hello world!', sleep S seconds and print 'Hello again!'. Both sleeps\n"
    "overlap on one thread, so the run takes about S seconds, not 2*S.\n"
    "\n"
    "  --seconds S   how long each fiber sleeps, 0..3600, fractions allowed; default 1\n"
    "  -h, --help    show this help and exit\n";

// Python's threading.currentThread(), as text.
std::string current_thread() {
  std::ostringstream out;
  out << std::this_thread::get_id();
  return out.str();
}

void hello(std::chrono::duration<double> sleep) {
  const std::string_view me = skein::this_fiber::name();
  std::printf("Hello world! (fiber %.*s, thread %s)\n", static_cast<int>(me.size()), me.data(),
              current_thread().c_str());
  skein::sleep_for(sleep);  // parks this fiber; the other one runs meanwhile
  std::printf("Hello again! (fiber %.*s, thread %s)\n", static_cast<int>(me.size()), me.data(),
              current_thread().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "hello_sleep";
  double seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--seconds", i, argc, argv, value)) {
      seconds = cli::number("--seconds", value, 0.0, 3600.0);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  const std::chrono::duration<double> sleep(seconds);
  const auto start = skein::Clock::now();
  // skein::run is asyncio.run / run_until_complete: it returns once every fiber has finished.
  skein::run([sleep] {
    auto a = skein::spawn(skein::FiberOptions{"hello-1"}, [sleep] { hello(sleep); });
    auto b = skein::spawn(skein::FiberOptions{"hello-2"}, [sleep] { hello(sleep); });
    skein::gather(a, b);  // asyncio.wait([hello(), hello()])
  });
  const double elapsed = std::chrono::duration<double>(skein::Clock::now() - start).count();
  std::printf("elapsed: %.3f s for two %.3f s sleeps (one after the other would take %.3f s)\n", elapsed,
              seconds, 2 * seconds);
  std::printf("main thread: %s\n", current_thread().c_str());
  return 0;
}
