// The cost of skein::debug's records (docs/observability.md, "What it costs"): thread CPU time
// per operation on one worker, printed as one line of numbers (ns), in the order of --list:
// channel ping-pong round trip unbuffered and with capacity 1, a yield through 10 fibers, a
// spawn + join of an empty body, and an echo round trip of 64 bytes over a Unix socket pair
// (user and kernel time: the system calls included). Built in every build with benchmarks not
// disabled; bench/records_cost.py runs a build with the records on against one with
// -Ddebug_records=false, interleaved.
#include "cli.hpp"

#include <skein/channel.hpp>
#include <skein/net.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/task.hpp>

#include <sys/socket.h>
#include <time.h>

#include <array>
#include <cstdio>
#include <string_view>
#include <vector>

namespace cli = skein_samples::cli;

namespace {

constexpr const char* kUsage =
    "usage: records_cost [--scale N] [--list]\n"
    "\n"
    "Prints the thread CPU time per operation, in ns, of five operations on one worker:\n"
    "channel ping-pong round trip (unbuffered, capacity 1), yield through 10 fibers, spawn + join\n"
    "of an empty body, echo round trip of 64 bytes over a Unix socket pair. One line, five numbers.\n"
    "\n"
    "  --scale N  run N times the default counts (1 to 100; default 1: 100,000 round trips,\n"
    "             200,000 yields, 100,000 spawns, 20,000 echoes)\n"
    "  --list     print the operations' names, one a line, and exit\n";

constexpr std::array<const char*, 5> kNames = {"ping-pong unbuffered", "ping-pong capacity 1",
                                               "yield (10 fibers)", "spawn + join", "echo 64 B (socketpair)"};

double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double pingpong(std::size_t cap, int n) {
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

double yields(int fibers, int rounds) {
  std::vector<skein::Task<void>> ts;
  const double t0 = cpu_ns();
  for (int f = 0; f < fibers; ++f)
    ts.push_back(skein::spawn([rounds] {
      for (int i = 0; i < rounds; ++i) skein::yield();
    }));
  for (auto& t : ts) t.join();
  return (cpu_ns() - t0) / (double(fibers) * rounds);
}

double spawn_join(int n) {
  const double t0 = cpu_ns();
  for (int i = 0; i < n; ++i) skein::spawn([] {}).join();
  return (cpu_ns() - t0) / n;
}

// A client and an echoing server fiber on one worker: each message is a write and a read on
// each side, and two parks on I/O (the server's read, the client's read).
double echo(int n) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    std::perror("records_cost: socketpair");
    std::exit(1);
  }
  skein::Stream client(fds[0]), server(fds[1]);
  const double t0 = cpu_ns();
  auto s = skein::spawn([&] {
    std::array<char, 64> buf;
    while (const std::size_t got = server.read(std::span<char>(buf)))
      server.write_all(std::string_view(buf.data(), got));
  });
  std::array<char, 64> msg{}, back{};
  for (int i = 0; i < n; ++i) {
    client.write_all(std::string_view(msg.data(), msg.size()));
    client.read_exact(std::span<char>(back));
  }
  client.shutdown();
  s.join();
  return (cpu_ns() - t0) / n;
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "records_cost";
  int scale = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (std::string_view(argv[i]) == "--list") {
      for (const char* n : kNames) std::puts(n);
      return 0;
    } else if (cli::option("--scale", i, argc, argv, value)) {
      scale = cli::number("--scale", value, 1, 100);
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  skein::RuntimeOptions o;
  o.workers = 1;
  skein::run(o, [scale] {
    pingpong(0, 2000);  // warm
    const double u = pingpong(0, 100000 * scale);
    const double c = pingpong(1, 100000 * scale);
    const double y = yields(10, 20000 * scale);
    spawn_join(1000);
    const double s = spawn_join(100000 * scale);
    echo(1000);
    const double e = echo(20000 * scale);
    std::printf("%.2f %.2f %.2f %.2f %.2f\n", u, c, y, s, e);
  });
}
