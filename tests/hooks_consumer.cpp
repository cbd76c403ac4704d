// Built against the installed libskein_hooks through `pkg-config --libs skein_hooks` or CMake's
// skein::hooks only: the hooks are linked in, and two fibers' usleep calls overlap.
#include <skein/hooks.hpp>
#include <skein/skein.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>

int main() {
  if (!skein::hooks::is_hooked("usleep") || !skein::hooks::is_hooked("getaddrinfo")) {
    std::fprintf(stderr, "not hooked: %s\n", skein::hooks::describe().c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  skein::run([] {
    auto a = skein::spawn([] { return usleep(200'000); });
    auto b = skein::spawn([] { return usleep(200'000); });
    return a.join() + b.join();
  });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("two 0.2 s usleeps in fibers: %.3f s\n", took);
  return took < 0.38 ? 0 : 1;
}
