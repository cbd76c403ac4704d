// What the two baseline echo servers share (they stay free of skein on purpose): the
// --host/--port command line, the listening socket, and SIGINT/SIGTERM turned into a readable
// descriptor.
#pragma once

#include "load_cli.hpp"

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
#include <sys/socket.h>

namespace baseline {

namespace cli = skein_samples::cli;

using skein_bench::die;

// Parses [--host ADDR] [--port P] [--help] into an IPv4 listening address; exits on --help (0)
// and on bad input (2).
inline sockaddr_in parse_listen_args(int argc, char** argv, const char* usage) {
  std::string host = "127.0.0.1";
  int port = 0;
  skein_bench::parse_args(argc, argv, usage, [&](int& i, std::string_view& value) {
    if (cli::option("--port", i, argc, argv, value)) {
      port = cli::number("--port", value, 0, 65535);
    } else if (cli::option("--host", i, argc, argv, value)) {
      host = value;
    } else {
      return false;
    }
    return true;
  });
  return skein_bench::ipv4_address(host, port);
}

// The dotted-quad form of `addr`'s IPv4 address.
inline std::string host_of(const sockaddr_in& addr) {
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  return text;
}

// A socket of `type` (SOCK_STREAM and flags) listening on `addr`, whose port it then sets to the
// one the kernel gave (for port 0). Exits 1 if that fails.
inline int listen_socket(sockaddr_in& addr, int type) {
  const int fd = socket(AF_INET, type, 0);
  if (fd < 0) die("socket");
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) die(("bind " + host_of(addr)).c_str());
  if (listen(fd, SOMAXCONN) < 0) die("listen");
  socklen_t len = sizeof addr;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0) die("getsockname");
  return fd;
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
