// libmemcached (Debian's, unmodified) from fibers against a real memcached this program starts on a
// free loopback port and stops by its pid: a get that a cancel, with_timeout or TimeoutScope
// interrupts reports an error, not a cache miss, and no later get on that client returns a reply
// meant for another. Exits 77 (a skip, for meson) only when memcached is not installed.
#define DOCTEST_CONFIG_IMPLEMENT
#include "hooks_test_util.hpp"

#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>
#include <libmemcached/memcached.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

int memcached_port = 0;
pid_t memcached_pid = -1;

struct McFree {
  void operator()(memcached_st* m) const { memcached_free(m); }
};
using Client = std::unique_ptr<memcached_st, McFree>;

Client client() {
  Client m(memcached_create(nullptr));
  REQUIRE(m);
  REQUIRE(memcached_server_add(m.get(), "127.0.0.1", static_cast<in_port_t>(memcached_port)) ==
          MEMCACHED_SUCCESS);
  return m;
}

struct Got {
  memcached_return_t rc = MEMCACHED_FAILURE;
  std::string value;
};

Got get(memcached_st* m, const std::string& key) {
  Got g;
  std::size_t len = 0;
  std::uint32_t flags = 0;
  char* v = memcached_get(m, key.data(), key.size(), &len, &flags, &g.rc);
  if (v) {
    g.value.assign(v, len);
    std::free(v);
  }
  return g;
}

void set(memcached_st* m, const std::string& key, const std::string& value) {
  REQUIRE(memcached_set(m, key.data(), key.size(), value.data(), value.size(), 0, 0) == MEMCACHED_SUCCESS);
}

// The server stops answering (SIGSTOP) while it lives: a get then waits in libmemcached's poll.
struct Frozen {
  Frozen() {
    kill(memcached_pid, SIGSTOP);
    // Until every thread has stopped, a request may still be answered: wait for the stop.
    int status = 0;
    REQUIRE(waitpid(memcached_pid, &status, WUNTRACED) == memcached_pid);
    REQUIRE(WIFSTOPPED(status));
  }
  ~Frozen() { kill(memcached_pid, SIGCONT); }
};

}  // namespace

// `get(key)` on `m` while the server is frozen, interrupted `way` after 50 ms.
Got interrupted_get(memcached_st* m, const std::string& key, hooks_test::Way way) {
  Frozen frozen;
  Got g;
  hooks_test::interrupt_after_50ms(way, [&] { g = get(m, key); });
  return g;
}

TEST_SUITE("hooks") {
  TEST_CASE(
      "libmemcached: a get that a cancel, with_timeout or TimeoutScope interrupts is an error, not a miss") {
    skein::run([] {
      Client m = client();
      set(m.get(), "a", "A");
      set(m.get(), "b", "B");
      for (const hooks_test::Way way :
           {hooks_test::Way::cancel, hooks_test::Way::with_timeout, hooks_test::Way::timeout_scope}) {
        CAPTURE(static_cast<int>(way));
        const Got interrupted = interrupted_get(m.get(), "a", way);
        MESSAGE("interrupted get: " << std::string(memcached_strerror(m.get(), interrupted.rc)));
        CHECK(interrupted.rc != MEMCACHED_SUCCESS);
        CHECK(interrupted.rc != MEMCACHED_NOTFOUND);
        CHECK(interrupted.value == "");
        skein::sleep_for(50ms);  // the late reply to "get a" has arrived by now, if it can
        // The client reconnects by itself; no reply meant for another get reaches this one.
        const Got b = get(m.get(), "b");
        CHECK(b.value != "A");
        if (b.rc == MEMCACHED_SUCCESS) CHECK(b.value == "B");
        const Got a = get(m.get(), "a");
        CHECK(a.rc == MEMCACHED_SUCCESS);
        CHECK(a.value == "A");
      }
    });
  }

  TEST_CASE(
      "libmemcached: with keep_after_interrupt the interrupted get passes for a miss, as without the rule") {
    skein::run([] {
      Client m = client();
      set(m.get(), "a", "A");
      // libmemcached does not show its socket: the set made it, find it by its peer.
      const int fd = hooks_test::connection_to(memcached_port);
      REQUIRE(fd >= 0);
      skein::hooks::keep_after_interrupt(fd);
      const Got interrupted = interrupted_get(m.get(), "a", hooks_test::Way::cancel);
      CHECK(interrupted.rc == MEMCACHED_NOTFOUND);
    });
  }
}

int main(int argc, char** argv) {
  const std::string server = hooks_test::find_program("memcached");
  if (server.empty()) {
    std::printf("SKIP: memcached is not installed (Debian: memcached; scripts/deps installs it)\n");
    return 77;
  }
  std::optional<hooks_test::Child> child;
  for (int attempt = 0; attempt < 3 && !child; ++attempt) {
    memcached_port = hooks_test::free_port();
    // -U 0: no UDP port; -u root: memcached refuses to run as root without being told to.
    std::vector<std::string> args{
        server, "-p", std::to_string(memcached_port), "-l", "127.0.0.1", "-U", "0", "-m", "16", "-t", "1"};
    if (geteuid() == 0) {
      args.push_back("-u");
      args.push_back("root");
    }
    child.emplace(args);
    if (!hooks_test::wait_listening(memcached_port, std::chrono::seconds(10))) child.reset();
  }
  if (!child) {
    std::fprintf(stderr, "memcached did not start\n");
    return 1;
  }
  memcached_pid = child->pid();
  std::printf("memcached pid %d on 127.0.0.1:%d\n%s\n", static_cast<int>(memcached_pid), memcached_port,
              skein::hooks::describe().c_str());
  doctest::Context context(argc, argv);
  const int result = context.run();
  kill(memcached_pid, SIGCONT);
  child->stop();
  return result;
}
