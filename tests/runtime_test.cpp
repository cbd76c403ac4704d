// The multi-worker runtime: spawn_on, fibers staying on their worker, join/cancel/timeouts between
// workers, the claimed wake-up protocol under contention, and Runtime for outside threads. Meson
// runs this suite once per worker count (SKEIN_TEST_WORKERS = 1, 2, 4, 8): more workers than
// cores is deliberate, it shakes out races.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include "worker_options.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

using skein_test::error_of;
using skein_test::options;
using skein_test::workers;

}  // namespace

TEST_SUITE("runtime") {
  TEST_CASE("run with N workers returns the main fiber's value; main runs on worker 0, this thread") {
    const auto caller = std::this_thread::get_id();
    const auto [value, where, count, thread] = skein::run(options(), [] {
      return std::tuple{42, skein::this_worker(), skein::worker_count(), std::this_thread::get_id()};
    });
    CHECK(value == 42);
    CHECK(where == 0);
    CHECK(count == workers());
    CHECK(thread == caller);
    CHECK(skein::worker_count() == 1);  // outside a runtime
  }

  TEST_CASE("this_worker() outside a runtime is no_worker, never mistaken for worker 0") {
    CHECK(skein::this_worker() == skein::no_worker);
    CHECK(skein::run(options(), [] { return skein::this_worker(); }) == 0);
    skein::Runtime rt(options());
    CHECK(rt.spawn_on(0, [] { return skein::this_worker(); }).join() == 0);
    CHECK(skein::this_worker() == skein::no_worker);  // this thread is outside rt
  }

  TEST_CASE("fiber ids stay small numbers, for fibers spawned from threads outside a Runtime too") {
    skein::Runtime rt(options());
    std::vector<std::uint64_t> ids;
    for (int i = 0; i < 20; ++i)
      ids.push_back(rt.spawn_on(static_cast<std::size_t>(i) % rt.worker_count(), [] {
                        return skein::spawn([] { return skein::this_fiber::id(); }).join();
                      }).join());
    for (int i = 0; i < 20; ++i) ids.push_back(rt.spawn_on(0, [] { return skein::this_fiber::id(); }).join());
    std::sort(ids.begin(), ids.end());
    CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end());  // unique
    CHECK(ids.front() >= 1);
    CHECK(ids.back() <= 100 * (rt.worker_count() + 1));
  }

  TEST_CASE("spawn_on runs a fiber on that worker's thread, and it stays there across waits") {
    skein::run(options(), [] {
      std::vector<skein::Task<bool>> tasks;
      for (std::size_t i = 0; i < 4 * workers(); ++i) {
        const std::size_t w = i % workers();
        tasks.push_back(skein::spawn_on(w, [w] {
          const auto thread = std::this_thread::get_id();
          bool stayed = skein::this_worker() == w;
          for (int k = 0; k < 20; ++k) {
            if (k % 2)
              skein::yield();
            else
              skein::sleep_for(100us);
            stayed = stayed && skein::this_worker() == w && std::this_thread::get_id() == thread;
          }
          return stayed;
        }));
      }
      for (auto& t : tasks) CHECK(t.join());
    });
  }

  TEST_CASE("workers are distinct threads") {
    skein::run(options(), [] {
      std::vector<skein::Task<std::thread::id>> tasks;
      for (std::size_t w = 0; w < workers(); ++w)
        tasks.push_back(skein::spawn_on(w, [] { return std::this_thread::get_id(); }));
      std::vector<std::thread::id> ids;
      for (auto& t : tasks) ids.push_back(t.join());
      std::sort(ids.begin(), ids.end());
      CHECK(std::unique(ids.begin(), ids.end()) == ids.end());
    });
  }

  TEST_CASE("a ring of fibers, each joining its neighbour on the next worker") {
    static constexpr int ring = 200;
    const int total = skein::run(options(), [] {
      std::vector<skein::Task<int>> tasks(ring);
      // Built from the end: fiber i joins fiber i + 1, which lives on another worker.
      for (int i = ring - 1; i >= 0; --i) {
        skein::Task<int>* next = i + 1 < ring ? &tasks[static_cast<std::size_t>(i + 1)] : nullptr;
        tasks[static_cast<std::size_t>(i)] = skein::spawn_on(static_cast<std::size_t>(i) % workers(), [next] {
          skein::sleep_for(50us);
          return 1 + (next ? next->join() : 0);
        });
      }
      return tasks[0].join();
    });
    CHECK(total == ring);
  }

  TEST_CASE("an exception crosses workers through join") {
    skein::run(options(), [] {
      auto t = skein::spawn_on(workers() - 1, []() -> int { throw std::runtime_error("far away"); });
      try {
        t.join();
        FAIL("join did not rethrow");
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "far away");
      }
    });
  }

  TEST_CASE("cancel from another worker wakes a parked fiber; before it starts it never runs") {
    skein::run(options(), [] {
      const std::size_t far = workers() - 1;
      auto sleeper = skein::spawn_on(far, [] { skein::sleep_for(60s); });
      skein::sleep_for(2ms);
      const auto start = skein::Clock::now();
      sleeper.cancel();
      CHECK(error_of([&] { sleeper.join(); }) == std::errc::operation_canceled);
      CHECK(skein::Clock::now() - start < 5s);

      std::atomic<bool> ran{false};
      auto never = skein::spawn_on(far, [&ran] { ran = true; });
      never.cancel();
      // Cancelled before it started, or (another worker was quicker) it ran to the end first: the
      // body has no wait, so nothing in between.
      const std::errc e = error_of([&] { never.join(); });
      CHECK(e == (ran ? std::errc{} : std::errc::operation_canceled));
    });
  }

  TEST_CASE("a fiber parked in a join on another worker is cancelled out of it") {
    skein::run(options(), [] {
      auto target = skein::spawn_on(0, [] { skein::sleep_for(300ms); });
      auto waiter = skein::spawn_on(workers() - 1, [&target] { target.wait(); });
      skein::sleep_for(5ms);
      waiter.cancel();
      CHECK(error_of([&] { waiter.join(); }) == std::errc::operation_canceled);
      CHECK_FALSE(target.done());
      target.join();
    });
  }

  TEST_CASE("join_until across workers: the deadline passes, the task goes on, a later join gets it") {
    skein::run(options(), [] {
      auto slow = skein::spawn_on(workers() - 1, [] {
        skein::sleep_for(50ms);
        return 7;
      });
      CHECK(error_of([&] { slow.join_for(1ms); }) == std::errc::timed_out);
      CHECK(slow.valid());
      CHECK(slow.join() == 7);
    });
  }

  TEST_CASE("racing deadlines against finishes: every join either gets the value or times out cleanly") {
    // Thousands of joins whose deadline lands close to the moment the joined fiber on another
    // worker finishes: the claimed wake-up protocol must hand each waiter exactly one outcome.
    std::atomic<int> values{0}, timeouts{0};
    skein::run(options(), [&] {
      std::vector<skein::Task<void>> joiners;
      for (int i = 0; i < 400; ++i) {
        joiners.push_back(skein::spawn_on(static_cast<std::size_t>(i) % workers(), [&, i] {
          std::minstd_rand rng(static_cast<unsigned>(i));
          for (int k = 0; k < 5; ++k) {
            const auto work = std::chrono::microseconds(rng() % 300);
            auto t = skein::spawn_on((static_cast<std::size_t>(i) + 1) % workers(), [work] {
              skein::sleep_for(work);
              return 1;
            });
            if (t.wait_for(std::chrono::microseconds(rng() % 300))) {
              CHECK(t.done());
              values += t.join();
            } else {
              ++timeouts;
              t.join();
            }
          }
        }));
      }
      skein::join_all(joiners);
    });
    CHECK(values + timeouts == 400 * 5);
    MESSAGE(values.load() << " joins got the value, " << timeouts.load() << " timed out first");
  }

  TEST_CASE("unpark races timeouts: each wake-up is delivered exactly once, to a fiber still waiting") {
    // Waiters park on a shared WaitList with short deadlines; wakers on other workers pop them and
    // unpark. A notify_node that returns true must be received as Wake::notified, and only then.
    std::atomic<long> claimed{0}, notified{0}, timed_out{0};
    skein::run(options(), [&] {
      skein::detail::WaitList list;
      std::atomic<bool> done{false};
      std::vector<skein::Task<void>> waiters, wakers;
      for (int i = 0; i < 64; ++i)
        waiters.push_back(skein::spawn_on(static_cast<std::size_t>(i) % workers(), [&, i] {
          std::minstd_rand rng(static_cast<unsigned>(i));
          for (int k = 0; k < 200; ++k) {
            skein::detail::WaitNode node{skein::detail::current_fiber()};
            {
              std::lock_guard lock(list.lock);
              list.push_back(&node);
            }
            const auto w = skein::detail::park(skein::deadline_after(std::chrono::microseconds(rng() % 100)),
                                               &skein::detail::unlink_wait_node, &node);
            if (w == skein::detail::Wake::notified)
              ++notified;
            else
              ++timed_out;
          }
        }));
      for (std::size_t w = 0; w < workers(); ++w)
        wakers.push_back(skein::spawn_on(w, [&] {
          while (!done) {
            {
              std::lock_guard lock(list.lock);
              if (skein::detail::WaitNode* n = list.pop_front())
                if (skein::detail::notify_node(n)) ++claimed;
            }
            skein::yield();
          }
        }));
      skein::join_all(waiters);
      done = true;
      skein::join_all(wakers);
      CHECK(list.empty());
    });
    CHECK(notified + timed_out == 64 * 200);
    CHECK(claimed == notified);
    MESSAGE(notified.load() << " woken, " << timed_out.load() << " timed out");
  }

  TEST_CASE("run ends only when fibers spawned late on other workers have finished") {
    std::atomic<int> finished{0};
    skein::run(options(), [&] {
      // A detached chain: each link spawns the next on another worker and returns at once.
      struct Link {
        static void go(std::atomic<int>& finished, int left) {
          skein::sleep_for(200us);
          ++finished;
          if (left > 0)
            skein::spawn_on(static_cast<std::size_t>(left) % skein::worker_count(), [&finished, left] {
              go(finished, left - 1);
            }).detach();
        }
      };
      skein::spawn_on(workers() - 1, [&finished] { Link::go(finished, 49); }).detach();
    });
    CHECK(finished == 50);
  }

  TEST_CASE("many fibers hopping across workers through spawn_on and join") {
    std::atomic<long> sum{0};
    skein::run(options(), [&] {
      std::vector<skein::Task<void>> tasks;
      for (int i = 0; i < 100; ++i)
        tasks.push_back(skein::spawn_on(static_cast<std::size_t>(i) % workers(), [&sum, i] {
          for (int hop = 0; hop < 20; ++hop) {
            auto t = skein::spawn_on(static_cast<std::size_t>(i + hop) % skein::worker_count(), [hop] {
              skein::yield();
              return hop;
            });
            sum += t.join();
          }
        }));
      skein::join_all(tasks);
    });
    CHECK(sum == 100L * (19 * 20 / 2));
  }

  TEST_CASE("misuse: a worker out of range, spawn_on outside a runtime, zero workers means cores") {
    CHECK(error_of([] { skein::spawn_on(0, [] {}); }) == std::errc::operation_not_permitted);
    skein::run(options(), [] {
      CHECK(error_of([] { skein::spawn_on(workers(), [] {}); }) == std::errc::invalid_argument);
    });
    const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
    CHECK(skein::run(skein::RuntimeOptions{0}, [] { return skein::worker_count(); }) == cores);
  }

  TEST_CASE("Runtime: plain threads spawn fibers, join them (blocking), and time out waiting") {
    skein::Runtime rt(options());
    CHECK(rt.worker_count() == workers());
    std::vector<std::thread> threads;
    std::atomic<int> sum{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&rt, &sum, t] {
        for (int i = 0; i < 50; ++i) {
          auto task = rt.spawn_on(static_cast<std::size_t>(t + i) % rt.worker_count(), [i] {
            skein::sleep_for(50us);
            return i;
          });
          sum += task.join();
        }
      });
    for (auto& t : threads) t.join();
    CHECK(sum == 4 * (49 * 50 / 2));

    auto slow = rt.spawn_on(0, [] {
      skein::sleep_for(100ms);
      return 3;
    });
    CHECK_FALSE(slow.wait_for(1ms));
    CHECK(slow.join() == 3);

    auto sleeper = rt.spawn_on(rt.worker_count() - 1, [] { skein::sleep_for(60s); });
    sleeper.cancel();  // from a plain thread
    CHECK(error_of([&] { sleeper.join(); }) == std::errc::operation_canceled);

    rt.shutdown();
    CHECK(error_of([&] { rt.spawn_on(0, [] {}); }) == std::errc::operation_not_permitted);
  }

  TEST_CASE(
      "a plain thread and fibers join one task at once: one gets the value, the others invalid_argument") {
    skein::Runtime rt(options());
    for (int round = 0; round < 50; ++round) {
      auto task = rt.spawn_on(0, [round] {
        if (round % 2) skein::sleep_for(100us);
        return round;
      });
      std::atomic<int> got{0}, refused{0};
      auto join_it = [&] {
        const std::errc e = error_of([&] { got += task.join() + 1; });
        if (e == std::errc::invalid_argument) ++refused;
      };
      auto fiber = rt.spawn_on(rt.worker_count() - 1, join_it);
      auto other = rt.spawn_on(0, join_it);
      std::thread thread(join_it);
      thread.join();
      fiber.join();
      other.join();
      CHECK(got == round + 1);
      CHECK(refused == 2);
    }
  }

  TEST_CASE("a single-worker run waiting on another runtime's task is waiting, not deadlocked") {
    skein::Runtime rt(options());
    auto far = rt.spawn_on(0, [] {
      skein::sleep_for(100ms);
      return 42;
    });
    // Nothing on this run's worker can wake the main fiber but the other runtime: no timers, no
    // I/O. Deadlock recovery must not cancel it.
    CHECK(skein::run([&far] { return far.join(); }) == 42);
  }

  TEST_CASE("Runtime: shutdown from several threads at once, and from one of its own fibers") {
    skein::Runtime rt(options());
    CHECK(error_of([&rt] { rt.spawn_on(0, [&rt] { rt.shutdown(); }).join(); }) ==
          std::errc::resource_deadlock_would_occur);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back([&rt] { rt.shutdown(); });
    for (auto& t : threads) t.join();
    CHECK(error_of([&rt] { rt.spawn_on(0, [] {}); }) == std::errc::operation_not_permitted);
  }

  TEST_CASE("a worker that cannot start (out of descriptors) makes the runtime throw, not crash") {
    // In a child: the descriptor limit is lowered so a worker's eventfd fails.
    // Under UBSan the child may print "invalid vptr" for the exception it reports: the sanitizer
    // checks that an object is readable by writing it into a pipe(), which fails here for want of
    // descriptors, so it takes every object for unreadable. The sanitizer's, not skein's.
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Fill every free descriptor below a low limit, then free exactly one: room for worker 0's
      // eventfd, none for worker 1's.
      rlimit low{0, 0};
      getrlimit(RLIMIT_NOFILE, &low);
      low.rlim_cur = 256;
      setrlimit(RLIMIT_NOFILE, &low);
      int last = -1;
      for (int fd; (fd = dup(STDERR_FILENO)) >= 0;) last = fd;
      if (last >= 0) close(last);
      try {
        skein::run(skein::RuntimeOptions{8}, [] {});
      } catch (const std::system_error& e) {
        _exit(e.code() == std::errc::too_many_files_open ? 0 : 3);
      } catch (...) {
        _exit(4);
      }
      _exit(5);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  TEST_CASE("spin_before_sleep: a worker polls for the window after its last work, then sleeps") {
    auto cpu_now = [] {
      timespec ts{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
    };
    skein::RuntimeOptions spinning = options();
    spinning.spin_before_sleep = 20ms;
    // Busy: short sleeps inside the window keep the worker polling (on the CPU) throughout.
    auto start = cpu_now();
    skein::run(spinning, [] {
      for (int i = 0; i < 10; ++i) skein::sleep_for(5ms);
    });
    const auto busy_cpu = cpu_now() - start;
    // Idle: once the window has passed the worker sleeps in the kernel (no CPU for the rest).
    start = cpu_now();
    const auto wall = skein::Clock::now();
    skein::run(spinning, [] { skein::sleep_for(300ms); });
    const auto idle_cpu = cpu_now() - start;
    CHECK(skein::Clock::now() - wall >= 300ms);
    MESSAGE("busy: " << std::chrono::duration<double, std::milli>(busy_cpu).count()
                     << " ms CPU in ~50 ms; idle: "
                     << std::chrono::duration<double, std::milli>(idle_cpu).count() << " ms CPU in 300 ms");
    CHECK(busy_cpu >= 20ms);   // it did poll (generous: the machine may be busy)
    CHECK(idle_cpu <= 150ms);  // and then slept: at most about one window per worker
  }

  TEST_CASE(
      "workers that just exchanged a thousand messages spin briefly, then sleep: idle, they use no CPU") {
    auto cpu_now = [] {
      timespec ts{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
    };
    const auto idle_cpu = skein::run(options(), [&] {
      // A ping-pong across workers: what makes them spin before sleeping.
      skein::Channel<int> there, back;
      auto echo = skein::spawn_on(workers() - 1, [&] {
        while (const std::optional<int> v = there.recv()) back.send(*v + 1);
      });
      for (int i = 0; i < 1000; ++i) {
        there.send(i);
        CHECK(back.recv() == i + 1);
      }
      there.close();
      echo.join();
      // Now every worker idles for 200 ms: each may spin once, for at most idle_spin (20 us).
      const auto start = cpu_now();
      skein::sleep_for(200ms);
      return cpu_now() - start;
    });
    MESSAGE(std::chrono::duration<double, std::milli>(idle_cpu).count()
            << " ms CPU in 200 ms idle, " << workers() << " workers");
    CHECK(idle_cpu <= 40ms);  // generous (sanitizers, a busy machine); a spinning worker would take 200 ms
  }

  TEST_CASE(
      "a message wakes a worker asleep on its futex, and one asleep in epoll because a fiber waits on I/O") {
    skein::run(options(), [] {
      const std::size_t far = workers() - 1;
      for (const bool with_io : {false, true}) {
        skein::Channel<skein::TimePoint> ch;
        int fds[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        skein::Stream quiet(fds[0]), peer(fds[1]);
        // A reader parked on a socket nobody writes to keeps the far worker's driver busy: it then
        // sleeps in epoll_wait, not on its futex.
        auto reader = skein::spawn_on(far, [&] {
          if (!with_io) return;
          char c[1];
          CHECK(quiet.read(c) == 0);  // the peer's shutdown below
        });
        auto receiver = skein::spawn_on(far, [&] {
          const std::optional<skein::TimePoint> sent = ch.recv();
          REQUIRE(sent);
          return skein::Clock::now() - *sent;
        });
        skein::sleep_for(30ms);  // long enough for the far worker to have fallen asleep
        ch.send(skein::Clock::now());
        const auto latency = receiver.join();
        CHECK(latency < 1s);  // woken, not found by a later timeout (the receiver has none)
        peer.shutdown();
        reader.join();
      }
    });
  }

  TEST_CASE("a worker asleep on its futex wakes for its own timers") {
    skein::run(options(), [] {
      auto late = skein::spawn_on(workers() - 1, [] {
        std::chrono::nanoseconds worst{0};
        for (int i = 0; i < 5; ++i) {
          const auto start = skein::Clock::now();
          skein::sleep_for(10ms);
          const auto took = skein::Clock::now() - start;
          CHECK(took >= 10ms);
          worst = std::max(worst, took - std::chrono::nanoseconds(10ms));
        }
        return worst;
      });
      CHECK(late.join() < 500ms);  // generous: a busy machine may be slow to schedule the thread
    });
  }

  TEST_CASE("Runtime: the destructor waits for detached fibers") {
    std::atomic<int> done{0};
    {
      skein::Runtime rt(options());
      for (std::size_t w = 0; w < rt.worker_count(); ++w)
        rt.spawn_on(w, [&done] {
            skein::sleep_for(20ms);
            ++done;
          }).detach();
    }
    CHECK(done == static_cast<int>(workers()));
  }
}
