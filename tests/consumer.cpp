// A program built only from what `meson install` put in a prefix, found through pkg-config or
// CMake's find_package (tests/pkgconfig_consumer.sh, tests/cmake_consumer.sh). The script passes
// the version it installed as SKEIN_EXPECTED_VERSION: the installed <skein/version.hpp> must say it.
#include <skein/skein.hpp>
#include <skein/version.hpp>

#include <cstdio>
#include <string_view>

static_assert(std::string_view(SKEIN_VERSION_STRING) == SKEIN_EXPECTED_VERSION);
static_assert(SKEIN_VERSION == SKEIN_VERSION_MAJOR * 10000 + SKEIN_VERSION_MINOR * 100 + SKEIN_VERSION_PATCH);

int main() {
  const int sum = skein::run([] {
    auto a = skein::spawn([] { return 20; });
    auto b = skein::spawn([] { return 22; });
    auto [x, y] = skein::gather(a, b);
    return x + y;
  });
  std::printf("consumer of skein %s: %d\n", SKEIN_VERSION_STRING, sum);
  return sum == 42 ? 0 : 1;
}
