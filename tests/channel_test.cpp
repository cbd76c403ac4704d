// Channel, select, TaskGroup and Pool.
#include <skein/skein.hpp>

#include <doctest/doctest.h>

TEST_SUITE("channel") {
  TEST_CASE("a buffered channel hands values over in order") {
    skein::run([] {
      skein::Channel<int> ch(2);
      ch.send(1);
      ch.send(2);
      CHECK(*ch.recv() == 1);
      CHECK(*ch.recv() == 2);
    });
  }
}
