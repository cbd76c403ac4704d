// Mutex, ConditionVariable, Event, Semaphore, WaitGroup, Barrier, Promise/Future and TimeoutScope:
// the normal path, timeouts (a waiter that gives up leaves the queue, and no hand-off is lost or
// given to it), cancellation, FIFO service, and use between fibers on different workers and plain
// threads. Meson runs this suite once per worker count (SKEIN_TEST_WORKERS = 1, 2, 4); with one
// worker, far(i) is worker 0 and every "cross-worker" case runs on one thread.
//
// Where a waiter must be queued before the next step, the test waits for it to announce itself
// (an atomic bumped just before the wait) and then settles for 20 ms, or, for a condition variable,
// takes the mutex the waiter releases only once queued. Every wait a bug could turn into a hang has
// a generous deadline of its own, so a lost wake-up fails a check instead of hanging the suite.
// Timing checks are loose: a 50 ms timeout must take at least 50 ms and less than 2 s.
//
// The regression cases at the end are for bugs this suite found (each comment says what was wrong).
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include "worker_options.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

using skein_test::error_of;
using skein_test::options;
using skein_test::workers;

// A worker "i steps away": spread fibers over every worker of the running runtime.
std::size_t far(std::size_t i) {
  return i % skein::worker_count();
}

// The std::future_errc a call throws, or none.
template <class F>
std::optional<std::future_errc> future_error_of(F&& f) {
  try {
    f();
  } catch (const std::future_error& e) {
    return static_cast<std::future_errc>(e.code().value());
  }
  return std::nullopt;
}

skein::Clock::duration since(skein::TimePoint start) {
  return skein::Clock::now() - start;
}

// Parks a fiber (sleeps a plain thread) until `count` reaches `n`; fails rather than hang.
void await_count(const std::atomic<int>& count, int n) {
  const auto give_up = skein::Clock::now() + 10s;
  while (count.load() < n) {
    REQUIRE(skein::Clock::now() < give_up);
    skein::sleep_for(1ms);
  }
}

// As await_count, then long enough for each party that announced itself just before starting a
// wait to be queued in it (a few instructions on another thread).
void await_arrivals(const std::atomic<int>& count, int n) {
  await_count(count, n);
  skein::sleep_for(20ms);
}

// A plain std::thread (no fiber) that a fiber can join without blocking its worker: join() waits on
// an Event the thread sets last, then joins it.
class PlainThread {
 public:
  template <class F>
  explicit PlainThread(F f)
      : thread_([this, f = std::move(f)]() mutable {
          f();
          done_.set();
        }) {}
  ~PlainThread() {
    if (thread_.joinable()) join();
  }
  PlainThread(const PlainThread&) = delete;
  PlainThread& operator=(const PlainThread&) = delete;

  void join() {
    done_.wait();
    thread_.join();
  }

 private:
  skein::Event done_;
  std::thread thread_;
};

}  // namespace

