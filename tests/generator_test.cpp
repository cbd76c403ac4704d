// Generators and two-way coroutines: values out and in, delegation through plain functions,
// early destruction unwinding the body, exceptions, and waiting inside a body.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Witness {
  int* count;
  ~Witness() { ++*count; }
};

skein::Generator<int> range(int n) {
  return skein::Generator<int>([n](skein::Yield<int>& yield) {
    for (int i = 0; i < n; ++i) yield(i);
  });
}

// A plain function that yields: the stackful answer to `yield from`.
void yield_twice(skein::Yield<std::string>& yield, const std::string& what) {
  yield(what + "1");
  yield(what + "2");
}

}  // namespace

TEST_SUITE("generator") {
  TEST_CASE("range-for yields every value once, in order") {
    std::vector<int> seen;
    for (int v : range(5)) seen.push_back(v);
    CHECK(seen == std::vector<int>{0, 1, 2, 3, 4});
  }

  TEST_CASE("an empty body yields nothing") {
    int n = 0;
    for (int v : range(0)) n += v + 1;
    CHECK(n == 0);
    auto g = range(0);
    CHECK(!g.next());
    CHECK(g.done());
  }

  TEST_CASE("next returns each value, then nullopt") {
    auto g = range(2);
    CHECK(g.next() == 0);
    CHECK(g.next() == 1);
    CHECK(g.next() == std::nullopt);
    CHECK(g.done());
    CHECK(g.next() == std::nullopt);
  }

  TEST_CASE("functions called by the body can yield (yield from)") {
    skein::Generator<std::string> g([](skein::Yield<std::string>& yield) {
      yield("start");
      yield_twice(yield, "a");
      yield_twice(yield, "b");
    });
    std::vector<std::string> seen;
    for (const std::string& s : g) seen.push_back(s);
    CHECK(seen == std::vector<std::string>{"start", "a1", "a2", "b1", "b2"});
  }

  TEST_CASE("a generator abandoned early unwinds its body: every destructor runs") {
    int unwound = 0;
    int produced = 0;
    {
      skein::Generator<int> g([&](skein::Yield<int>& yield) {
        Witness outer{&unwound};
        for (int i = 0;; ++i) {
          Witness inner{&unwound};
          ++produced;
          yield(i);
        }
      });
      for (int v : g)
        if (v == 3) break;
    }
    CHECK(produced == 4);
    CHECK(unwound == 3 + 2);  // three finished iterations + the suspended one's inner + outer
  }

  TEST_CASE("a generator that never started is destroyed without running its body") {
    bool ran = false;
    {
      skein::Generator<int> g([&ran](skein::Yield<int>&) { ran = true; });
    }
    CHECK(!ran);
  }

  TEST_CASE("the body's exception surfaces at the resume that ran it") {
    skein::Generator<int> g([](skein::Yield<int>& yield) {
      yield(1);
      throw std::runtime_error("boom");
    });
    CHECK(g.next() == 1);
    CHECK_THROWS_AS(g.next(), std::runtime_error);
    CHECK(g.done());
  }

  TEST_CASE("a body suspended inside a catch block and its consumer each keep their own caught exception") {
    skein::Generator<std::string> g([](skein::Yield<std::string>& yield) {
      try {
        throw std::runtime_error("body");
      } catch (const std::runtime_error&) {
        yield("in catch");  // the consumer throws and catches meanwhile
        try {
          throw;
        } catch (const std::runtime_error& again) {
          yield(again.what());
        }
      }
      yield(std::current_exception() ? "still caught" : "none caught");
    });
    try {
      throw std::logic_error("consumer");
    } catch (const std::logic_error&) {
      CHECK(g.next() == "in catch");
      try {
        throw;
      } catch (const std::logic_error& mine) {
        CHECK(std::string(mine.what()) == "consumer");
      }
      CHECK(g.next() == "body");
    }
    CHECK(!std::current_exception());
    CHECK(g.next() == "none caught");
    CHECK(std::uncaught_exceptions() == 0);
  }

  TEST_CASE("generators move, and a moved-from generator is done") {
    auto a = range(3);
    CHECK(a.next() == 0);
    auto b = std::move(a);
    CHECK(a.done());
    CHECK(b.next() == 1);
  }

  TEST_CASE("a generator cannot resume itself") {
    skein::Generator<int>* self = nullptr;
    skein::Generator<int> g([&self](skein::Yield<int>&) {
      try {
        self->next();
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::resource_deadlock_would_occur);
        throw;
      }
    });
    self = &g;
    CHECK_THROWS_AS(g.next(), std::system_error);
  }

  TEST_CASE("a generator body may sleep inside a fiber; other fibers run meanwhile") {
    skein::run([] {
      int ticks = 0;
      auto ticker = skein::spawn([&ticks] {
        for (int i = 0; i < 5; ++i) {
          skein::sleep_for(2ms);
          ++ticks;
        }
      });
      skein::Generator<int> slow([](skein::Yield<int>& yield) {
        for (int i = 0; i < 3; ++i) {
          skein::sleep_for(10ms);
          yield(i);
        }
      });
      int sum = 0;
      for (int v : slow) sum += v;
      CHECK(sum == 3);
      CHECK(ticks >= 1);  // the ticker ran while the generator body slept
      ticker.join();
    });
  }

  TEST_CASE("cancelling a fiber parked inside a generator body surfaces in the consumer") {
    int unwound = 0;
    skein::run([&unwound] {
      auto t = skein::spawn([&unwound] {
        skein::Generator<int> g([&unwound](skein::Yield<int>& yield) {
          Witness w{&unwound};
          skein::sleep_for(10s);
          yield(1);
        });
        return g.next();
      });
      skein::yield();
      t.cancel();
      try {
        t.join();
        FAIL("no exception");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::operation_canceled);
      }
    });
    CHECK(unwound == 1);
  }

  TEST_CASE("a timeout scope opened in a generator body does not bound the consumer's waits") {
    skein::run([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) {
        skein::TimeoutScope scope(20ms);
        yield(1);  // suspended inside the scope
        yield(2);
      });
      CHECK(g.next() == 1);
      const auto start = skein::Clock::now();
      CHECK_NOTHROW(skein::sleep_for(50ms));  // the consumer's own wait: no scope of its
      CHECK(skein::Clock::now() - start >= 50ms);
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
    });
  }

  TEST_CASE("a generator body's scope keeps bounding the body across its suspensions") {
    skein::run([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) {
        skein::TimeoutScope scope(20ms);
        yield(1);
        skein::sleep_for(10s);  // 20 ms after the scope opened, not 10 s
        yield(2);
      });
      CHECK(g.next() == 1);
      const auto start = skein::Clock::now();
      try {
        g.next();
        FAIL("no timeout");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::timed_out);
      }
      CHECK(skein::Clock::now() - start < 5s);
    });
  }

  TEST_CASE("a generator ending its scope does not restore a scope the consumer has left") {
    skein::run([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) {
        {
          skein::TimeoutScope scope(10s);
          yield(1);
        }
        yield(2);
      });
      {
        skein::TimeoutScope consumer(30ms);
        CHECK(g.next() == 1);
      }
      CHECK(g.next() == 2);  // the body leaves its scope here
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
      CHECK_NOTHROW(skein::sleep_for(60ms));  // the consumer's old 30 ms scope is gone for good
    });
  }

  TEST_CASE("the consumer's timeout scope bounds the waits of the body it resumes") {
    skein::run([] {
      skein::Generator<int> g([](skein::Yield<int>& yield) {
        skein::sleep_for(10s);
        yield(1);
      });
      skein::TimeoutScope consumer(20ms);
      const auto start = skein::Clock::now();
      try {
        g.next();
        FAIL("no timeout");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::timed_out);
      }
      CHECK(skein::Clock::now() - start < 5s);
    });
  }

  TEST_CASE("a generator's scope stays its own on a plain thread too") {
    skein::Generator<int> g([](skein::Yield<int>& yield) {
      skein::TimeoutScope scope(10ms);
      yield(1);
      yield(2);
    });
    CHECK(g.next() == 1);
    CHECK(skein::detail::scope_deadline() == skein::no_deadline);
    CHECK_NOTHROW(skein::sleep_for(30ms));
    CHECK(g.next() == 2);
  }
}

