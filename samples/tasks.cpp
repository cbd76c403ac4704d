// tasks: many concurrent sleeps on one thread, gathered, cancelled and timed out. The skein
// counterpart of this asyncio program:
//
//   async def do_some_work(x):
//       print('Waiting', x)
//       await asyncio.sleep(x)
//       return 'Done after {}s'.format(x)
//
//   async def main():
//       tasks = [asyncio.create_task(do_some_work(x)) for x in range(1, 11)]
//       for result in await asyncio.gather(*tasks): print(result)
//       # a Task records its result, its cancellation (task.cancel()), or its exception;
//       # asyncio.wait_for(coro, timeout) cancels what overruns and raises TimeoutError
//
//   asyncio.run(main())
//
// skein::spawn starts a fiber and returns a Task<T>; join() waits for it, then returns its value
// or rethrows what it threw. The bodies are plain blocking code: sleep_for parks only the calling
// fiber, so ten sleeps of 1..10 steps take about 10 steps in all, not 55.

#include <skein/skein.hpp>

#include "cli.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

namespace cli = skein_samples::cli;

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

constexpr const char* kUsage =
    "usage: tasks [--tasks N] [--step-ms MS]\n"
    "\n"
    "Spawns N tasks on one thread; task i sleeps (1 + (i-1) % 10) steps and returns a string.\n"
    "Gathers their results and shows the total time is the longest sleep, not the sum. Then\n"
    "cancels a task, times one out with skein::with_timeout, and joins one that throws.\n"
    "\n"
    "  --tasks N       how many tasks, 1..10000; default 10 (each is printed when N <= 20)\n"
    "  --step-ms MS    one sleep step in milliseconds, 1..10000; default 100\n"
    "  -h, --help      show this help and exit\n";

double seconds_since(skein::TimePoint start) {
  return std::chrono::duration<double>(skein::Clock::now() - start).count();
}

// Prints from a destructor, to show a stopped fiber's stack is unwound, not abandoned.
struct Unwound {
  const char* who;
  ~Unwound() {
    if (std::uncaught_exceptions() > 0) std::printf("[%s] unwinding: its destructors run\n", who);
  }
};

// Python's do_some_work(x): the body of one task.
std::string do_some_work(Ms sleep, bool chatty) {
  const std::string name(skein::this_fiber::name());
  if (chatty)
    std::printf("[%s] waiting %.3f s\n", name.c_str(), std::chrono::duration<double>(sleep).count());
  skein::sleep_for(sleep);
  if (chatty) std::printf("[%s] woke up\n", name.c_str());
  char result[64];
  std::snprintf(result, sizeof result, "Done after %.3f s", std::chrono::duration<double>(sleep).count());
  return result;
}

int demo(int n, Ms step) {
  const bool chatty = n <= 20;

  // 1. create_task x N + gather. Each spawn only makes its fiber ready: the tasks start running
  //    when main first waits, inside join_all.
  std::printf("== %d tasks, sleeping 1..10 steps of %.3f s each\n", n,
              std::chrono::duration<double>(step).count());
  const auto start = skein::Clock::now();
  std::vector<skein::Task<std::string>> tasks;
  Ms longest{0}, sum{0};
  for (int i = 1; i <= n; ++i) {
    const Ms sleep = step * (1 + (i - 1) % 10);
    longest = std::max(longest, sleep);
    sum += sleep;
    tasks.push_back(skein::spawn(skein::FiberOptions{"task-" + std::to_string(i)},
                                 [sleep, chatty] { return do_some_work(sleep, chatty); }));
  }
  const std::vector<std::string> results = skein::join_all(tasks);  // in spawn order
  const double elapsed = seconds_since(start);
  for (int i = 0; i < n; ++i)
    if (chatty) std::printf("result of task-%d: %s\n", i + 1, results[static_cast<std::size_t>(i)].c_str());
  std::printf("gathered %d results in %.3f s (longest sleep %.3f s, sum of sleeps %.3f s)\n", n, elapsed,
              std::chrono::duration<double>(longest).count(), std::chrono::duration<double>(sum).count());

  // gather() is the fixed-size form: tasks of different types, results as a tuple.
  auto answer = skein::spawn([step] {
    skein::sleep_for(step);
    return 42;
  });
  auto greeting = skein::spawn([step] {
    skein::sleep_for(step);
    return std::string("hello");
  });
  const auto [number_result, text_result] = skein::gather(answer, greeting);
  std::printf("gather(int task, string task) = (%d, \"%s\")\n", number_result, text_result.c_str());

  // 2. Cancellation (task.cancel()): the sleep the task is parked in throws operation_canceled,
  //    its stack unwinds, and join() reports the cancellation.
  std::printf("== cancel\n");
  auto sleeper = skein::spawn(skein::FiberOptions{"sleeper"}, [] {
    Unwound guard{"sleeper"};
    skein::sleep_for(1h);
    return 0;
  });
  const auto cancel_start = skein::Clock::now();
  skein::sleep_for(step);  // let it start and park in its hour-long sleep
  sleeper.cancel();
  try {
    sleeper.join();
    std::printf("sleeper: finished (unexpected)\n");
  } catch (const std::system_error& e) {
    if (e.code() != std::errc::operation_canceled) throw;
    std::printf("sleeper: cancelled after %.3f s; join() threw operation_canceled: %s\n",
                seconds_since(cancel_start), e.what());
  }

  // 3. Timeouts (asyncio.wait_for): with_timeout runs the job on a child fiber; if it overruns,
  //    the child is cancelled and unwound, then timed_out is thrown.
  std::printf("== timeout\n");
  // The quick job's limit is a hundred of its steps, not two: a loaded or emulated machine can be
  // late by far more than a step, and a quick job that times out is no demonstration.
  const Ms quick_limit = step * 100;
  const int quick = skein::with_timeout(quick_limit, [step] {
    skein::sleep_for(step);
    return 7;
  });
  std::printf("quick job within %.3f s: returned %d\n", std::chrono::duration<double>(quick_limit).count(),
              quick);
  const Ms limit = step * 2;
  const auto timeout_start = skein::Clock::now();
  try {
    skein::with_timeout(limit, [] {
      Unwound guard{"slow job"};
      skein::sleep_for(1h);
      return 0;
    });
    std::printf("slow job: finished (unexpected)\n");
  } catch (const std::system_error& e) {
    if (e.code() != std::errc::timed_out) throw;
    std::printf("slow job: timed out after %.3f s; with_timeout threw timed_out: %s\n",
                seconds_since(timeout_start), e.what());
  }

  // 4. A task's exception is kept until join() rethrows it, unchanged.
  std::printf("== exception\n");
  auto failing = skein::spawn(skein::FiberOptions{"failing"}, []() -> int {
    skein::yield();
    throw std::runtime_error("disk on fire");
  });
  try {
    failing.join();
  } catch (const std::runtime_error& e) {
    std::printf("failing: join() rethrew std::runtime_error: %s\n", e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "tasks";
  int n = 10;
  int step_ms = 100;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (cli::option("--tasks", i, argc, argv, value)) {
      n = cli::number("--tasks", value, 1, 10000);
    } else if (cli::option("--step-ms", i, argc, argv, value)) {
      step_ms = cli::number("--step-ms", value, 1, 10000);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  try {
    return skein::run([&] { return demo(n, Ms(step_ms)); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tasks: %s\n", e.what());
    return 1;
  }
}