TEST_SUITE("sync") {
  // ---- Mutex --------------------------------------------------------------------------------

  TEST_CASE("a Mutex is exclusive and works with lock_guard, unique_lock and scoped_lock") {
    skein::run(options(), [] {
      skein::Mutex m;
      CHECK(m.try_lock());
      CHECK_FALSE(m.try_lock());
      CHECK(error_of([&] { (void)m.try_lock_for(1ms); }) == std::errc::resource_deadlock_would_occur);
      m.unlock();
      {
        std::unique_lock lock(m, 10ms);  // TimedLockable: try_lock_for
        CHECK(lock.owns_lock());
        CHECK_FALSE(m.try_lock());
      }
      CHECK(m.try_lock());
      m.unlock();

      // Two fibers (on different workers when there are several) take two mutexes in opposite
      // orders through std::scoped_lock, whose deadlock avoidance relies on try_lock and lock.
      skein::Mutex a, b;
      long both = 0;  // guarded by a and b
      auto one = skein::spawn_on(far(1), [&] {
        for (int i = 0; i < 300; ++i) {
          std::scoped_lock lock(a, b);
          ++both;
          if (i % 16 == 0) skein::yield();
        }
      });
      auto two = skein::spawn_on(far(2), [&] {
        for (int i = 0; i < 300; ++i) {
          std::scoped_lock lock(b, a);
          ++both;
          if (i % 16 == 0) skein::yield();
        }
      });
      one.join();
      two.join();
      CHECK(both == 600);
      CHECK(a.try_lock());
      CHECK(b.try_lock());
      a.unlock();
      b.unlock();
    });
  }

  TEST_CASE("Mutex waiters are served in arrival order, fibers on other workers and a plain thread alike") {
    skein::run(options(), [] {
      skein::Mutex m;
      std::vector<int> order;  // guarded by m
      std::atomic<int> arrived{0};
      m.lock();
      std::vector<skein::Task<void>> fibers;
      std::optional<PlainThread> thread;
      constexpr int n = 6;
      for (int i = 0; i < n; ++i) {
        auto body = [&m, &order, &arrived, i] {
          ++arrived;
          std::lock_guard lock(m);
          order.push_back(i);
        };
        if (i == 3)
          thread.emplace(body);
        else
          fibers.push_back(skein::spawn_on(far(static_cast<std::size_t>(i) + 1), body));
        await_arrivals(arrived, i + 1);
      }
      m.unlock();
      for (auto& f : fibers) f.join();
      thread->join();
      CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5});
    });
  }

  TEST_CASE("a fiber that unlocks and re-locks a Mutex in a loop cannot starve a waiter queued meanwhile") {
    skein::run(options(), [] {
      skein::Mutex m;
      int rounds = 0;  // guarded by m
      int fiber_saw = -1, thread_saw = -1;
      std::atomic<int> arrived{0};
      m.lock();
      auto fiber = skein::spawn_on(far(1), [&] {
        ++arrived;
        std::lock_guard lock(m);
        fiber_saw = rounds;
      });
      await_arrivals(arrived, 1);
      // The hog never yields between its unlock and its next lock: with hand-off, its very first
      // unlock gives the lock to the waiter and its re-lock queues behind it.
      for (int i = 0; i < 100; ++i) {
        m.unlock();
        m.lock();
        ++rounds;
      }
      PlainThread thread([&] {
        ++arrived;
        std::lock_guard lock(m);
        thread_saw = rounds;
      });
      await_arrivals(arrived, 2);
      for (int i = 0; i < 100; ++i) {
        m.unlock();
        m.lock();
        ++rounds;
      }
      m.unlock();
      fiber.join();
      thread.join();
      CHECK(fiber_saw == 0);
      CHECK(thread_saw == 100);
    });
  }

  TEST_CASE("Mutex::try_lock does not barge past a waiter the lock was handed to") {
    skein::run(options(), [] {
      skein::Mutex m;
      bool got = false;
      m.lock();
      auto waiter = skein::spawn([&] {  // this worker: it cannot run until main waits
        std::lock_guard lock(m);
        got = true;
      });
      skein::yield();  // the waiter runs and queues
      m.unlock();      // hands the lock to it; it has not run yet
      CHECK_FALSE(got);
      CHECK_FALSE(m.try_lock());
      waiter.join();
      CHECK(got);
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  TEST_CASE(
      "Mutex::try_lock_for gives up at its deadline and leaves the queue: the next unlock goes to the next "
      "live waiter") {
    skein::run(options(), [] {
      skein::Mutex m;
      std::atomic<int> arrived{0};
      m.lock();
      // A fiber that gives up, then a plain thread that gives up, each ahead of a waiter that stays.
      auto quitter = skein::spawn_on(far(1), [&] {
        ++arrived;
        const auto start = skein::Clock::now();
        const bool got = m.try_lock_for(50ms);
        return std::pair{got, since(start)};
      });
      await_arrivals(arrived, 1);
      bool thread_got = true;
      skein::Clock::duration thread_took{};
      PlainThread thread([&] {
        ++arrived;
        const auto start = skein::Clock::now();
        thread_got = m.try_lock_for(60ms);
        thread_took = since(start);
      });
      await_arrivals(arrived, 2);
      auto stayer = skein::spawn_on(far(2), [&] {
        ++arrived;
        const bool got = m.try_lock_for(10s);
        if (got) m.unlock();
        return got;
      });
      await_arrivals(arrived, 3);
      const auto [got, took] = quitter.join();
      thread.join();
      CHECK_FALSE(got);
      CHECK(took >= 50ms);
      CHECK(took < 2s);
      CHECK_FALSE(thread_got);
      CHECK(thread_took >= 60ms);
      CHECK(thread_took < 2s);
      CHECK_FALSE(m.try_lock());  // still main's: giving up changed nothing
      const auto start = skein::Clock::now();
      m.unlock();
      CHECK(stayer.join());
      CHECK(since(start) < 2s);
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  TEST_CASE("a Mutex unlocked after every waiter timed out is free for try_lock") {
    skein::run(options(), [] {
      skein::Mutex m;
      std::atomic<int> arrived{0};
      m.lock();
      std::vector<skein::Task<bool>> quitters;
      for (std::size_t i = 0; i < 3; ++i)
        quitters.push_back(skein::spawn_on(far(i + 1), [&] {
          ++arrived;
          return m.try_lock_for(30ms);
        }));
      bool thread_got = true;
      PlainThread thread([&] {
        ++arrived;
        thread_got = m.try_lock_for(30ms);
      });
      await_count(arrived, 4);
      for (auto& q : quitters) CHECK_FALSE(q.join());
      thread.join();
      CHECK_FALSE(thread_got);
      m.unlock();
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  TEST_CASE(
      "a fiber cancelled while waiting for a Mutex throws operation_canceled and the lock passes to the next "
      "waiter") {
    skein::run(options(), [] {
      skein::Mutex m;
      std::atomic<int> arrived{0};
      m.lock();
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        return error_of([&] {
          m.lock();
          m.unlock();
        });
      });
      await_arrivals(arrived, 1);
      auto next = skein::spawn_on(far(2), [&] {
        ++arrived;
        const bool got = m.try_lock_for(10s);
        if (got) m.unlock();
        return got;
      });
      await_arrivals(arrived, 2);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      CHECK_FALSE(m.try_lock());  // the cancel took nothing from the holder
      m.unlock();
      CHECK(next.join());
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  TEST_CASE("plain threads and fibers on every worker share one Mutex") {
    skein::run(options(), [] {
      skein::Mutex m;
      long counter = 0;  // guarded by m
      std::atomic<int> inside{0};
      std::atomic<bool> overlap{false};
      auto work = [&](int rounds) {
        for (int i = 0; i < rounds; ++i) {
          std::lock_guard lock(m);
          if (inside.fetch_add(1) != 0) overlap = true;
          ++counter;
          if (i % 8 == 0) skein::yield();  // nothing on a plain thread
          inside.fetch_sub(1);
        }
      };
      std::vector<skein::Task<void>> fibers;
      for (std::size_t i = 0; i < 2 * workers(); ++i)
        fibers.push_back(skein::spawn_on(far(i), [&] { work(500); }));
      std::list<PlainThread> threads;
      for (int t = 0; t < 2; ++t) threads.emplace_back([&] { work(500); });
      for (auto& f : fibers) f.join();
      for (auto& t : threads) t.join();
      CHECK_FALSE(overlap.load());
      CHECK(counter == 500L * static_cast<long>(fibers.size() + threads.size()));
    });
  }

  // ---- ConditionVariable --------------------------------------------------------------------

  TEST_CASE("ConditionVariable hands items from a producer to consumers on every worker and a plain thread") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      std::deque<int> queue;  // guarded by m
      bool closed = false;    // guarded by m
      std::atomic<long> sum{0};
      std::atomic<int> taken{0};
      std::atomic<bool> starved{false};
      auto consume = [&] {
        for (;;) {
          std::unique_lock lock(m);
          // A generous deadline turns a lost notification into a failed check, not a hang.
          if (!cv.wait_for(lock, 10s, [&] { return !queue.empty() || closed; })) {
            starved = true;
            return;
          }
          if (queue.empty()) return;
          const int v = queue.front();
          queue.pop_front();
          lock.unlock();
          sum += v;
          ++taken;
        }
      };
      std::vector<skein::Task<void>> consumers;
      for (std::size_t w = 0; w < workers(); ++w) consumers.push_back(skein::spawn_on(w, consume));
      PlainThread thread(consume);
      auto producer = skein::spawn_on(far(1), [&] {
        for (int i = 1; i <= 1000; ++i) {
          {
            std::lock_guard lock(m);
            queue.push_back(i);
          }
          cv.notify_one();
          if (i % 50 == 0) skein::sleep_for(100us);
        }
        {
          std::lock_guard lock(m);
          closed = true;
        }
        cv.notify_all();
      });
      producer.join();
      for (auto& c : consumers) c.join();
      thread.join();
      CHECK_FALSE(starved.load());
      CHECK(taken == 1000);
      CHECK(sum == 1000L * 1001 / 2);
    });
  }

  TEST_CASE("notify_one wakes the oldest waiter; notify_all wakes those queued at the time, and only them") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      std::vector<int> served;  // guarded by m
      std::atomic<int> arrived{0};
      std::vector<skein::Task<void>> fibers;
      std::optional<PlainThread> thread;
      constexpr int n = 5;
      for (int i = 0; i < n; ++i) {
        auto body = [&, i] {
          std::unique_lock lock(m);
          ++arrived;
          cv.wait(lock);  // no spurious wake-ups: a return means a notification
          served.push_back(i);
        };
        if (i == 2)
          thread.emplace(body);
        else
          fibers.push_back(skein::spawn_on(far(static_cast<std::size_t>(i) + 1), body));
        await_count(arrived, i + 1);
        // The waiter queued on the condition variable before it released the mutex: once this
        // lock is had, it is queued.
        std::lock_guard lock(m);
      }
      auto served_count = [&] {
        std::lock_guard lock(m);
        return served.size();
      };
      for (std::size_t k = 0; k < 3; ++k) {
        cv.notify_one();
        const auto give_up = skein::Clock::now() + 10s;
        while (served_count() < k + 1 && skein::Clock::now() < give_up) skein::sleep_for(1ms);
        skein::sleep_for(5ms);  // a second waiter woken by mistake would show now
        CHECK(served_count() == k + 1);
      }
      cv.notify_all();
      for (auto& f : fibers) f.join();
      thread->join();
      REQUIRE(served.size() == 5);
      CHECK(std::vector<int>(served.begin(), served.begin() + 3) == std::vector<int>{0, 1, 2});
      std::vector<int> rest(served.begin() + 3, served.end());
      std::sort(rest.begin(), rest.end());
      CHECK(rest == std::vector<int>{3, 4});
      // Notifications are not remembered: a later waiter waits.
      std::unique_lock lock(m);
      CHECK_FALSE(cv.wait_until(lock, 30ms));
      CHECK(lock.owns_lock());
    });
  }

  TEST_CASE(
      "ConditionVariable::wait_until times out holding the mutex, and a later notify_one reaches the next "
      "live waiter") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      bool main_inside =
          false;  // guarded by m: a waiter that returned without m would see true (and TSan a race)
      std::atomic<int> arrived{0};
      struct Outcome {
        bool notified = true;
        bool owns = false;
        bool saw_main_inside = true;
        skein::TimePoint returned{};
      };
      auto timed_wait = [&] {
        std::unique_lock lock(m);
        ++arrived;
        Outcome o;
        const auto start = skein::Clock::now();
        o.notified = cv.wait_until(lock, 60ms);
        o.returned = skein::Clock::now();
        CHECK(o.returned - start >= 60ms);
        CHECK(o.returned - start < 2s);
        o.owns = lock.owns_lock();
        o.saw_main_inside = main_inside;
        return o;
      };
      auto timed = skein::spawn_on(far(1), timed_wait);
      await_count(arrived, 1);
      Outcome thread_outcome;
      PlainThread thread([&] { thread_outcome = timed_wait(); });
      await_count(arrived, 2);
      auto stayer = skein::spawn_on(far(2), [&] {
        std::unique_lock lock(m);
        ++arrived;
        return cv.wait_until(lock, 10s);
      });
      await_count(arrived, 3);
      // Hold the mutex across the timed waiters' deadlines (unless setup was slower than they
      // are): a waiter whose deadline passes meanwhile re-locks before it returns.
      skein::TimePoint locked_at, unlocked_at;
      {
        std::lock_guard lock(m);
        locked_at = skein::Clock::now();
        main_inside = true;
        skein::sleep_for(100ms);
        main_inside = false;
        unlocked_at = skein::Clock::now();
      }
      const Outcome o = timed.join();
      thread.join();
      for (const Outcome& x : {o, thread_outcome}) {
        CHECK_FALSE(x.notified);
        CHECK(x.owns);
        CHECK_FALSE(x.saw_main_inside);
        CHECK((x.returned <= locked_at || x.returned >= unlocked_at));  // never inside main's hold
      }
      const auto start = skein::Clock::now();
      cv.notify_one();  // both timed waiters left: this one is the stayer's
      CHECK(stayer.join());
      CHECK(since(start) < 2s);
      // The predicate form returns the predicate's value at the deadline.
      std::unique_lock lock(m);
      CHECK_FALSE(cv.wait_for(lock, 20ms, [] { return false; }));
      CHECK(lock.owns_lock());
    });
  }

  TEST_CASE(
      "a cancelled ConditionVariable wait throws operation_canceled only once it holds the mutex again") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      std::atomic<int> arrived{0};
      bool main_inside = false;  // guarded by m
      struct Outcome {
        std::errc error;
        bool owns;
        bool saw_main_inside;
        bool could_lock;
      };
      auto victim = skein::spawn_on(far(1), [&] {
        std::unique_lock lock(m);
        ++arrived;
        const std::errc e = error_of([&] { cv.wait(lock); });
        return Outcome{e, lock.owns_lock(), main_inside, m.try_lock()};  // try_lock: false, it holds m
      });
      await_count(arrived, 1);
      { std::lock_guard lock(m); }
      auto other = skein::spawn_on(far(2), [&] {
        std::unique_lock lock(m);
        ++arrived;
        return cv.wait_until(lock, 10s);
      });
      await_count(arrived, 2);
      {
        std::lock_guard lock(m);  // `other` is queued too; the victim must wait for this lock
        main_inside = true;
        victim.cancel();
        skein::sleep_for(30ms);
        CHECK_FALSE(victim.done());
        main_inside = false;
      }
      const Outcome o = victim.join();
      CHECK(o.error == std::errc::operation_canceled);
      CHECK(o.owns);
      CHECK_FALSE(o.saw_main_inside);
      CHECK_FALSE(o.could_lock);
      cv.notify_one();  // the victim left the queue: this reaches `other`
      CHECK(other.join());
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  // ---- Event --------------------------------------------------------------------------------

  TEST_CASE(
      "Event::set wakes every waiter on every worker and a plain thread; later waits pass until clear") {
    skein::run(options(), [] {
      skein::Event ev;
      CHECK_FALSE(ev.is_set());
      std::atomic<int> arrived{0}, woken{0};
      std::vector<skein::Task<bool>> fibers;
      for (std::size_t i = 0; i < 2 * workers(); ++i)
        fibers.push_back(skein::spawn_on(far(i), [&] {
          ++arrived;
          const bool set = ev.wait_for(10s);
          ++woken;
          return set;
        }));
      bool thread_set = false;
      PlainThread thread([&] {
        ++arrived;
        thread_set = ev.wait_for(10s);
        ++woken;
      });
      await_arrivals(arrived, static_cast<int>(fibers.size()) + 1);
      CHECK(woken == 0);
      const auto start = skein::Clock::now();
      ev.set();
      for (auto& f : fibers) CHECK(f.join());
      thread.join();
      CHECK(thread_set);
      CHECK(since(start) < 2s);
      CHECK(ev.is_set());
      CHECK(ev.wait_for(0ms));  // set: passes at once
      ev.wait();
      ev.clear();
      CHECK_FALSE(ev.is_set());
      CHECK_FALSE(ev.wait_for(10ms));

      // The other way round: a plain thread sets, a fiber waits.
      PlainThread setter([&] {
        std::this_thread::sleep_for(20ms);
        ev.set();
      });
      CHECK(ev.wait_for(10s));
      setter.join();
    });
  }

  TEST_CASE("Event::wait_for times out, and a set afterwards still wakes the waiters that remain") {
    skein::run(options(), [] {
      skein::Event ev;
      std::atomic<int> arrived{0};
      auto quitter = skein::spawn_on(far(1), [&] {
        ++arrived;
        const auto start = skein::Clock::now();
        const bool set = ev.wait_for(40ms);
        return std::pair{set, since(start)};
      });
      bool thread_set = true;
      PlainThread thread([&] {
        ++arrived;
        thread_set = ev.wait_for(40ms);
      });
      auto stayer = skein::spawn_on(far(2), [&] {
        ++arrived;
        return ev.wait_for(10s);
      });
      await_count(arrived, 3);
      const auto [set, took] = quitter.join();
      thread.join();
      CHECK_FALSE(set);
      CHECK(took >= 40ms);
      CHECK(took < 2s);
      CHECK_FALSE(thread_set);
      CHECK_FALSE(stayer.done());
      ev.set();
      CHECK(stayer.join());
    });
  }

  TEST_CASE(
      "a fiber cancelled in Event::wait throws operation_canceled; the other waiters still get the set") {
    skein::run(options(), [] {
      skein::Event ev;
      std::atomic<int> arrived{0};
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        return error_of([&] { ev.wait(); });
      });
      std::vector<skein::Task<bool>> others;
      for (std::size_t i = 0; i < 3; ++i)
        others.push_back(skein::spawn_on(far(i + 2), [&] {
          ++arrived;
          return ev.wait_for(10s);
        }));
      await_arrivals(arrived, 4);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      CHECK_FALSE(ev.is_set());
      ev.set();
      for (auto& o : others) CHECK(o.join());
    });
  }

  // ---- Semaphore ----------------------------------------------------------------------------

  TEST_CASE("Semaphore counts permits: acquire, try_acquire, available, release of several") {
    skein::run(options(), [] {
      skein::Semaphore sem(2);
      CHECK(sem.available() == 2);
      sem.acquire();
      CHECK(sem.try_acquire());
      CHECK_FALSE(sem.try_acquire());
      CHECK_FALSE(sem.try_acquire_for(5ms));
      CHECK(sem.available() == 0);
      sem.release(2);
      CHECK(sem.available() == 2);
      CHECK(sem.try_acquire_for(5ms));
      CHECK(sem.try_acquire());
      // Two waiters on other workers; a release of three wakes both and pools the third.
      std::atomic<int> arrived{0};
      std::vector<skein::Task<bool>> waiters;
      for (std::size_t i = 0; i < 2; ++i)
        waiters.push_back(skein::spawn_on(far(i + 1), [&] {
          ++arrived;
          return sem.try_acquire_for(10s);
        }));
      await_arrivals(arrived, 2);
      CHECK(sem.available() == 0);
      sem.release(3);
      for (auto& w : waiters) CHECK(w.join());
      CHECK(sem.available() == 1);
      CHECK(sem.try_acquire());
      CHECK(sem.available() == 0);
    });
  }

  TEST_CASE("Semaphore waiters get released permits in arrival order, and try_acquire never barges") {
    skein::run(options(), [] {
      skein::Semaphore sem(0);
      std::atomic<int> arrived{0}, serial{0};
      constexpr int n = 5;
      std::vector<int> served_as(n, -1);  // written once each, read after the joins
      std::vector<skein::Task<void>> fibers;
      std::optional<PlainThread> thread;
      for (int i = 0; i < n; ++i) {
        auto body = [&, i] {
          ++arrived;
          if (sem.try_acquire_for(10s)) served_as[static_cast<std::size_t>(i)] = serial++;
        };
        if (i == 1)
          thread.emplace(body);
        else
          fibers.push_back(skein::spawn_on(far(static_cast<std::size_t>(i) + 1), body));
        await_arrivals(arrived, i + 1);
      }
      for (int k = 0; k < n; ++k) {
        CHECK_FALSE(sem.try_acquire());  // every released permit went to a waiter
        sem.release();
        await_count(serial, k + 1);
      }
      for (auto& f : fibers) f.join();
      thread->join();
      CHECK(served_as == std::vector<int>{0, 1, 2, 3, 4});
      CHECK(sem.available() == 0);

      // On one worker, deterministically: the permit handed to a waiter that has not run yet is
      // not there for try_acquire.
      bool got = false;
      auto waiter = skein::spawn([&] {
        sem.acquire();
        got = true;
      });
      skein::yield();
      sem.release();
      CHECK_FALSE(got);
      CHECK(sem.available() == 0);
      CHECK_FALSE(sem.try_acquire());
      waiter.join();
      CHECK(got);
    });
  }

  TEST_CASE(
      "a timed-out Semaphore waiter leaves the queue: a permit goes to the next live waiter, or to the "
      "pool") {
    skein::run(options(), [] {
      skein::Semaphore sem(0);
      std::atomic<int> arrived{0};
      auto quitter = skein::spawn_on(far(1), [&] {
        ++arrived;
        const auto start = skein::Clock::now();
        const bool got = sem.try_acquire_for(40ms);
        return std::pair{got, since(start)};
      });
      await_arrivals(arrived, 1);
      bool thread_got = true;
      PlainThread thread([&] {
        ++arrived;
        thread_got = sem.try_acquire_for(40ms);
      });
      await_arrivals(arrived, 2);
      auto stayer = skein::spawn_on(far(2), [&] {
        ++arrived;
        return sem.try_acquire_for(10s);
      });
      await_arrivals(arrived, 3);
      const auto [got, took] = quitter.join();
      thread.join();
      CHECK_FALSE(got);
      CHECK(took >= 40ms);
      CHECK(took < 2s);
      CHECK_FALSE(thread_got);
      sem.release();
      CHECK(stayer.join());
      CHECK(sem.available() == 0);

      // Every waiter times out; a permit released afterwards is in the pool.
      std::vector<skein::Task<bool>> quitters;
      for (std::size_t i = 0; i < 3; ++i)
        quitters.push_back(skein::spawn_on(far(i), [&] { return sem.try_acquire_for(30ms); }));
      for (auto& q : quitters) CHECK_FALSE(q.join());
      sem.release();
      CHECK(sem.available() == 1);
      CHECK(sem.try_acquire());
    });
  }

  TEST_CASE(
      "a fiber cancelled in Semaphore::acquire throws operation_canceled and the permit goes to the next "
      "waiter") {
    skein::run(options(), [] {
      skein::Semaphore sem(0);
      std::atomic<int> arrived{0};
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        return error_of([&] { sem.acquire(); });
      });
      await_arrivals(arrived, 1);
      auto next = skein::spawn_on(far(2), [&] {
        ++arrived;
        return sem.try_acquire_for(10s);
      });
      await_arrivals(arrived, 2);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      CHECK(sem.available() == 0);
      sem.release();
      CHECK(next.join());
      sem.release();
      CHECK(sem.available() == 1);
    });
  }

  // ---- WaitGroup ----------------------------------------------------------------------------

  TEST_CASE("WaitGroup: fibers on every worker and a plain thread wait for jobs spread over the workers") {
    skein::run(options(), [] {
      skein::WaitGroup wg;
      CHECK(wg.count() == 0);
      wg.wait();  // zero: returns at once
      constexpr int jobs = 40;
      std::atomic<int> finished{0};
      wg.add(jobs);
      CHECK(wg.count() == jobs);
      std::vector<skein::Task<int>> waiters;
      for (std::size_t w = 0; w < workers(); ++w)
        waiters.push_back(skein::spawn_on(w, [&] {
          CHECK(wg.wait_for(10s));
          return finished.load();
        }));
      int thread_saw = -1;
      PlainThread thread([&] {
        CHECK(wg.wait_for(10s));
        thread_saw = finished.load();
      });
      for (int i = 0; i < jobs; ++i)
        skein::spawn_on(far(static_cast<std::size_t>(i)), [&, i] {
          skein::sleep_for(std::chrono::microseconds(100 * (i % 7)));
          ++finished;
          wg.done();
        }).detach();
      for (auto& w : waiters) CHECK(w.join() == jobs);
      thread.join();
      CHECK(thread_saw == jobs);
      CHECK(wg.count() == 0);

      // Reusable: a second round, finished by a plain thread.
      wg.add(2);
      PlainThread finisher([&] {
        std::this_thread::sleep_for(10ms);
        wg.done();
        wg.add(-1);
      });
      CHECK(wg.wait_for(10s));
      CHECK(wg.count() == 0);
      finisher.join();
    });
  }

  TEST_CASE("WaitGroup: a count that would go negative throws invalid_argument and changes nothing") {
    skein::run(options(), [] {
      skein::WaitGroup wg;
      CHECK(error_of([&] { wg.done(); }) == std::errc::invalid_argument);
      CHECK(wg.count() == 0);
      wg.add(2);
      CHECK(error_of([&] { wg.add(-3); }) == std::errc::invalid_argument);
      CHECK(wg.count() == 2);
      // A waiter is not woken by the failed add.
      auto waiter = skein::spawn_on(far(1), [&] { return wg.wait_for(10s); });
      skein::sleep_for(10ms);
      CHECK(error_of([&] { wg.add(-5); }) == std::errc::invalid_argument);
      skein::sleep_for(10ms);
      CHECK_FALSE(waiter.done());
      wg.add(-2);
      CHECK(waiter.join());
      CHECK(wg.count() == 0);
      CHECK(error_of([&] { wg.add(-1); }) == std::errc::invalid_argument);
      CHECK(wg.count() == 0);
    });
  }

  TEST_CASE(
      "WaitGroup::wait_for times out, a cancelled wait throws, and the group still completes for the rest") {
    skein::run(options(), [] {
      skein::WaitGroup wg;
      wg.add();
      std::atomic<int> arrived{0};
      const auto start = skein::Clock::now();
      CHECK_FALSE(wg.wait_for(40ms));
      CHECK(since(start) >= 40ms);
      CHECK(since(start) < 2s);
      bool thread_done = true;
      PlainThread thread([&] { thread_done = wg.wait_for(30ms); });
      thread.join();
      CHECK_FALSE(thread_done);
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        return error_of([&] { wg.wait(); });
      });
      auto stayer = skein::spawn_on(far(2), [&] {
        ++arrived;
        return wg.wait_for(10s);
      });
      await_arrivals(arrived, 2);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      CHECK(wg.count() == 1);
      wg.done();
      CHECK(stayer.join());
    });
  }

  // ---- Barrier ------------------------------------------------------------------------------

  TEST_CASE("a Barrier of zero parties throws invalid_argument; one of one party never waits") {
    CHECK(error_of([] { skein::Barrier b(0); }) == std::errc::invalid_argument);
    skein::run(options(), [] {
      skein::Barrier b(1);
      CHECK(b.parties() == 1);
      for (int i = 0; i < 3; ++i) CHECK(b.arrive_and_wait());
      CHECK(b.arrive_and_wait_until(0ms) == std::optional<bool>(true));
    });
  }

  TEST_CASE(
      "Barrier: parties on every worker and a plain thread meet phase after phase, exactly one true per "
      "phase") {
    skein::run(options(), [] {
      const int parties = static_cast<int>(workers()) + 2;  // a fiber per worker, one more, a thread
      constexpr int phases = 30;
      skein::Barrier b(static_cast<std::size_t>(parties));
      CHECK(b.parties() == static_cast<std::size_t>(parties));
      std::vector<std::atomic<int>> arrivals(phases), trues(phases);
      std::atomic<bool> early{false};
      auto party = [&] {
        for (int p = 0; p < phases; ++p) {
          ++arrivals[static_cast<std::size_t>(p)];
          if (b.arrive_and_wait()) ++trues[static_cast<std::size_t>(p)];
          // Released only once every party has arrived in this phase.
          if (arrivals[static_cast<std::size_t>(p)].load() != parties) early = true;
        }
      };
      std::vector<skein::Task<void>> fibers;
      for (int i = 0; i < parties - 1; ++i)
        fibers.push_back(skein::spawn_on(far(static_cast<std::size_t>(i)), party));
      PlainThread thread(party);
      for (auto& f : fibers) f.join();
      thread.join();
      CHECK_FALSE(early.load());
      for (int p = 0; p < phases; ++p) {
        CAPTURE(p);
        CHECK(arrivals[static_cast<std::size_t>(p)].load() == parties);
        CHECK(trues[static_cast<std::size_t>(p)].load() == 1);
      }
    });
  }

  TEST_CASE("a timed-out Barrier arrival is withdrawn: the phase still needs a party") {
    skein::run(options(), [] {
      skein::Barrier b(2);
      const auto start = skein::Clock::now();
      CHECK_FALSE(b.arrive_and_wait_until(40ms).has_value());  // main, alone
      CHECK(since(start) >= 40ms);
      CHECK(since(start) < 2s);
      std::optional<bool> thread_result = true;
      PlainThread quitter([&] { thread_result = b.arrive_and_wait_until(30ms); });
      quitter.join();
      CHECK_FALSE(thread_result.has_value());
      // Had either arrival counted, this one would complete the phase alone.
      std::atomic<int> arrived{0};
      auto first = skein::spawn_on(far(1), [&] {
        ++arrived;
        return b.arrive_and_wait_until(10s);
      });
      await_arrivals(arrived, 1);
      CHECK_FALSE(first.done());
      CHECK(b.arrive_and_wait_until(10s) == std::optional<bool>(true));  // the last to arrive
      CHECK(first.join() == std::optional<bool>(false));
      // And the next phase starts from zero.
      CHECK_FALSE(b.arrive_and_wait_until(10ms).has_value());
    });
  }

  TEST_CASE("a cancelled Barrier arrival throws operation_canceled and is withdrawn too") {
    skein::run(options(), [] {
      skein::Barrier b(2);
      std::atomic<int> arrived{0};
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        return error_of([&] { b.arrive_and_wait(); });
      });
      await_arrivals(arrived, 1);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      CHECK_FALSE(b.arrive_and_wait_until(20ms).has_value());
      auto other = skein::spawn_on(far(2), [&] { return b.arrive_and_wait_until(10s); });
      const std::optional<bool> mine = b.arrive_and_wait_until(10s);
      const std::optional<bool> theirs = other.join();
      REQUIRE(mine.has_value());
      REQUIRE(theirs.has_value());
      CHECK(*mine != *theirs);  // exactly one true
    });
  }

  // ---- Promise / Future ---------------------------------------------------------------------

  TEST_CASE(
      "a Promise's value reaches fibers on every worker and a plain thread waiting on copies of one Future") {
    skein::run(options(), [] {
      skein::Promise<std::string> p;
      const skein::Future<std::string> f = p.get_future();
      CHECK(f.valid());
      CHECK_FALSE(f.ready());
      std::atomic<int> arrived{0};
      std::vector<skein::Task<const std::string*>> readers;
      for (std::size_t i = 0; i < 2 * workers(); ++i)
        readers.push_back(skein::spawn_on(far(i), [&arrived, copy = f] {
          ++arrived;
          const std::string& v = copy.get();
          CHECK(copy.get() == "hello");  // repeatable
          return &v;
        }));
      const std::string* thread_saw = nullptr;
      PlainThread thread([&arrived, &thread_saw, copy = f] {
        ++arrived;
        thread_saw = &copy.get();
      });
      await_arrivals(arrived, static_cast<int>(readers.size()) + 1);
      for (auto& r : readers) CHECK_FALSE(r.done());
      auto setter = skein::spawn_on(far(1), [&] { p.set_value("hello"); });
      setter.join();
      CHECK(f.ready());
      const std::string& mine = f.get();
      CHECK(mine == "hello");
      CHECK(&f.get() == &mine);
      for (auto& r : readers) CHECK(r.join() == &mine);  // one shared value, not copies
      thread.join();
      CHECK(thread_saw == &mine);
      CHECK(p.get_future().get() == "hello");
      CHECK(f.wait_for(0ms));
    });
  }

  TEST_CASE("Future::get rethrows the Promise's exception unchanged, to every reader") {
    struct Oops : std::runtime_error {
      Oops(const char* what, int c) : std::runtime_error(what), code(c) {}
      int code;
    };
    skein::run(options(), [] {
      skein::Promise<int> p;
      auto f = p.get_future();
      auto reader = skein::spawn_on(far(1), [f] {
        try {
          f.get();
        } catch (const Oops& e) {
          return std::pair{std::string(e.what()), e.code};
        }
        return std::pair{std::string("no exception"), 0};
      });
      p.set_exception(std::make_exception_ptr(Oops("bad thing", 42)));
      CHECK(reader.join() == std::pair{std::string("bad thing"), 42});
      const Oops* first = nullptr;
      try {
        f.get();
      } catch (const Oops& e) {
        first = &e;
        CHECK(e.code == 42);
      }
      REQUIRE(first != nullptr);
      try {
        f.get();
        FAIL("get did not rethrow");
      } catch (const Oops& e) {
        CHECK(&e == first);  // the same object, not a copy or a wrapper
      }
      std::string thread_saw;
      PlainThread thread([&] {
        try {
          f.get();
        } catch (const Oops& e) {
          thread_saw = e.what();
        }
      });
      thread.join();
      CHECK(thread_saw == "bad thing");
    });
  }

  TEST_CASE("satisfying a Promise twice throws promise_already_satisfied and keeps the first result") {
    skein::run(options(), [] {
      skein::Promise<int> p;
      auto f = p.get_future();
      p.set_value(1);
      CHECK(future_error_of([&] { p.set_value(2); }) == std::future_errc::promise_already_satisfied);
      CHECK(future_error_of([&] { p.set_exception(std::make_exception_ptr(std::runtime_error("x"))); }) ==
            std::future_errc::promise_already_satisfied);
      CHECK(f.get() == 1);

      // Racing setters on different workers: exactly one wins, and its value is the one read.
      for (int round = 0; round < 20; ++round) {
        skein::Promise<int> q;
        auto g = q.get_future();
        std::vector<skein::Task<bool>> setters;
        for (int i = 0; i < 4; ++i)
          setters.push_back(skein::spawn_on(far(static_cast<std::size_t>(i)), [&q, i] {
            return !future_error_of([&] { q.set_value(i); }).has_value();
          }));
        int winners = 0, winner = -1;
        for (int i = 0; i < 4; ++i)
          if (setters[static_cast<std::size_t>(i)].join()) {
            ++winners;
            winner = i;
          }
        CHECK(winners == 1);
        CHECK(g.get() == winner);
      }
    });
  }

  TEST_CASE("a Promise destroyed unsatisfied gives every Future broken_promise, waiting ones included") {
    skein::run(options(), [] {
      skein::Future<int> f;
      std::atomic<int> arrived{0};
      std::optional<skein::Task<std::optional<std::future_errc>>> waiter;
      {
        skein::Promise<int> p;
        f = p.get_future();
        waiter = skein::spawn_on(far(1), [&arrived, f] {
          ++arrived;
          return future_error_of([&] { f.get(); });
        });
        await_arrivals(arrived, 1);
      }
      CHECK(waiter->join() == std::future_errc::broken_promise);
      CHECK(f.ready());
      CHECK(future_error_of([&] { f.get(); }) == std::future_errc::broken_promise);

      // Moving another promise over an unsatisfied one breaks it; the moved-from one is empty.
      skein::Promise<int> a, b;
      auto fa = a.get_future();
      auto fb = b.get_future();
      a = std::move(b);
      CHECK(future_error_of([&] { fa.get(); }) == std::future_errc::broken_promise);
      CHECK(future_error_of([&] { b.set_value(1); }) == std::future_errc::no_state);
      a.set_value(5);
      CHECK(fb.get() == 5);
    });
  }

  TEST_CASE("Promise of a move-only type, Promise<void>, and empty Futures") {
    skein::run(options(), [] {
      skein::Promise<std::unique_ptr<int>> p;
      auto f = p.get_future();
      auto setter = skein::spawn_on(far(1), [&p] { p.set_value(std::make_unique<int>(7)); });
      const std::unique_ptr<int>& v = f.get();
      REQUIRE(v != nullptr);
      CHECK(*v == 7);
      CHECK(&f.get() == &v);
      setter.join();

      skein::Promise<void> done;
      auto fd = done.get_future();
      auto waiter = skein::spawn_on(far(2), [fd] { return fd.wait_for(10s); });
      CHECK_FALSE(fd.wait_for(5ms));
      done.set_value();
      CHECK(waiter.join());
      fd.get();
      CHECK(fd.ready());
      CHECK(future_error_of([&] { done.set_value(); }) == std::future_errc::promise_already_satisfied);

      const skein::Future<int> empty;
      CHECK_FALSE(empty.valid());
      CHECK_FALSE(empty.ready());
      CHECK(future_error_of([&] { empty.wait(); }) == std::future_errc::no_state);
      CHECK(future_error_of([&] { empty.get(); }) == std::future_errc::no_state);
      CHECK(future_error_of([&] { empty.wait_for(1ms); }) == std::future_errc::no_state);
    });
  }

  TEST_CASE(
      "Future::wait_for times out; a cancelled Future wait throws operation_canceled; the value still "
      "arrives") {
    skein::run(options(), [] {
      skein::Promise<int> p;
      auto f = p.get_future();
      const auto start = skein::Clock::now();
      CHECK_FALSE(f.wait_for(40ms));
      CHECK(since(start) >= 40ms);
      CHECK(since(start) < 2s);
      bool thread_ready = true;
      PlainThread thread([&] { thread_ready = f.wait_for(30ms); });
      thread.join();
      CHECK_FALSE(thread_ready);
      std::atomic<int> arrived{0};
      auto victim = skein::spawn_on(far(1), [&arrived, f] {
        ++arrived;
        return error_of([&] { f.get(); });
      });
      auto stayer = skein::spawn_on(far(2), [&arrived, f] {
        ++arrived;
        return f.wait_for(10s) ? f.get() : -1;
      });
      await_arrivals(arrived, 2);
      victim.cancel();
      CHECK(victim.join() == std::errc::operation_canceled);
      p.set_value(9);
      CHECK(stayer.join() == 9);
    });
  }

  TEST_CASE("a Promise whose value fails to construct stays unsatisfied and can be set again") {
    struct Picky {
      explicit Picky(int v) : value(v) {
        if (v < 0) throw std::invalid_argument("negative");
      }
      int value;
    };
    skein::run(options(), [] {
      skein::Promise<Picky> p;
      auto f = p.get_future();
      auto reader = skein::spawn_on(far(1), [f] { return f.wait_for(10s) ? f.get().value : -100; });
      CHECK_THROWS_AS(p.set_value(-1), std::invalid_argument);
      CHECK_FALSE(f.ready());
      p.set_value(4);
      CHECK(reader.join() == 4);
      CHECK(f.get().value == 4);
    });
  }

  TEST_CASE(
      "a plain thread wakes fibers on every worker: Mutex::unlock, Semaphore::release, Promise::set_value") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::Semaphore sem(0);
      skein::Promise<int> p;
      const auto f = p.get_future();
      skein::Event locked;
      std::atomic<int> arrived{0};
      PlainThread holder([&] {
        m.lock();
        locked.set();
        await_arrivals(arrived, 3 * static_cast<int>(workers()));
        m.unlock();
        sem.release(workers());
        p.set_value(11);
      });
      locked.wait();
      std::vector<skein::Task<int>> fibers;
      for (std::size_t w = 0; w < workers(); ++w) {
        fibers.push_back(skein::spawn_on(w, [&] {
          ++arrived;
          const bool got = m.try_lock_for(10s);
          if (got) m.unlock();
          return got ? 1 : 0;
        }));
        fibers.push_back(skein::spawn_on(w, [&] {
          ++arrived;
          return sem.try_acquire_for(10s) ? 1 : 0;
        }));
        fibers.push_back(skein::spawn_on(w, [&arrived, f] {
          ++arrived;
          return f.wait_for(10s) ? f.get() - 10 : 0;
        }));
      }
      int woken = 0;
      for (auto& t : fibers) woken += t.join();
      holder.join();
      CHECK(woken == 3 * static_cast<int>(workers()));
      CHECK(sem.available() == 0);
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  // ---- cancellation before the wait ---------------------------------------------------------

  TEST_CASE("a fiber already cancelled throws at once from every blocking wait and leaves no waiter behind") {
    skein::run(options(), [] {
      skein::Event gate;
      skein::Mutex m;
      skein::Mutex cv_mutex;
      skein::ConditionVariable cv;
      skein::Semaphore sem(0);
      skein::Event ev;
      skein::WaitGroup wg;
      wg.add();
      skein::Barrier b(2);
      skein::Promise<int> p;
      auto f = p.get_future();
      std::atomic<int> arrived{0};
      m.lock();
      auto victim = skein::spawn_on(far(1), [&] {
        ++arrived;
        std::vector<std::errc> errors;
        errors.push_back(error_of([&] { gate.wait(); }));  // cancelled here
        const auto start = skein::Clock::now();
        // The timed forms, so that a wait the cancel fails to end fails the test instead of hanging.
        errors.push_back(error_of([&] { (void)m.try_lock_for(10s); }));
        errors.push_back(error_of([&] { (void)sem.try_acquire_for(10s); }));
        errors.push_back(error_of([&] { (void)ev.wait_for(10s); }));
        errors.push_back(error_of([&] { (void)wg.wait_for(10s); }));
        errors.push_back(error_of([&] { (void)b.arrive_and_wait_until(10s); }));
        errors.push_back(error_of([&] { (void)f.wait_for(10s); }));
        errors.push_back(error_of([&] { skein::sleep_for(10s); }));
        std::unique_lock lock(cv_mutex);
        errors.push_back(error_of([&] { (void)cv.wait_until(lock, 10s); }));
        CHECK(lock.owns_lock());
        CHECK(since(start) < 2s);  // none of them waited
        return errors;
      });
      await_arrivals(arrived, 1);
      victim.cancel();
      const std::vector<std::errc> errors = victim.join();
      CHECK(errors == std::vector<std::errc>(9, std::errc::operation_canceled));
      // Nothing was left queued: each primitive behaves as if the victim never came.
      m.unlock();
      CHECK(m.try_lock());
      m.unlock();
      sem.release();
      CHECK(sem.available() == 1);
      CHECK_FALSE(b.arrive_and_wait_until(20ms).has_value());  // the victim's arrival was withdrawn
      CHECK(cv_mutex.try_lock());
      cv_mutex.unlock();
      ev.set();
      wg.done();
      p.set_value(1);
      CHECK(f.get() == 1);
    });
  }

  // ---- TimeoutScope -------------------------------------------------------------------------

  TEST_CASE("TimeoutScope bounds sleep_for, Event::wait, Mutex::lock and Task::join with timed_out") {
    skein::run(options(), [] {
      {
        const auto start = skein::Clock::now();
        skein::TimeoutScope scope(50ms);
        CHECK(error_of([] { skein::sleep_for(10s); }) == std::errc::timed_out);
        CHECK(since(start) >= 50ms);
        CHECK(since(start) < 2s);
        CHECK(scope.expired());
      }
      skein::Event ev;
      {
        const auto start = skein::Clock::now();
        skein::TimeoutScope scope(50ms);
        CHECK(error_of([&] { ev.wait(); }) == std::errc::timed_out);
        CHECK(since(start) >= 50ms);
        CHECK(since(start) < 2s);
        CHECK(scope.expired());
        // Every later wait inside the expired scope throws too, at once.
        const auto again = skein::Clock::now();
        CHECK(error_of([&] { ev.wait_for(10s); }) == std::errc::timed_out);
        CHECK(since(again) < 1s);
      }
      skein::Mutex m;
      skein::Event release;
      std::atomic<int> arrived{0};
      auto holder = skein::spawn_on(far(1), [&] {
        std::lock_guard lock(m);
        ++arrived;
        release.wait();
      });
      await_count(arrived, 1);
      {
        const auto start = skein::Clock::now();
        skein::TimeoutScope scope(50ms);
        CHECK(error_of([&] { m.lock(); }) == std::errc::timed_out);
        CHECK(since(start) >= 50ms);
        CHECK(since(start) < 2s);
      }
      release.set();
      holder.join();
      CHECK(m.try_lock());  // the timed-out waiter left the queue
      m.unlock();

      skein::Event finish;
      auto slow = skein::spawn_on(far(2), [&finish] {
        finish.wait();
        return 7;
      });
      {
        const auto start = skein::Clock::now();
        skein::TimeoutScope scope(50ms);
        CHECK(error_of([&] { slow.join(); }) == std::errc::timed_out);
        CHECK(since(start) >= 50ms);
        CHECK(since(start) < 2s);
        CHECK(slow.valid());
      }
      finish.set();
      CHECK(slow.join() == 7);
    });
  }

  TEST_CASE(
      "TimeoutScope bounds Semaphore, WaitGroup, Barrier and Future waits, and a Barrier arrival it ends is "
      "withdrawn") {
    skein::run(options(), [] {
      skein::Semaphore sem(0);
      skein::WaitGroup wg;
      wg.add();
      skein::Barrier b(2);
      skein::Promise<int> p;
      auto f = p.get_future();
      {
        skein::TimeoutScope scope(30ms);
        CHECK(error_of([&] { sem.acquire(); }) == std::errc::timed_out);
      }
      {
        skein::TimeoutScope scope(30ms);
        CHECK(error_of([&] { wg.wait(); }) == std::errc::timed_out);
      }
      {
        skein::TimeoutScope scope(30ms);
        CHECK(error_of([&] { b.arrive_and_wait(); }) == std::errc::timed_out);
      }
      {
        skein::TimeoutScope scope(30ms);
        CHECK(error_of([&] { f.get(); }) == std::errc::timed_out);
      }
      sem.release();
      CHECK(sem.available() == 1);
      CHECK_FALSE(b.arrive_and_wait_until(20ms).has_value());  // the scoped arrival did not count
      wg.done();
      CHECK(wg.wait_for(0ms));
      p.set_value(3);
      CHECK(f.get() == 3);
    });
  }

  TEST_CASE("a ConditionVariable wait ended by a TimeoutScope throws timed_out holding the mutex") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      bool main_inside = false;  // guarded by m
      std::atomic<int> arrived{0};
      struct Outcome {
        std::errc error;
        bool owns;
        bool saw_main_inside;
        skein::TimePoint returned;
        skein::Clock::duration took;
      };
      auto waiter = skein::spawn_on(far(1), [&] {
        std::unique_lock lock(m);
        ++arrived;
        const auto start = skein::Clock::now();
        std::errc e;
        {
          skein::TimeoutScope scope(60ms);
          e = error_of([&] { cv.wait(lock); });
        }
        const auto returned = skein::Clock::now();
        return Outcome{e, lock.owns_lock(), main_inside, returned, returned - start};
      });
      await_count(arrived, 1);
      skein::TimePoint locked_at, unlocked_at;
      {
        std::lock_guard lock(m);  // held across the scope's deadline: the re-lock waits for it
        locked_at = skein::Clock::now();
        main_inside = true;
        skein::sleep_for(100ms);
        main_inside = false;
        unlocked_at = skein::Clock::now();
      }
      const Outcome o = waiter.join();
      CHECK(o.error == std::errc::timed_out);
      CHECK(o.owns);
      CHECK_FALSE(o.saw_main_inside);
      CHECK((o.returned <= locked_at || o.returned >= unlocked_at));
      CHECK(o.took >= 60ms);
      CHECK(o.took < 2s);
      CHECK(m.try_lock());
      m.unlock();
    });
  }

  TEST_CASE("nested TimeoutScopes: the earlier deadline wins and an inner later one does not extend it") {
    skein::run(options(), [] {
      skein::Event ev;
      {
        const auto start = skein::Clock::now();
        skein::TimeoutScope outer(50ms);
        {
          skein::TimeoutScope inner(10s);
          CHECK(inner.deadline() == outer.deadline());
          CHECK(error_of([&] { ev.wait(); }) == std::errc::timed_out);
          CHECK(since(start) >= 50ms);
          CHECK(since(start) < 2s);
          CHECK(inner.expired());
        }
        CHECK(outer.expired());
        CHECK(error_of([&] { ev.wait(); }) == std::errc::timed_out);  // still expired out here
      }
      {
        skein::TimeoutScope outer(10s);
        {
          const auto start = skein::Clock::now();
          skein::TimeoutScope inner(50ms);
          CHECK(inner.deadline() < outer.deadline());
          CHECK(error_of([&] { ev.wait(); }) == std::errc::timed_out);
          CHECK(since(start) >= 50ms);
          CHECK(since(start) < 2s);
          CHECK(inner.expired());
          CHECK_FALSE(outer.expired());
        }
        // Back under the outer scope only: its deadline is far, so a wait's own deadline ends it.
        CHECK(skein::detail::scope_deadline() == outer.deadline());
        CHECK_FALSE(ev.wait_for(20ms));
        CHECK_FALSE(outer.expired());
      }
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
    });
  }

  TEST_CASE("leaving a TimeoutScope, even by its exception, makes later waits unbounded again") {
    skein::run(options(), [] {
      skein::Event ev;
      try {
        skein::TimeoutScope scope(20ms);
        ev.wait();
        FAIL("the scope did not end the wait");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::timed_out);
      }
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
      CHECK_NOTHROW(skein::sleep_for(40ms));  // longer than the old scope
      auto setter = skein::spawn_on(far(1), [&] {
        skein::sleep_for(60ms);
        ev.set();
      });
      CHECK(error_of([&] { ev.wait(); }) == std::errc{});
      setter.join();
    });
  }

  TEST_CASE(
      "expired() tells a scope's timeout from a wait's own, and a wait's own shorter deadline returns "
      "false") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      skein::Mutex cv_mutex;
      skein::Semaphore sem(0);
      skein::Event ev, release;
      skein::WaitGroup wg;
      wg.add();
      skein::Barrier b(2);
      skein::Promise<int> p;
      auto f = p.get_future();
      std::atomic<int> arrived{0};
      auto holder = skein::spawn_on(far(1), [&] {
        std::lock_guard lock(m);
        ++arrived;
        release.wait();
      });
      await_count(arrived, 1);
      skein::Event finish;
      auto slow = skein::spawn_on(far(2), [&finish] {
        finish.wait();
        return 1;
      });
      {
        skein::TimeoutScope scope(10s);
        // join_for's own deadline: timed_out, but not the scope's doing.
        CHECK(error_of([&] { slow.join_for(20ms); }) == std::errc::timed_out);
        CHECK_FALSE(scope.expired());
        // The *_until / *_for forms return false at their own deadline, inside a scope too.
        CHECK_FALSE(ev.wait_for(20ms));
        CHECK_FALSE(m.try_lock_for(20ms));
        CHECK_FALSE(sem.try_acquire_for(20ms));
        CHECK_FALSE(wg.wait_for(20ms));
        CHECK_FALSE(b.arrive_and_wait_until(20ms).has_value());
        CHECK_FALSE(f.wait_for(20ms));
        {
          std::unique_lock lock(cv_mutex);
          CHECK_FALSE(cv.wait_until(lock, 20ms));
          CHECK(lock.owns_lock());
        }
        CHECK_FALSE(scope.expired());
      }
      {
        skein::TimeoutScope scope(30ms);
        CHECK(error_of([&] { slow.join(); }) == std::errc::timed_out);
        CHECK(scope.expired());
        // A scope that expires before a wait's own deadline ends it with the error instead.
        CHECK(error_of([&] { ev.wait_for(10s); }) == std::errc::timed_out);
      }
      finish.set();
      CHECK(slow.join() == 1);
      release.set();
      holder.join();
      wg.done();
    });
  }

  TEST_CASE("a TimeoutScope on a plain thread bounds its waits too, and is restored when left") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::Mutex cv_mutex;
      skein::ConditionVariable cv;
      skein::Event ev, release, late, finish;
      std::atomic<int> arrived{0};
      auto holder = skein::spawn_on(far(1), [&] {
        std::lock_guard lock(m);
        ++arrived;
        release.wait();
      });
      await_count(arrived, 1);
      auto slow = skein::spawn_on(far(2), [&finish] {
        finish.wait();
        return 5;
      });
      skein::Clock::duration late_took{};
      PlainThread thread([&] {
        CHECK_FALSE(skein::in_fiber());
        {
          const auto start = skein::Clock::now();
          skein::TimeoutScope scope(50ms);
          CHECK(error_of([&] { ev.wait(); }) == std::errc::timed_out);
          CHECK(since(start) >= 50ms);
          CHECK(since(start) < 2s);
          CHECK(scope.expired());
          CHECK(error_of([] { skein::sleep_for(10s); }) == std::errc::timed_out);
          CHECK(since(start) < 2s);
        }
        CHECK(skein::detail::scope_deadline() == skein::no_deadline);
        {
          skein::TimeoutScope scope(10s);
          CHECK_FALSE(ev.wait_for(20ms));  // its own deadline: false
          CHECK_FALSE(scope.expired());
          {
            skein::TimeoutScope inner(30ms);
            CHECK(inner.deadline() < scope.deadline());
            CHECK(error_of([&] { m.lock(); }) == std::errc::timed_out);  // held by a fiber
          }
          CHECK(skein::detail::scope_deadline() == scope.deadline());
        }
        {
          skein::TimeoutScope scope(30ms);
          CHECK(error_of([&] { slow.join(); }) == std::errc::timed_out);
        }
        {
          std::unique_lock lock(cv_mutex);
          skein::TimeoutScope scope(30ms);
          CHECK(error_of([&] { cv.wait(lock); }) == std::errc::timed_out);
          CHECK(lock.owns_lock());
        }
        // Unbounded again: a wait longer than any of the scopes above ends normally.
        ++arrived;
        const auto start = skein::Clock::now();
        CHECK(error_of([&] { late.wait(); }) == std::errc{});
        late_took = since(start);
      });
      await_arrivals(arrived, 2);
      skein::sleep_for(100ms);
      late.set();
      thread.join();
      CHECK(late_took >= 100ms);
      finish.set();
      CHECK(slow.join() == 5);
      release.set();
      holder.join();
      CHECK(m.try_lock());
      m.unlock();
      CHECK(cv_mutex.try_lock());
      cv_mutex.unlock();
    });
  }

  // ---- ShieldGuard ---------------------------------------------------------------------------

  TEST_CASE("a cancel does not end a wait under a ShieldGuard; the first wait after the guard throws it") {
    skein::run(options(), [] {
      skein::Event entered, release;
      auto shielded = skein::spawn_on(far(1), [&] {
        std::errc inside{};
        bool seen_inside = false;
        {
          const skein::detail::ShieldGuard shield;
          entered.set();
          inside = error_of([&] { release.wait(); });
          seen_inside = skein::this_fiber::cancelled();
        }
        const std::errc after = error_of([] { skein::sleep_for(10s); });
        return std::tuple{inside, seen_inside, after};
      });
      entered.wait();
      skein::sleep_for(20ms);  // parked in release.wait() by now
      shielded.cancel();
      skein::sleep_for(50ms);
      CHECK_FALSE(shielded.done());  // the cancel did not end the shielded wait
      release.set();
      const auto [inside, seen_inside, after] = shielded.join();
      CHECK(inside == std::errc{});
      CHECK(seen_inside);
      CHECK(after == std::errc::operation_canceled);
    });
  }

  TEST_CASE("ShieldGuards nest, and a TimeoutScope does not end a shielded wait") {
    skein::run(options(), [] {
      const skein::detail::Fiber* self = skein::detail::current_fiber();
      skein::Event never;
      CHECK_FALSE(self->shielded);
      {
        const skein::detail::ShieldGuard outer;
        CHECK(self->shielded);
        CHECK_FALSE(outer.was_shielded());
        {
          const skein::detail::ShieldGuard inner;
          CHECK(inner.was_shielded());
        }
        CHECK(self->shielded);  // the inner guard restored the outer one's shield, not the original
        skein::TimeoutScope scope(20ms);
        const auto start = skein::Clock::now();
        CHECK(error_of([&] { CHECK_FALSE(never.wait_for(80ms)); }) == std::errc{});
        CHECK(since(start) >= 80ms);
      }
      CHECK_FALSE(self->shielded);
    });
  }

  TEST_CASE("a ShieldGuard on a plain thread touches no fiber and holds off the thread's TimeoutScope") {
    skein::run(options(), [] {
      skein::Event never;
      std::errc inside{}, after{};
      bool was_shielded = true;
      skein::Clock::duration took{};
      PlainThread thread([&] {
        skein::TimeoutScope scope(20ms);
        {
          const skein::detail::ShieldGuard shield;
          was_shielded = shield.was_shielded();
          const auto start = skein::Clock::now();
          inside = error_of([&] { (void)never.wait_for(80ms); });
          took = since(start);
        }
        after = error_of([&] { never.wait(); });  // the scope is back, and long expired
      });
      thread.join();
      CHECK_FALSE(was_shielded);
      CHECK(inside == std::errc{});
      CHECK(took >= 80ms);
      CHECK(after == std::errc::timed_out);
    });
  }

  // ---- stress -------------------------------------------------------------------------------

  TEST_CASE("stress: fibers on every worker hammer a Mutex-protected counter and a Semaphore with a cap") {
    constexpr int rounds = 300;
    constexpr std::size_t cap = 3;
    const std::size_t fibers = 8 * workers();
    long counter = 0;  // guarded by m
    std::atomic<int> in_lock{0}, in_sem{0}, max_in_sem{0};
    std::atomic<bool> overlap{false};
    std::size_t left = 0;
    skein::run(options(), [&] {
      skein::Mutex m;
      skein::Semaphore sem(cap);
      std::vector<skein::Task<void>> tasks;
      for (std::size_t i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn_on(far(i), [&, i] {
          for (int k = 0; k < rounds; ++k) {
            {
              std::lock_guard lock(m);
              if (in_lock.fetch_add(1) != 0) overlap = true;
              ++counter;
              if ((k + static_cast<int>(i)) % 8 == 0) skein::yield();
              in_lock.fetch_sub(1);
            }
            sem.acquire();
            const int now = ++in_sem;
            for (int seen = max_in_sem.load(); now > seen && !max_in_sem.compare_exchange_weak(seen, now);) {
            }
            if (k % 4 == 0) skein::yield();
            --in_sem;
            sem.release();
          }
        }));
      skein::join_all(tasks);
      left = sem.available();
      CHECK(m.try_lock());
      m.unlock();
    });
    CHECK_FALSE(overlap.load());
    CHECK(counter == static_cast<long>(fibers) * rounds);
    CHECK(max_in_sem.load() <= static_cast<int>(cap));
    CHECK(max_in_sem.load() >= 1);
    CHECK(left == cap);
    MESSAGE(fibers << " fibers; at most " << max_in_sem.load() << " of " << cap << " permits in use at once");
  }

  TEST_CASE(
      "stress: timed lock and acquire attempts racing releases never lose a hand-off nor give one to a "
      "waiter that left") {
    // Many short deadlines land just as the holder releases, on another worker or thread: each
    // hand-off must go to exactly one waiter still waiting. A hand-off to a waiter that already
    // gave up would leave the lock held (or a permit gone) for good, which the end checks see.
    constexpr int rounds = 150;
    constexpr std::size_t cap = 2;
    const std::size_t fibers = 4 * workers();
    std::atomic<long> locked{0}, lock_timeouts{0}, acquired{0}, acquire_timeouts{0};
    std::atomic<int> in_lock{0}, in_sem{0};
    std::atomic<bool> overlap{false}, over_cap{false};
    long counter = 0;  // guarded by m
    bool free_at_end = false;
    std::size_t left = 0;
    skein::run(options(), [&] {
      skein::Mutex m;
      skein::Semaphore sem(cap);
      auto body = [&](unsigned seed) {
        std::minstd_rand rng(seed);
        for (int k = 0; k < rounds; ++k) {
          if (m.try_lock_for(std::chrono::microseconds(rng() % 200))) {
            if (in_lock.fetch_add(1) != 0) overlap = true;
            ++counter;
            if (rng() % 2) skein::yield();
            in_lock.fetch_sub(1);
            m.unlock();
            ++locked;
          } else {
            ++lock_timeouts;
          }
          if (sem.try_acquire_for(std::chrono::microseconds(rng() % 200))) {
            if (++in_sem > static_cast<int>(cap)) over_cap = true;
            if (rng() % 2) skein::yield();
            --in_sem;
            sem.release();
            ++acquired;
          } else {
            ++acquire_timeouts;
          }
        }
      };
      std::vector<skein::Task<void>> tasks;
      for (std::size_t i = 0; i < fibers; ++i)
        tasks.push_back(skein::spawn_on(far(i), [&body, i] { body(static_cast<unsigned>(i) + 1); }));
      std::list<PlainThread> threads;
      for (unsigned t = 0; t < 2; ++t) threads.emplace_back([&body, t] { body(1000 + t); });
      skein::join_all(tasks);
      for (auto& t : threads) t.join();
      free_at_end = m.try_lock();
      if (free_at_end) m.unlock();
      left = sem.available();
    });
    const long attempts = static_cast<long>(fibers + 2) * rounds;
    CHECK_FALSE(overlap.load());
    CHECK_FALSE(over_cap.load());
    CHECK(locked + lock_timeouts == attempts);
    CHECK(acquired + acquire_timeouts == attempts);
    CHECK(counter == locked);
    CHECK(free_at_end);
    CHECK(left == cap);
    MESSAGE(locked.load() << " locks, " << lock_timeouts.load() << " lock timeouts; " << acquired.load()
                          << " permits, " << acquire_timeouts.load() << " acquire timeouts");
  }

  // ---- regressions: bugs found while writing this suite ----------------------------------------

  TEST_CASE(
      "a ConditionVariable wait on a unique_lock that does not own its mutex throws and leaves the "
      "condition variable usable") {
    // ConditionVariable::wait_until used to queue the caller's WaitNode (on its stack) before
    // lock.unlock() threw operation_not_permitted for a lock not holding its mutex, leaving a dead
    // node linked for the next notify. Run in a child, so a regression shows as a crash.
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Die of the fault plainly, without doctest's crash report from the child.
      std::signal(SIGSEGV, SIG_DFL);
      std::signal(SIGBUS, SIG_DFL);
      int code = 5;
      try {
        code = skein::run([] {
          skein::Mutex m;
          skein::ConditionVariable cv;
          std::errc e{};
          {
            std::unique_lock lock(m, std::defer_lock);
            e = error_of([&] { cv.wait(lock); });
          }
          // Reuse the stack the failed wait ran on, as any later call would.
          [] {
            volatile unsigned char junk[16384];
            for (auto& b : junk) b = 0;
          }();
          cv.notify_all();  // must find nobody to wake
          return e == std::errc::operation_not_permitted ? 0 : 3;
        });
      } catch (...) {
        code = 4;
      }
      _exit(code);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    if (WIFSIGNALED(status)) MESSAGE("the child died of signal " << WTERMSIG(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  TEST_CASE("WaitGroup::add of the most negative count throws invalid_argument without overflowing") {
    // WaitGroup::add used to negate n before its range check: -PTRDIFF_MIN overflows (UBSan).
    skein::WaitGroup wg;
    wg.add(3);
    CHECK(error_of([&] { wg.add(std::numeric_limits<std::ptrdiff_t>::min()); }) ==
          std::errc::invalid_argument);
    CHECK(wg.count() == 3);
  }

  TEST_CASE(
      "locking a Mutex again from the fiber or thread that holds it throws resource_deadlock_would_occur") {
    constexpr auto deadlock = std::errc::resource_deadlock_would_occur;
    skein::run(options(), [&] {
      skein::Mutex m;
      std::lock_guard held(m);
      skein::TimeoutScope bound(2s);  // a hang would end here, as timed_out
      CHECK(error_of([&] { m.lock(); }) == deadlock);
      CHECK(error_of([&] { (void)m.try_lock_for(100ms); }) == deadlock);
      CHECK_FALSE(m.try_lock());
    });
    skein::Mutex m;
    std::lock_guard held(m);
    skein::TimeoutScope bound(2s);
    CHECK(error_of([&] { m.lock(); }) == deadlock);
  }

  TEST_CASE("a Mutex handed to a waiter is not taken for recursion when its old owner locks it again") {
    skein::run(options(), [&] {
      skein::Mutex m;
      std::atomic<int> queued{0};
      m.lock();
      auto waiter = skein::spawn_on(far(1), [&] {
        ++queued;
        REQUIRE(m.try_lock_for(5s));  // handed the lock by the unlock below
        skein::sleep_for(20ms);
        m.unlock();
      });
      while (queued.load() == 0) skein::sleep_for(1ms);
      skein::sleep_for(20ms);
      m.unlock();
      CHECK(m.try_lock_for(5s));  // waits for the waiter, never "recursive"
      m.unlock();
      waiter.join();
    });
  }

  TEST_CASE("unlocking a Mutex that is not locked aborts with a message") {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::signal(SIGABRT, SIG_DFL);
      std::freopen("/dev/null", "w", stderr);
      skein::Mutex m;
      m.unlock();
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT));
  }

  TEST_CASE("ConditionVariable::wait_for and Barrier::arrive_and_wait_for time out like every other wait") {
    skein::run(options(), [] {
      skein::Mutex m;
      skein::ConditionVariable cv;
      std::unique_lock lock(m);
      auto start = skein::Clock::now();
      CHECK_FALSE(cv.wait_for(lock, 50ms));
      CHECK(lock.owns_lock());
      CHECK(skein::Clock::now() - start >= 50ms);
      lock.unlock();
      skein::Barrier b(2);
      start = skein::Clock::now();
      CHECK(b.arrive_and_wait_for(50ms) == std::nullopt);  // the arrival is withdrawn
      CHECK(skein::Clock::now() - start >= 50ms);
      auto other = skein::spawn_on(far(1), [&b] { return b.arrive_and_wait_for(5s); });
      const std::optional<bool> mine = b.arrive_and_wait_for(5s);
      const std::optional<bool> theirs = other.join();
      REQUIRE(mine.has_value());
      REQUIRE(theirs.has_value());
      CHECK(*mine != *theirs);  // exactly one is the last to arrive
      // Notified within the time: true.
      std::atomic<bool> ready{false};
      auto notifier = skein::spawn_on(far(1), [&] {
        skein::sleep_for(10ms);
        std::lock_guard g(m);
        ready = true;
        cv.notify_all();
      });
      lock.lock();
      CHECK(cv.wait_for(lock, 5s, [&] { return ready.load(); }));
      lock.unlock();
      notifier.join();
    });
  }
}
