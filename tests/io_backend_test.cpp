// The I/O backend choice: RuntimeOptions::io_backend, SKEIN_IO overriding it, automatic falling
// back to epoll where io_uring is unavailable (SKEIN_IO_URING_DISABLED stands in for a kernel that
// refuses it), and both backends serving sockets in one process.
#include "net_test_util.hpp"
#include "skip.hpp"

#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <unistd.h>

using skein::IoBackendKind;

namespace {

// Sets an environment variable for one test case, restoring what was there before.
class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~EnvGuard() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The backend a one-worker runtime with `options` runs a fiber's sockets on, after an echo
// through a socket pair to show it works.
IoBackendKind echo_on(IoBackendKind requested) {
  skein::RuntimeOptions options;
  options.workers = 1;
  options.io_backend = requested;
  skein::Runtime rt(options);
  return rt
      .spawn_on(0,
                [] {
                  auto p = skein_test::socket_pair();
                  auto reader = skein::spawn([&p] {
                    char buf[5];
                    p.server.read_exact(buf);
                    return std::string(buf, sizeof buf);
                  });
                  skein::sleep_for(std::chrono::milliseconds(1));  // the reader parks first
                  p.client.write_all(std::string_view("hello"));
                  CHECK(reader.join() == "hello");
                  return skein::io_backend();
                })
      .join();
}

bool uring_usable() {
  const EnvGuard env("SKEIN_IO", nullptr);
  try {
    return skein::resolve_io_backend(IoBackendKind::io_uring) == IoBackendKind::io_uring;
  } catch (const std::system_error&) {
    return false;
  }
}

}  // namespace

TEST_SUITE("net") {
  TEST_CASE("SKEIN_IO holding anything but auto, epoll or io_uring is an error naming the value") {
    const EnvGuard env("SKEIN_IO", "uring");
    try {
      skein::resolve_io_backend(IoBackendKind::epoll);
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(std::string_view(e.what()).find("'uring'") != std::string_view::npos);
    }
  }

  TEST_CASE("SKEIN_IO overrides RuntimeOptions::io_backend") {
    const EnvGuard env("SKEIN_IO", "epoll");
    CHECK(skein::resolve_io_backend(IoBackendKind::io_uring) == IoBackendKind::epoll);
    CHECK(echo_on(IoBackendKind::io_uring) == IoBackendKind::epoll);
  }

  TEST_CASE(
      "automatic falls back to epoll where io_uring is unavailable; asking for io_uring there is an error "
      "naming why") {
    const EnvGuard env("SKEIN_IO", nullptr);
    const EnvGuard off("SKEIN_IO_URING_DISABLED", "1");
    CHECK(skein::resolve_io_backend(IoBackendKind::automatic) == IoBackendKind::epoll);
    CHECK(echo_on(IoBackendKind::automatic) == IoBackendKind::epoll);
    try {
      skein::resolve_io_backend(IoBackendKind::io_uring);
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(std::string_view(e.what()).find("SKEIN_IO_URING_DISABLED") != std::string_view::npos);
    }
  }

  TEST_CASE("io_backend_name spells the kinds as SKEIN_IO does") {
    CHECK(std::string_view(skein::io_backend_name(IoBackendKind::automatic)) == "auto");
    CHECK(std::string_view(skein::io_backend_name(IoBackendKind::epoll)) == "epoll");
    CHECK(std::string_view(skein::io_backend_name(IoBackendKind::io_uring)) == "io_uring");
  }

  TEST_CASE("io_backend outside a fiber is operation_not_permitted") {
    try {
      skein::io_backend();
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::operation_not_permitted);
    }
  }
}

