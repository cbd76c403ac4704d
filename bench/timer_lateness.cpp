// How late sleeping fibers wake up behind a long ready queue: N fibers (default 100,000) on one
// worker each sleep 0-50 ms from their start; prints the worst and mean lateness of the wake-ups.
// The scheduler's bound is in docs/architecture.md ("Timer lateness").
#include <skein/skein.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::puts(
        "usage: timer_lateness [FIBERS]\n  FIBERS fibers (default 100000) each sleep 0-50 ms; prints "
        "the worst and mean lateness of their wake-ups.");
    return 0;
  }
  const int n = argc > 1 ? std::atoi(argv[1]) : 100'000;
  if (n <= 0) {
    std::fputs("timer_lateness: FIBERS must be a positive number\n", stderr);
    return 2;
  }
  double worst = 0, sum = 0;
  const auto start = skein::Clock::now();
  skein::run([&] {
    for (int i = 0; i < n; ++i)
      skein::spawn([&, i] {
        // Spread over 0-50 ms without a pattern the heap would favour.
        const auto due = skein::Clock::now() + std::chrono::microseconds((i * 7919L) % 50'001);
        skein::sleep_until(due);
        const double late = std::chrono::duration<double, std::milli>(skein::Clock::now() - due).count();
        worst = std::max(worst, late);
        sum += late;
      }).detach();
  });
  std::printf("%d fibers sleeping 0-50 ms: worst lateness %.1f ms, mean %.1f ms, %.2f s in all\n", n, worst,
              sum / n, std::chrono::duration<double>(skein::Clock::now() - start).count());
}
