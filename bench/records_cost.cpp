// The cost of skein::debug's records (docs/observability.md, "What it costs"): thread CPU time
// per operation on one worker, printed as four numbers (ns): channel ping-pong round trip
// unbuffered and with capacity 1, a yield through 10 fibers, a spawn + join of an empty body.
// Built by hand against two libskein.a (records on and off); bench/records_cost.py runs them
// interleaved. Not part of the Meson build: -Ddebug_records=false exists only for this.
#include <skein/channel.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include <time.h>

#include <cstdio>
#include <vector>

static double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double pingpong(std::size_t cap, int n) {
  skein::Channel<int> a(cap), b(cap);
  const double t0 = cpu_ns();
  auto p = skein::spawn([&] {
    for (int i = 0; i < n; ++i) {
      a.send(i);
      (void)b.recv();
    }
  });
  auto q = skein::spawn([&] {
    for (int i = 0; i < n; ++i) {
      (void)a.recv();
      b.send(i);
    }
  });
  p.join();
  q.join();
  return (cpu_ns() - t0) / n;
}

static double yields(int fibers, int rounds) {
  std::vector<skein::Task<void>> ts;
  const double t0 = cpu_ns();
  for (int f = 0; f < fibers; ++f)
    ts.push_back(skein::spawn([rounds] {
      for (int i = 0; i < rounds; ++i) skein::yield();
    }));
  for (auto& t : ts) t.join();
  return (cpu_ns() - t0) / (double(fibers) * rounds);
}

static double spawn_join(int n) {
  const double t0 = cpu_ns();
  for (int i = 0; i < n; ++i) skein::spawn([] {}).join();
  return (cpu_ns() - t0) / n;
}

int main() {
  skein::RuntimeOptions o;
  o.workers = 1;
  skein::run(o, [] {
    pingpong(0, 2000);  // warm
    const double u = pingpong(0, 100000);
    const double c = pingpong(1, 100000);
    const double y = yields(10, 20000);
    spawn_join(1000);
    const double s = spawn_join(100000);
    std::printf("%.2f %.2f %.2f %.2f\n", u, c, y, s);
  });
}
