// Tasks: spawn, join, exceptions, cancellation, detach, gather, join_all, with_timeout.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include "worker_options.hpp"

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

using namespace std::chrono_literals;

namespace {

bool is(const std::system_error& e, std::errc c) {
  return e.code() == c;
}

// Counts destructions, to prove a fiber's stack was unwound.
struct Witness {
  int* count;
  ~Witness() { ++*count; }
};

using skein_test::error_of;

}  // namespace

TEST_SUITE("task") {
  TEST_CASE("join returns the value; done reports completion") {
    skein::run([] {
      auto t = skein::spawn([] { return std::string("value"); });
      CHECK(t.valid());
      CHECK(!t.done());
      t.wait();
      CHECK(t.done());
      CHECK(t.join() == "value");
      CHECK(!t.valid());
    });
  }

  TEST_CASE("join rethrows the body's exception unchanged") {
    skein::run([] {
      auto t = skein::spawn([]() -> int { throw std::out_of_range("range"); });
      CHECK_THROWS_AS(t.join(), std::out_of_range);
    });
  }

  TEST_CASE("move-only results and closures") {
    skein::run([] {
      auto p = std::make_unique<int>(5);
      auto t = skein::spawn([p = std::move(p)]() mutable { return std::move(p); });
      CHECK(*t.join() == 5);
    });
  }

  TEST_CASE("the closure is destroyed when the body ends, not when the handle goes") {
    int destroyed = 0;
    skein::run([&destroyed] {
      auto t =
          skein::spawn([w = std::shared_ptr<int>(nullptr, [&destroyed](int*) { ++destroyed; })] { (void)w; });
      t.wait();
      CHECK(destroyed == 1);
      t.join();
    });
  }

  TEST_CASE("join_for times out and leaves the task running and joinable") {
    skein::run([] {
      auto t = skein::spawn([] {
        skein::sleep_for(50ms);
        return 3;
      });
      CHECK(error_of([&] { t.join_for(5ms); }) == std::errc::timed_out);
      CHECK(t.valid());
      CHECK(!t.wait_for(1ms));
      CHECK(t.join() == 3);
    });
  }

  TEST_CASE("cancel wakes a sleeping fiber with operation_canceled and unwinds its stack") {
    int unwound = 0;
    skein::run([&unwound] {
      auto t = skein::spawn([&unwound] {
        Witness w{&unwound};
        skein::sleep_for(10s);
      });
      skein::yield();  // let it start and park
      const auto start = skein::Clock::now();
      t.cancel();
      CHECK(error_of([&] { t.join(); }) == std::errc::operation_canceled);
      CHECK(skein::Clock::now() - start < 1s);
    });
    CHECK(unwound == 1);
  }

  TEST_CASE("a task cancelled before it starts never runs its body") {
    bool ran = false;
    skein::run([&ran] {
      auto t = skein::spawn([&ran] { ran = true; });
      t.cancel();
      CHECK(error_of([&] { t.join(); }) == std::errc::operation_canceled);
    });
    CHECK(!ran);
  }

  TEST_CASE("cancellation is sticky: every later wait throws at once") {
    skein::run([] {
      auto t = skein::spawn([] {
        int interrupted = 0;
        for (int i = 0; i < 3; ++i) {
          try {
            skein::sleep_for(10s);
          } catch (const std::system_error& e) {
            interrupted += is(e, std::errc::operation_canceled);
          }
        }
        CHECK(skein::this_fiber::cancelled());
        CHECK(error_of([] { skein::yield(); }) == std::errc::operation_canceled);
        return interrupted;
      });
      skein::yield();
      t.cancel();
      t.cancel();  // idempotent
      CHECK(t.join() == 3);
    });
  }

  TEST_CASE("cancelling a finished task changes nothing") {
    skein::run([] {
      auto t = skein::spawn([] { return 1; });
      t.wait();
      t.cancel();
      CHECK(t.join() == 1);
    });
  }

  TEST_CASE("a cancelled waiter leaves the task it waited for untouched") {
    skein::run([] {
      auto slow = std::make_shared<skein::Task<int>>(skein::spawn([] {
        skein::sleep_for(30ms);
        return 9;
      }));
      auto waiter = skein::spawn([slow] { slow->wait(); });
      skein::yield();
      waiter.cancel();
      CHECK(error_of([&] { waiter.join(); }) == std::errc::operation_canceled);
      CHECK(slow->join() == 9);
    });
  }

  TEST_CASE("several fibers can wait for one task") {
    skein::run([] {
      auto t = skein::spawn([] { skein::sleep_for(10ms); });
      int woke = 0;
      auto a = skein::spawn([&] {
        t.wait();
        ++woke;
      });
      auto b = skein::spawn([&] {
        t.wait();
        ++woke;
      });
      a.join();
      b.join();
      CHECK(woke == 2);
      t.join();
    });
  }

  TEST_CASE("two fibers joining one task: the first gets the value, the second invalid_argument") {
    skein::run([] {
      auto t = skein::spawn([] {
        skein::sleep_for(10ms);
        return std::make_unique<int>(7);
      });
      int got = 0;
      std::errc second{};
      auto a = skein::spawn([&] { got = *t.join(); });
      auto b = skein::spawn([&] { second = error_of([&] { t.join(); }); });
      a.join();
      b.join();
      CHECK(got == 7);
      CHECK(second == std::errc::invalid_argument);
      CHECK(!t.valid());
    });
  }

  TEST_CASE("three joiners and a waiter on one task: exactly one join gets the value") {
    skein::run([] {
      auto t = skein::spawn([] {
        skein::sleep_for(10ms);
        return 5;
      });
      int values = 0, refused = 0, waited = 0;
      std::vector<skein::Task<void>> joiners;
      for (int i = 0; i < 3; ++i)
        joiners.push_back(skein::spawn([&] {
          const std::errc e = error_of([&] { values += t.join(); });
          refused += e == std::errc::invalid_argument;
        }));
      auto waiter = skein::spawn([&] {
        t.wait();
        ++waited;
      });
      for (auto& j : joiners) j.join();
      waiter.join();
      CHECK(values == 5);
      CHECK(refused == 2);
      CHECK(waited == 1);
      // A join after the result is gone is refused the same way, at once.
      CHECK(error_of([&] { t.join(); }) == std::errc::invalid_argument);
    });
  }

  TEST_CASE("a task whose result was taken by another join: a timed join and a wait are refused too") {
    skein::run([] {
      auto t = skein::spawn([] { skein::sleep_for(5ms); });
      std::errc timed{}, waited{};
      auto a = skein::spawn([&] { timed = error_of([&] { t.join_for(10s); }); });
      auto b = skein::spawn([&] { waited = error_of([&] { t.wait_for(10s); }); });
      t.join();
      a.join();
      b.join();
      CHECK(timed == std::errc::invalid_argument);
      // wait_for only waits: it returned (true) because the body finished, or found the handle empty.
      CHECK((waited == std::errc{} || waited == std::errc::invalid_argument));
    });
  }

  TEST_CASE("Task and with_timeout take a Deadline: a time point or a duration") {
    skein::run([] {
      auto t = skein::spawn([] {
        skein::sleep_for(20ms);
        return 1;
      });
      CHECK_FALSE(t.wait_until(skein::Clock::now() + 1ms));
      CHECK_FALSE(t.wait_until(1ms));
      CHECK(t.wait_until(skein::Deadline(10s)));
      CHECK(t.join_until(skein::Clock::now() + 10s) == 1);
      CHECK(skein::with_timeout(skein::Clock::now() + 10s, [] { return 2; }) == 2);
      CHECK(skein::with_timeout(skein::Deadline(10s), [] { return 3; }) == 3);
      CHECK(skein::with_timeout(10s, [] { return 4; }) == 4);
      CHECK(error_of([] { skein::with_timeout(skein::Clock::now() + 5ms, [] { skein::sleep_for(10s); }); }) ==
            std::errc::timed_out);
    });
  }

  TEST_CASE("misuse is reported: empty handles, joining oneself") {
    skein::run([] {
      skein::Task<int> empty;
      CHECK(error_of([&] { empty.join(); }) == std::errc::invalid_argument);
      auto self = std::make_shared<skein::Task<void>>();
      *self = skein::spawn(
          [self] { CHECK(error_of([&] { self->wait(); }) == std::errc::resource_deadlock_would_occur); });
      self->join();
    });
  }

  TEST_CASE("a detached task runs on, and its exception is reported, not lost") {
    int done = 0;
    skein::run([&done] {
      skein::spawn([&done] {
        skein::sleep_for(5ms);
        ++done;
        throw std::runtime_error("detached failure (expected in this test)");
      }).detach();
    });
    CHECK(done == 1);
  }

  TEST_CASE("a stack size can be chosen per fiber; an oversized closure is refused") {
    skein::run([] {
      auto big = skein::spawn(skein::FiberOptions{"big", 1 << 20}, [] {
        volatile char buf[512 * 1024];
        buf[0] = 1;
        buf[sizeof buf - 1] = 2;
        return buf[0] + buf[sizeof buf - 1];
      });
      CHECK(big.join() == 3);
      struct Big {
        char bytes[20 * 1024];
      };
      auto big_closure = [b = Big{}] { (void)b; };
      CHECK(error_of([&] {
              skein::spawn(skein::FiberOptions{"small", skein::min_stack_size}, big_closure);
            }) == std::errc::invalid_argument);
    });
  }

  TEST_CASE("gather returns every value, in argument order") {
    skein::run([] {
      auto a = skein::spawn([] {
        skein::sleep_for(20ms);
        return 1;
      });
      auto b = skein::spawn([] { return std::string("two"); });
      auto c = skein::spawn([] {});
      auto [x, y, z] = skein::gather(a, b, c);
      CHECK(x == 1);
      CHECK(y == "two");
      static_assert(std::is_same_v<std::remove_cvref_t<decltype(z)>, std::monostate>);
      auto [p, q] = skein::gather(skein::spawn([] { return 5; }), skein::spawn([] { return 6; }));
      CHECK(p + q == 11);
    });
  }

  TEST_CASE("gather waits for all, then rethrows the first failure in argument order") {
    skein::run([] {
      bool slow_finished = false;
      auto slow = skein::spawn([&] {
        skein::sleep_for(20ms);
        slow_finished = true;
        return 0;
      });
      auto bad1 = skein::spawn([]() -> int { throw std::invalid_argument("first"); });
      auto bad2 = skein::spawn([]() -> int { throw std::runtime_error("second"); });
      CHECK_THROWS_AS(skein::gather(slow, bad1, bad2), std::invalid_argument);
      CHECK(slow_finished);
      CHECK(!bad2.valid());
    });
  }

  TEST_CASE("join_all collects a range of tasks in order") {
    skein::run([] {
      std::vector<skein::Task<int>> tasks;
      for (int i = 0; i < 10; ++i)
        tasks.push_back(skein::spawn([i] {
          skein::sleep_for(std::chrono::milliseconds(10 - i));
          return i * i;
        }));
      const std::vector<int> squares = skein::join_all(tasks);
      REQUIRE(squares.size() == 10);
      for (int i = 0; i < 10; ++i) CHECK(squares[static_cast<std::size_t>(i)] == i * i);
    });
  }

  TEST_CASE("with_timeout returns the value of a body that finishes in time") {
    CHECK(skein::run([] { return skein::with_timeout(1s, [] { return 8; }); }) == 8);
  }

  TEST_CASE("with_timeout cancels a slow body, waits for it to unwind, then throws timed_out") {
    int unwound = 0;
    skein::run([&unwound] {
      const auto start = skein::Clock::now();
      CHECK(error_of([&] {
              skein::with_timeout(20ms, [&unwound] {
                Witness w{&unwound};
                skein::sleep_for(10s);
              });
            }) == std::errc::timed_out);
      CHECK(unwound == 1);
      CHECK(skein::Clock::now() - start < 2s);
    });
  }

  TEST_CASE("with_timeout passes the body's own exception through") {
    skein::run([] {
      CHECK_THROWS_AS(skein::with_timeout(1s, []() -> int { throw std::domain_error("own"); }),
                      std::domain_error);
    });
  }

  TEST_CASE("a task may outlive run(): its result is still there") {
    skein::Task<int> kept = skein::run([] { return skein::spawn([] { return 4; }); });
    CHECK(kept.done());
    CHECK(kept.join() == 4);
  }
}

