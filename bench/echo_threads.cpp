// echo_threads: the thread-per-connection baseline of the server benchmarks (scripts/bench-net).
// A TCP echo server that gives every accepted connection its own std::thread doing blocking
// read()/write(): the code skein's fibers let you write, at the cost of one kernel thread and a
// kernel context switch per message. Same command line as samples/echo_server.
//
//   echo_threads [--host 127.0.0.1] [--port P]     (--help for details)

#include "baseline_server.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

using baseline::die;

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: echo_threads [--host ADDR] [--port P]\n"
    "\n"
    "A thread-per-connection TCP echo server (blocking I/O): the baseline skein's echo server is\n"
    "benchmarked against (scripts/bench-net). Prints 'listening on ADDR:PORT' once it accepts\n"
    "connections; exits 0 on SIGINT or SIGTERM.\n"
    "\n"
    "  --host ADDR   IPv4 address to listen on; default 127.0.0.1\n"
    "  --port P      TCP port, 0..65535; 0 (the default) picks a free one\n"
    "  -h, --help    show this help and exit\n";

void serve(int fd) {
  char buf[16 * 1024];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::size_t done = 0;
    while (done < static_cast<std::size_t>(n)) {
      const ssize_t w = send(fd, buf + done, static_cast<std::size_t>(n) - done, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        close(fd);
        return;
      }
      done += static_cast<std::size_t>(w);
    }
  }
  close(fd);
}

// One message for a whole run: at thousands of connections a thread limit would otherwise flood
// stderr and slow the very accept loop that is short of threads.
std::atomic<bool> warned{false};
void warn_once(const char* what, const char* why) {
  if (!warned.exchange(true))
    std::fprintf(stderr, "echo_threads: %s: %s (closing such connections; said once)\n", what, why);
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "echo_threads";
  sockaddr_in addr = baseline::parse_listen_args(argc, argv, kUsage);
  const std::string host = baseline::host_of(addr);

  // Blocked before any thread exists, so every connection thread inherits the mask and the
  // signals wait on the signalfd for the accept loop.
  const int sfd = baseline::stop_signal_fd(SFD_CLOEXEC);

  const int lfd = baseline::listen_socket(addr, SOCK_STREAM | SOCK_CLOEXEC);
  std::printf("listening on %s:%u\n", host.c_str(), ntohs(addr.sin_port));
  std::fflush(stdout);

  pollfd fds[2] = {{lfd, POLLIN, 0}, {sfd, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents) break;
    if (!fds[0].revents) continue;
    const int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      warn_once("accept", std::strerror(errno));
      if (errno == EMFILE || errno == ENFILE) usleep(1000);  // let connections end, not spin
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    try {
      std::thread(serve, fd).detach();
    } catch (const std::system_error& e) {
      warn_once("cannot start a thread", e.what());
      close(fd);
    }
  }
  // Connection threads are still blocked in read(); the process ends them. _Exit skips the static
  // destructors they could otherwise race with.
  close(lfd);
  std::fflush(stdout);
  std::_Exit(0);
}