// Needs a kernel that allows io_uring: skips (Meson: SKIP) where it does not.
TEST_SUITE("net-io_uring") {
  TEST_CASE("SKEIN_IO_URING_MODE: completion and readiness both serve sockets; anything else is an error") {
    if (!uring_usable()) {
      skein_test::skip("io_uring is unavailable here");
      return;
    }
    const EnvGuard env("SKEIN_IO", nullptr);
    for (const char* mode : {"completion", "readiness"}) {
      INFO(mode);
      const EnvGuard m("SKEIN_IO_URING_MODE", mode);
      CHECK(echo_on(IoBackendKind::io_uring) == IoBackendKind::io_uring);
    }
    {
      // Readiness mode is used only when io_uring is asked for: automatic is epoll then.
      const EnvGuard m("SKEIN_IO_URING_MODE", "readiness");
      CHECK(skein::resolve_io_backend(IoBackendKind::automatic) == IoBackendKind::epoll);
    }
    const EnvGuard m("SKEIN_IO_URING_MODE", "polling");
    try {
      skein::resolve_io_backend(IoBackendKind::io_uring);
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(std::string(e.what()).find("SKEIN_IO_URING_MODE") != std::string::npos);
    }
  }

  TEST_CASE("an explicit io_uring runtime reports its backend, beside an epoll one in the same process") {
    if (!uring_usable()) {
      skein_test::skip("io_uring is unavailable here");
      return;
    }
    const EnvGuard env("SKEIN_IO", nullptr);
    const EnvGuard mode("SKEIN_IO_URING_MODE", nullptr);
    CHECK(echo_on(IoBackendKind::io_uring) == IoBackendKind::io_uring);
    // Automatic is io_uring in completion mode where the kernel allows it.
    CHECK(skein::resolve_io_backend(IoBackendKind::automatic) == IoBackendKind::io_uring);
    CHECK(echo_on(IoBackendKind::automatic) == IoBackendKind::io_uring);
    // Both at once: one runtime per backend, each serving its own sockets.
    skein::RuntimeOptions uring_options;
    uring_options.workers = 1;
    uring_options.io_backend = IoBackendKind::io_uring;
    skein::RuntimeOptions epoll_options = uring_options;
    epoll_options.io_backend = IoBackendKind::epoll;
    skein::Runtime uring_rt(uring_options);
    skein::Runtime epoll_rt(epoll_options);
    // Each end is used and closed on its own runtime's worker only.
    auto p = skein_test::socket_pair();
    auto reader = epoll_rt.spawn_on(0, [s = std::move(p.server)]() mutable {
      char buf[4];
      s.read_exact(buf);
      s.close();
      return std::pair(skein::io_backend(), std::string(buf, sizeof buf));
    });
    auto writer = uring_rt.spawn_on(0, [s = std::move(p.client)]() mutable {
      s.write_all(std::string_view("ping"));
      s.close();
      return skein::io_backend();
    });
    CHECK(writer.join() == IoBackendKind::io_uring);
    const auto [kind, got] = reader.join();
    CHECK(kind == IoBackendKind::epoll);
    CHECK(got == "ping");
  }

  TEST_CASE("workers asleep in their io_uring rings wake each other, by MSG_RING and by the eventfd") {
    if (!uring_usable()) {
      skein_test::skip("io_uring is unavailable here");
      return;
    }
    for (const char* wake : {"msg_ring", "eventfd"}) {
      CAPTURE(wake);
      const EnvGuard env("SKEIN_IO_URING_WAKE", wake);
      skein::RuntimeOptions options;
      options.workers = 2;
      options.io_backend = IoBackendKind::io_uring;
      options.idle_spin = std::chrono::microseconds(0);  // every message finds its worker asleep
      skein::Runtime rt(options);
      // A fiber on each worker waits on an idle socket: the workers sleep in their rings.
      auto p0 = skein_test::socket_pair();
      auto p1 = skein_test::socket_pair();
      auto idle = [](skein::Stream& s) {
        char b[1];
        return s.read(std::span<char>(b, 1), std::chrono::seconds(10));
      };
      auto idle0 = rt.spawn_on(0, [&] { return idle(p0.server); });
      auto idle1 = rt.spawn_on(1, [&] { return idle(p1.server); });
      skein::Channel<int> there, back;
      auto echo = rt.spawn_on(1, [&] {
        while (const std::optional<int> v = there.recv()) back.send(*v + 1);
      });
      const int last = rt.spawn_on(0, [&] {
                           int v = 0;
                           for (int i = 0; i < 200; ++i) {
                             skein::sleep_for(std::chrono::microseconds(i % 3 == 0 ? 100 : 0));
                             there.send(v);
                             v = *back.recv();
                           }
                           there.close();
                           return v;
                         }).join();
      CHECK(last == 200);
      echo.join();
      p0.client.close();
      p1.client.close();
      CHECK(idle0.join() == 0);
      CHECK(idle1.join() == 0);
    }
  }
}
