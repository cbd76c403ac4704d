// What the two baseline echo servers share (they stay free of skein on purpose): the
// --host/--port command line, and SIGINT/SIGTERM turned into a readable descriptor.
#pragma once

#include "cli.hpp"

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/signalfd.h>

namespace baseline {

namespace cli = skein_samples::cli;

// Prints what failed with errno's message and exits 1.
[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "%s: %s: %s\n", cli::program, what, std::strerror(errno));
  std::exit(1);
}

// Parses [--host ADDR] [--port P] [--help] into an IPv4 listening address; exits on --help (0)
// and on bad input (2).
inline sockaddr_in parse_listen_args(int argc, char** argv, const char* usage) {
  std::string host = "127.0.0.1";
  int port = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (cli::option("--port", i, argc, argv, value)) {
      port = cli::number("--port", value, 0, 65535);
    } else if (cli::option("--host", i, argc, argv, value)) {
      host = value;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    cli::usage_error("--host must be an IPv4 address, not '" + host + "'");
  return addr;
}

// The dotted-quad form of `addr`'s IPv4 address.
inline std::string host_of(const sockaddr_in& addr) {
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  return text;
}

// Blocks SIGINT and SIGTERM for the process (threads started later inherit the mask) and returns
// a signalfd that becomes readable when one arrives: no handler, no races.
inline int stop_signal_fd(int flags) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &mask, nullptr) < 0) die("sigprocmask");
  const int fd = signalfd(-1, &mask, flags);
  if (fd < 0) die("signalfd");
  return fd;
}

}  // namespace baseline
