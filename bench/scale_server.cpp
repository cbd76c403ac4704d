// scale_server: an echo server whose handler is CPU-bound, for measuring how throughput scales
// with the runtime's workers (scripts/bench-scale). Each connection's fiber is plain blocking
// code: read a message, spend about --work-us microseconds of real CPU hashing its bytes
// (FNV-1a, round after round, each round seeded by the last, so no round can be skipped), then
// write the message back unchanged. The hash's final value goes to a volatile sink, so the
// compiler cannot delete the work; echo_load still checks every echoed byte.
//
// The number of rounds is calibrated once at startup against this thread's own CPU clock
// (CLOCK_THREAD_CPUTIME_ID), so a busy machine during calibration does not shrink the work.
// Runs to be compared should do the same work: --calibrate prints the rounds for --work-us once,
// and --rounds R gives every run that figure instead of calibrating again.

#include <skein/skein.hpp>

#include "cli.hpp"
#include "serve_main.hpp"

#include <signal.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <span>
#include <string>
#include <string_view>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: scale_server [--host H] [--port P] [--threads N] [--work-us U | --rounds R]\n"
    "                    [--calibrate]\n"
    "\n"
    "An echo server with a CPU-bound handler: for every read it hashes the bytes read for about\n"
    "U microseconds of CPU, then writes them back unchanged. One fiber per connection; with\n"
    "--threads N the connections are spread over N workers (one SO_REUSEPORT listener each).\n"
    "Prints 'listening on HOST:PORT' once it accepts connections (and the calibration on\n"
    "stderr). Ctrl-C or SIGTERM stops it: it stops accepting, gives open connections a second\n"
    "to finish, and exits 0.\n"
    "\n"
    "  --host H      address to listen on, an IP literal or a name; default 127.0.0.1\n"
    "  --port P      TCP port, 0..65535 (0 picks a free one); default 8888\n"
    "  --threads N   worker threads, each serving its own share of the connections;\n"
    "                default 1\n"
    "  --work-us U   CPU microseconds spent per read (one message of a ping-pong client),\n"
    "                0..1000000; 0 makes it a plain echo server; default 200\n"
    "  --rounds R    R rounds of hashing per 64 bytes read instead (no calibration), 0..10^9\n"
    "  --calibrate   print the rounds that take --work-us U on a 64-byte message, and exit\n"
    "  -h, --help    show this help and exit\n";

// FNV-1a over `data`, `rounds` times, each round starting from the previous round's value.
// Every step depends on the one before (a multiply chain), so the work cannot be vectorised,
// hoisted or skipped.
std::uint64_t burn(std::span<const char> data, std::uint64_t rounds, std::uint64_t seed) {
  std::uint64_t h = seed;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    h ^= 0xcbf29ce484222325ULL + r;
    for (const char c : data) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Bytes hashed per microsecond of CPU, measured on a 64-byte block (echo_load's default message):
// the best of five timings of at least 20 ms each, so that a preemption cannot inflate the work.
double calibrate_bytes_per_us() {
  std::array<char, 64> block{};
  for (std::size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 37 + 11);
  volatile std::uint64_t sink = 0;
  std::uint64_t rounds = 1000;
  double best = 0;
  for (int trial = 0; trial < 5;) {
    const double t0 = thread_cpu_seconds();
    sink = burn(block, rounds, sink);
    const double dt = thread_cpu_seconds() - t0;
    if (dt < 0.02) {
      rounds *= 2;
      continue;
    }
    best = std::max(best, static_cast<double>(rounds * block.size()) / (dt * 1e6));
    ++trial;
  }
  return best;
}

// How much hashing a read of n bytes gets: `rounds` for a 64-byte read, proportionally more
// rounds for a shorter one and fewer for a longer one, so the CPU per read stays the same.
struct Work {
  std::uint64_t rounds = 0;  // per 64 bytes read
  std::uint64_t rounds_for(std::size_t n) const {
    if (rounds == 0) return 0;
    return std::max<std::uint64_t>(1, (rounds * 64 + n / 2) / n);
  }
};

void handle(skein::Stream stream, Work work) {
  std::array<char, 16 * 1024> buffer;
  volatile std::uint64_t sink = 0;
  for (;;) {
    const std::size_t n = stream.read(buffer);
    if (n == 0) return;  // the peer closed
    if (const std::uint64_t rounds = work.rounds_for(n)) sink = burn({buffer.data(), n}, rounds, sink);
    stream.write_all({buffer.data(), n});
  }
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "scale_server";
  skein_samples::ServerFlags flags(8888);
  double work_us = 200;
  long long rounds = -1;
  bool calibrate = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (flags.parse(i, argc, argv)) {
    } else if (cli::option("--work-us", i, argc, argv, value)) {
      work_us = cli::number("--work-us", value, 0.0, 1e6);
    } else if (cli::option("--rounds", i, argc, argv, value)) {
      rounds = cli::number("--rounds", value, 0LL, 1'000'000'000LL);
    } else if (std::string_view(argv[i]) == "--calibrate") {
      calibrate = true;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  // SIGINT/SIGTERM blocked from here on, in this thread and so in the workers it starts: one that
  // comes before the server watches for it (between 'listening on' and serve() installing its
  // signalfd, or during calibration) stays pending and stops the server gracefully once it
  // watches, rather than killing the process with the default action.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (!calibrate) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Work work;
  if (rounds >= 0 && !calibrate) {
    work.rounds = static_cast<std::uint64_t>(rounds);
    std::fprintf(stderr, "scale_server: %lld rounds per 64 bytes read (given)\n", rounds);
  } else if (work_us > 0) {
    const double bytes_per_us = calibrate_bytes_per_us();
    work.rounds = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(bytes_per_us * work_us / 64 + 0.5));
    if (calibrate) {
      std::printf("%llu\n", static_cast<unsigned long long>(work.rounds));
      return 0;
    }
    std::fprintf(stderr,
                 "scale_server: calibrated %.0f hashed bytes per CPU us: %.0f us per read is %llu rounds "
                 "per 64 bytes\n",
                 bytes_per_us, work_us, static_cast<unsigned long long>(work.rounds));
  } else if (calibrate) {
    std::printf("0\n");
    return 0;
  }

  try {
    skein::run(skein::RuntimeOptions{flags.threads}, [&] {
      skein_samples::listen_and_serve(flags.host, flags.port,
                                      [work](skein::Stream stream) { handle(std::move(stream), work); });
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scale_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