TEST_SUITE("coroutine") {
  TEST_CASE("values flow both ways and the body returns a result (the seeds' my_coro)") {
    skein::Coroutine<int, std::string, int> co([](skein::CoYield<int, std::string>& yield, int) {
      const int x = yield("foo");
      const int y = yield("bar");
      return x + y;
    });
    CHECK(co.resume(0) == "foo");
    CHECK(co.resume(1) == "bar");
    CHECK(co.resume(2) == std::nullopt);
    CHECK(co.done());
    CHECK(co.result() == 3);
  }

  TEST_CASE("the first resume's value is the body's argument") {
    std::vector<int> received;
    skein::Coroutine<int, std::string> consumer([&received](skein::CoYield<int, std::string>& yield, int n) {
      for (;;) {
        received.push_back(n);
        n = yield("200 OK");
      }
    });
    for (int i = 1; i <= 5; ++i) CHECK(consumer.resume(i) == "200 OK");
    CHECK(received == std::vector<int>{1, 2, 3, 4, 5});
  }

  TEST_CASE("close unwinds a suspended body; result is refused") {
    int unwound = 0;
    skein::Coroutine<int, int, int> co([&unwound](skein::CoYield<int, int>& yield, int n) {
      Witness w{&unwound};
      for (;;) n = yield(n * 2);
      return n;
    });
    CHECK(co.resume(4) == 8);
    co.close();
    CHECK(unwound == 1);
    CHECK(co.done());
    CHECK_THROWS_AS(co.result(), std::system_error);
  }

  TEST_CASE("close before the first resume discards the body without running it") {
    bool ran = false;
    skein::Coroutine<int, int> co([&ran](skein::CoYield<int, int>&, int) { ran = true; });
    co.close();
    CHECK(co.done());
    CHECK_THROWS_AS(co.resume(1), std::system_error);
    CHECK(!ran);
  }

  TEST_CASE("close after the body returned keeps the result") {
    skein::Coroutine<int, int, int> co([](skein::CoYield<int, int>&, int n) { return n + 1; });
    CHECK(co.resume(1) == std::nullopt);
    co.close();
    CHECK(co.result() == 2);
  }

  TEST_CASE("resuming a finished coroutine is refused; result before the end is refused") {
    skein::Coroutine<int, int> co([](skein::CoYield<int, int>& yield, int n) { yield(n); });
    CHECK_THROWS_AS(co.result(), std::system_error);
    CHECK(co.resume(1) == 1);
    CHECK(co.resume(2) == std::nullopt);
    try {
      co.resume(3);
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
    }
  }

  TEST_CASE("the body's exception surfaces at resume") {
    skein::Coroutine<int, int> co([](skein::CoYield<int, int>& yield, int n) {
      n = yield(n);
      if (n < 0) throw std::invalid_argument("negative");
    });
    CHECK(co.resume(1) == 1);
    CHECK_THROWS_AS(co.resume(-1), std::invalid_argument);
    CHECK(co.done());
  }

  TEST_CASE("a catch (const std::exception&) in the body does not swallow the forced unwind") {
    int unwound = 0;
    {
      skein::Coroutine<int, int> co([&unwound](skein::CoYield<int, int>& yield, int n) {
        Witness w{&unwound};
        try {
          for (;;) n = yield(n);
        } catch (const std::exception&) {
          FAIL("forced unwind caught as std::exception");
        }
      });
      co.resume(1);
    }
    CHECK(unwound == 1);
  }

  TEST_CASE("a timeout scope opened in a coroutine body does not bound the resumer's waits") {
    skein::run([] {
      skein::Coroutine<int, int> co([](skein::CoYield<int, int>& yield, int n) {
        skein::TimeoutScope scope(20ms);
        for (;;) n = yield(n);
      });
      CHECK(co.resume(1) == 1);
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
      CHECK_NOTHROW(skein::sleep_for(50ms));
      {
        skein::TimeoutScope resumer(30ms);
        CHECK(co.resume(2) == 2);
      }
      co.close();  // unwinds the body, which leaves its scope
      CHECK(skein::detail::scope_deadline() == skein::no_deadline);
      CHECK_NOTHROW(skein::sleep_for(50ms));
    });
  }
}
