// echo_epoll: the "hand-tuned event loop" baseline of the server benchmarks (scripts/bench-net). A
// single-threaded TCP echo server on raw, level-triggered epoll: what skein's fiber echo server is
// measured against. Same command line as samples/echo_server.
//
//   echo_epoll [--host 127.0.0.1] [--port P]     (--help for details)
//
// Level-triggered because a ping-pong peer sends one message per round trip: one read() per
// readiness event gets all of it, where edge-triggered would need a second read() to see EAGAIN.

#include "baseline_server.hpp"

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

using baseline::die;

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: echo_epoll [--host ADDR] [--port P]\n"
    "\n"
    "A single-threaded TCP echo server on raw epoll: the baseline skein's echo server is\n"
    "benchmarked against (scripts/bench-net). Prints 'listening on ADDR:PORT' once it accepts\n"
    "connections; exits 0 on SIGINT or SIGTERM.\n"
    "\n"
    "  --host ADDR   IPv4 address to listen on; default 127.0.0.1\n"
    "  --port P      TCP port, 0..65535; 0 (the default) picks a free one\n"
    "  -h, --help    show this help and exit\n";

constexpr int kMaxEvents = 512;
constexpr std::size_t kReadBuffer = 64 * 1024;

// Bytes a short write left behind. While a connection has any, it waits for EPOLLOUT and not
// EPOLLIN: reading more would only grow the backlog of a peer that is not reading.
struct Conn {
  std::vector<char> pending;
  std::size_t sent = 0;
};

class Server {
 public:
  Server(int listen_fd, int signal_fd) : listen_fd_(listen_fd), signal_fd_(signal_fd) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) die("epoll_create1");
    add(listen_fd_, EPOLLIN);
    add(signal_fd_, EPOLLIN);
    // Held open so that on EMFILE we can free one descriptor, accept the connection and close
    // it: otherwise the level-triggered listener would report the same backlog forever.
    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }

  // Runs until SIGINT or SIGTERM arrives on the signalfd.
  void run() {
    epoll_event events[kMaxEvents];
    for (;;) {
      const int n = epoll_wait(epfd_, events, kMaxEvents, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        const std::uint32_t ev = events[i].events;
        if (fd == listen_fd_) {
          accept_all();
        } else if (fd == signal_fd_) {
          return;
        } else if (ev & EPOLLOUT) {
          flush(fd);
        } else {
          // EPOLLHUP and EPOLLERR land here too: read() then reports the EOF or the error.
          echo(fd);
        }
      }
    }
  }

  ~Server() {
    for (std::size_t fd = 0; fd < open_.size(); ++fd)
      if (open_[fd]) close(static_cast<int>(fd));
    close(epfd_);
    if (spare_fd_ >= 0) close(spare_fd_);
  }

 private:
  void add(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl(ADD)");
  }

  void modify(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl(MOD)");
  }

  void accept_all() {
    for (;;) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if ((errno == EMFILE || errno == ENFILE) && spare_fd_ >= 0) {
          shed_one();
          continue;
        }
        std::fprintf(stderr, "echo_epoll: accept: %s\n", std::strerror(errno));
        return;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (static_cast<std::size_t>(fd) >= conns_.size()) {
        conns_.resize(static_cast<std::size_t>(fd) + 1024);
        open_.resize(conns_.size(), false);
      }
      open_[fd] = true;
      add(fd, EPOLLIN);
    }
  }

  void shed_one() {
    if (!warned_emfile_) {
      std::fprintf(stderr, "echo_epoll: out of file descriptors; refusing connections (raise ulimit -n)\n");
      warned_emfile_ = true;
    }
    close(spare_fd_);
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) close(fd);
    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }

  void drop(int fd) {
    // close() removes the fd from the epoll set (no dup()s exist), so no EPOLL_CTL_DEL.
    close(fd);
    open_[fd] = false;
    Conn& c = conns_[fd];
    c.pending.clear();
    c.sent = 0;
  }

  void echo(int fd) {
    const ssize_t n = read(fd, buf_, kReadBuffer);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      drop(fd);  // EOF, ECONNRESET...
      return;
    }
    const ssize_t w = send(fd, buf_, static_cast<std::size_t>(n), MSG_NOSIGNAL);
    if (w == n) return;
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
      drop(fd);
      return;
    }
    const std::size_t done = w < 0 ? 0 : static_cast<std::size_t>(w);
    Conn& c = conns_[fd];
    c.pending.assign(buf_ + done, buf_ + n);
    c.sent = 0;
    modify(fd, EPOLLOUT);
  }

  void flush(int fd) {
    Conn& c = conns_[fd];
    while (c.sent < c.pending.size()) {
      const ssize_t w = send(fd, c.pending.data() + c.sent, c.pending.size() - c.sent, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        drop(fd);
        return;
      }
      c.sent += static_cast<std::size_t>(w);
    }
    c.pending.clear();
    c.sent = 0;
    modify(fd, EPOLLIN);
  }

  int listen_fd_;
  int signal_fd_;
  int epfd_ = -1;
  int spare_fd_ = -1;
  bool warned_emfile_ = false;
  std::vector<Conn> conns_;  // indexed by fd
  std::vector<bool> open_;
  char buf_[kReadBuffer];
};

}  // namespace

int main(int argc, char** argv) {
  cli::program = "echo_epoll";
  sockaddr_in addr = baseline::parse_listen_args(argc, argv, kUsage);
  const std::string host = baseline::host_of(addr);

  // Signals arrive as readable data on an fd in the same epoll set: no handler, no races.
  const int sfd = baseline::stop_signal_fd(SFD_NONBLOCK | SFD_CLOEXEC);

  const int lfd = baseline::listen_socket(addr, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);

  auto server = std::make_unique<Server>(lfd, sfd);  // the heap: it holds a 64 KiB buffer
  std::printf("listening on %s:%u\n", host.c_str(), ntohs(addr.sin_port));
  std::fflush(stdout);
  server->run();
  server.reset();
  close(lfd);
  close(sfd);
  return 0;
}
