// A program built only from what `meson install` put in a prefix, found through pkg-config.
#include <skein/skein.hpp>

#include <cstdio>

int main() {
  const int sum = skein::run([] {
    auto a = skein::spawn([] { return 20; });
    auto b = skein::spawn([] { return 22; });
    auto [x, y] = skein::gather(a, b);
    return x + y;
  });
  std::printf("pkg-config consumer: %d\n", sum);
  return sum == 42 ? 0 : 1;
}
