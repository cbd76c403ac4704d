// Mutex, ConditionVariable, Event, Semaphore, WaitGroup, Barrier, Promise/Future.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

TEST_SUITE("sync") {
  TEST_CASE("a Mutex taken and released on one fiber") {
    skein::run([] {
      skein::Mutex m;
      CHECK(m.try_lock());
      CHECK_FALSE(m.try_lock());
      m.unlock();
    });
  }
}
