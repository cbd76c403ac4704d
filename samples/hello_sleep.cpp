// hello_sleep: two fibers sleep at the same time on one thread. The skein counterpart of the
// seeds' asyncio:
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

#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

namespace {

constexpr const char* kUsage =
    "usage: hello_sleep [--seconds S]\n"
    "\n"
    "Two fibers each print 'Hello world!', sleep S seconds and print 'Hello again!'. Both sleeps\n"
    "overlap on one thread, so the run takes about S seconds, not 2*S.\n"
    "\n"
    "  --seconds S   how long each fiber sleeps, 0..3600, fractions allowed; default 1\n"
    "  -h, --help    show this help and exit\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "hello_sleep: %s\nTry 'hello_sleep --help'.\n", message.c_str());
  std::exit(2);
}

// If argv[i] is `name VALUE` or `name=VALUE`, stores VALUE (stepping i past it) and returns true.
bool option(std::string_view name, int& i, int argc, char** argv, std::string_view& value) {
  const std::string_view arg = argv[i];
  if (arg.size() > name.size() && arg.starts_with(name) && arg[name.size()] == '=') {
    value = arg.substr(name.size() + 1);
    return true;
  }
  if (arg != name) return false;
  if (i + 1 >= argc) usage_error(std::string(name) + " needs a value");
  value = argv[++i];
  return true;
}

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
  double seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    std::string_view value;
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (option("--seconds", i, argc, argv, value)) {
      const char* end = value.data() + value.size();
      const auto [ptr, ec] = std::from_chars(value.data(), end, seconds);
      if (value.empty() || ec != std::errc() || ptr != end)
        usage_error("invalid value for --seconds: '" + std::string(value) + "'");
      if (!(seconds >= 0 && seconds <= 3600)) usage_error("--seconds must be between 0 and 3600");
    } else {
      usage_error("unknown argument '" + std::string(arg) + "'");
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