TEST_SUITE("task") {
  TEST_CASE("with_timeout whose caller is cancelled reaps its child before returning") {
    // The child's body references the caller's locals; it must be gone before they are.
    std::vector<int> log;
    int unwound = 0;
    skein::run([&] {
      auto caller = skein::spawn([&] {
        std::vector<int> local{1, 2, 3};
        skein::with_timeout(10s, [&] {
          Witness w{&unwound};
          try {
            skein::sleep_for(10s);
          } catch (const std::system_error&) {
            log.push_back(local.back());  // the caller's frame must still be alive here
            throw;
          }
        });
      });
      skein::yield();  // caller parks in with_timeout, child parks in sleep
      caller.cancel();
      CHECK(error_of([&] { caller.join(); }) == std::errc::operation_canceled);
      CHECK(unwound == 1);
    });
    CHECK(log == std::vector<int>{3});
  }

  TEST_CASE("a wait that starts after a cancel leaves its wait list, as one cancelled while parked does") {
    skein::run([] {
      skein::detail::WaitList waiters;
      auto v = skein::spawn([&waiters] {
        try {
          skein::sleep_for(10s);
        } catch (const std::system_error&) {
        }
        // Now cancelled: a new wait ends at once and must unlink itself.
        skein::detail::WaitNode node{skein::detail::current_fiber()};
        waiters.push_back(&node);
        const auto w = skein::detail::park(skein::no_deadline, &skein::detail::unlink_wait_node, &node);
        CHECK(w == skein::detail::Wake::cancelled);
        CHECK(!node.linked);
      });
      skein::yield();
      v.cancel();
      v.join();
      CHECK(waiters.empty());
    });
  }

  TEST_CASE("cancel on a task kept past run() is harmless") {
    skein::Task<int> kept = skein::run([] { return skein::spawn([] { return 1; }); });
    kept.cancel();
    CHECK(kept.join() == 1);
  }
}
