// load_cli.hpp: the command line bench/'s network programs share, on top of samples/cli.hpp (whose
// error conventions it keeps: a bad argument prints "PROG: MESSAGE" and the --help hint, exit 2).
// parse_args is the samples' argument loop with its --help; the load generators (echo_load,
// churn_load, tls_load) take the same core options besides, parsed by parse_load_args:
//
//   skein_bench::LoadOptions o;  // or a struct derived from it, for the program's own options
//   skein_bench::parse_load_args(argc, argv, kUsage, o, [&](int& i, std::string_view& value) {
//     if (!cli::option("--slots", i, argc, argv, value)) return false;
//     slots = cli::number("--slots", value, 1, 1000);
//     return true;
//   });
//   connect(fd, reinterpret_cast<const sockaddr*>(&o.addr), sizeof o.addr);
#pragma once

#include "cli.hpp"
#include "process_cpu.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>

namespace skein_bench {

// Prints "PROG: what: <err's message>" on stderr and exits 1: a system call failed.
[[noreturn]] inline void die(const char* what, int err = errno) {
  std::fprintf(stderr, "%s: %s: %s\n", skein_samples::cli::program, what, std::strerror(err));
  std::exit(1);
}

// The IPv4 socket address host:port; a usage error (naming --host) unless `host` is a dotted quad.
inline sockaddr_in ipv4_address(const std::string& host, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    skein_samples::cli::usage_error("--host must be an IPv4 address, not '" + host + "'");
  return addr;
}

// Opens `path` to write a --json report; on failure prints why and returns null.
inline std::FILE* open_json(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f)
    std::fprintf(stderr, "%s: cannot write %s: %s\n", skein_samples::cli::program, path.c_str(),
                 std::strerror(errno));
  return f;
}

// What every load generator takes. A program sets its own defaults (and whether it writes JSON)
// before parse_load_args; the ranges are the same for all.
struct LoadOptions {
  std::string host = "127.0.0.1";  // --host ADDR: the server's IPv4 address
  int port = -1;                   // --port P, 1..65535: required
  double seconds = 5;              // --seconds S, 0.1..3600: the measured time
  double warmup = 1;               // --warmup S, 0..600: unmeasured load first
  long server_pid = 0;             // --server-pid PID: a process to report the CPU time of; 0: none
  std::string json;                // --json FILE: also write the results there; empty: none
  bool takes_json = true;          // false: --json is an unknown argument
  sockaddr_in addr{};              // host:port, set by parse_load_args
};

// Parses argv in samples/cli.hpp's way: -h/--help prints `usage` and exits 0; any other argument
// goes to take(i, value), which returns true if it took argv[i] (by cli::option, which steps i past
// a value and sets `value`, or by comparing it); an argument it does not take is a usage error.
template <class Take>
void parse_args(int argc, char** argv, const char* usage, Take&& take) {
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (skein_samples::cli::is_help(argv[i])) {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    if (!take(i, value)) skein_samples::cli::unknown_argument(argv[i]);
  }
}

// parse_args for a load generator: LoadOptions' options go to `o`, any other argument to own(i,
// value) as to parse_args' take. A missing --port is a usage error too.
template <class Own>
void parse_load_args(int argc, char** argv, const char* usage, LoadOptions& o, Own&& own) {
  namespace cli = skein_samples::cli;
  parse_args(argc, argv, usage, [&](int& i, std::string_view& value) {
    if (cli::option("--port", i, argc, argv, value)) {
      o.port = cli::number("--port", value, 1, 65535);
    } else if (cli::option("--host", i, argc, argv, value)) {
      o.host = value;
    } else if (cli::option("--seconds", i, argc, argv, value)) {
      o.seconds = cli::number("--seconds", value, 0.1, 3600.0);
    } else if (cli::option("--warmup", i, argc, argv, value)) {
      o.warmup = cli::number("--warmup", value, 0.0, 600.0);
    } else if (cli::option("--server-pid", i, argc, argv, value)) {
      o.server_pid = cli::number("--server-pid", value, 1L, 1L << 30);
      if (process_cpu_seconds(o.server_pid) < 0)
        cli::usage_error("--server-pid " + std::to_string(o.server_pid) + ": no such process to read");
    } else if (o.takes_json && cli::option("--json", i, argc, argv, value)) {
      o.json = value;
      if (o.json.empty()) cli::usage_error("--json needs a file name");
    } else {
      return own(i, value);
    }
    return true;
  });
  if (o.port < 0) cli::usage_error("--port is required");
  o.addr = ipv4_address(o.host, o.port);
}

}  // namespace skein_bench
