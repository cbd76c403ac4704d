// The hooks in a static executable (skein_hooks_static_dep, linked with -static): every symbol is
// bound at link time, getaddrinfo through -Wl,--wrap=getaddrinfo.
#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <vector>

namespace {

double seconds_since(skein::TimePoint start) {
  return std::chrono::duration<double>(skein::Clock::now() - start).count();
}

}  // namespace

TEST_SUITE("hooks") {
  TEST_CASE("static: every call is hooked, getaddrinfo through --wrap") {
    CHECK(skein::hooks::hooked_calls().size() == 29);
    CHECK(skein::hooks::is_hooked("getaddrinfo"));
    CHECK(skein::hooks::is_hooked("read"));
  }

  TEST_CASE("static: sleeps overlap and a blocking read parks only its fiber") {
    int fd[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == 0);
    skein::run([&] {
      const auto start = skein::Clock::now();
      std::vector<skein::Task<int>> sleepers;
      for (int i = 0; i < 20; ++i) sleepers.push_back(skein::spawn([] { return usleep(100'000); }));
      auto reader = skein::spawn([&] {
        char c = 0;
        return read(fd[0], &c, 1) == 1 && c == 'x';
      });
      auto writer = skein::spawn([&] {
        usleep(50'000);
        return write(fd[1], "x", 1);
      });
      for (auto& s : sleepers) CHECK(s.join() == 0);
      CHECK(reader.join());
      CHECK(writer.join() == 1);
      CHECK(seconds_since(start) < 0.5);  // serially: 2.05 s
      addrinfo hints{};
      hints.ai_flags = AI_NUMERICHOST;  // no NSS modules to load in a static program
      hints.ai_family = AF_INET;
      addrinfo* res = nullptr;
      REQUIRE(getaddrinfo("127.0.0.1", "80", &hints, &res) == 0);
      CHECK(reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_port == htons(80));
      freeaddrinfo(res);
    });
    close(fd[0]);
    close(fd[1]);
  }
}
