// churn_load: connection churn against a TCP echo server. N slots each loop: connect, send one
// SIZE-byte message, read its echo back (checked byte for byte), close; then connect again. So
// every round trip costs the server an accept, a read, a write and a close: the accept path is
// what this measures (echo_load keeps its connections). Reports connections/s and, with
// --server-pid, the server's CPU time per connection.
//
//   churn_load --port P [--host ADDR] [--slots N] [--seconds S] [--warmup S] [--size B]
//              [--server-pid PID]
//
// One thread, one level-triggered epoll set. The client closes first, so its TIME_WAIT sockets
// are on the loopback, where Linux reuses them (net.ipv4.tcp_tw_reuse=2, the default).

#include "load_cli.hpp"

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

namespace cli = skein_samples::cli;
using skein_bench::die;
using skein_bench::process_cpu_seconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: churn_load --port P [--host ADDR] [--slots N] [--seconds S] [--warmup S] [--size B]\n"
    "                  [--server-pid PID]\n"
    "\n"
    "Connection churn against a TCP echo server: N slots each connect, send one B-byte message,\n"
    "read the echo back (every byte checked), close, and connect again. Counts the connections\n"
    "completed in the measured S seconds, after S seconds of warm-up. A wrong byte or a failed\n"
    "connection is an error: exit 1.\n"
    "\n"
    "  --port P          the server's TCP port (required)\n"
    "  --host ADDR       the server's IPv4 address; default 127.0.0.1\n"
    "  --slots N         connections in flight at once, 1..1000; default 32\n"
    "  --seconds S       measured time, 0.1..3600; default 5\n"
    "  --warmup S        unmeasured load first, 0..600; default 1\n"
    "  --size B          message size in bytes, 1..65536; default 64\n"
    "  --server-pid PID  also report the CPU time process PID used, per connection\n"
    "  -h, --help        show this help and exit\n";

struct Slot {
  int fd = -1;
  std::size_t sent = 0, got = 0;
  unsigned char seed = 0;
};

}  // namespace

int main(int argc, char** argv) {
  cli::program = "churn_load";
  skein_bench::LoadOptions o;
  o.takes_json = false;
  int slots = 32;
  std::size_t size = 64;
  skein_bench::parse_load_args(argc, argv, kUsage, o, [&](int& i, std::string_view& value) {
    if (cli::option("--slots", i, argc, argv, value)) {
      slots = cli::number("--slots", value, 1, 1000);
    } else if (cli::option("--size", i, argc, argv, value)) {
      size = cli::number<std::size_t>("--size", value, 1, 65536);
    } else {
      return false;
    }
    return true;
  });

  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1", errno);
  std::vector<Slot> slot(static_cast<std::size_t>(slots));
  std::vector<unsigned char> tx(size), rx(size);
  std::uint64_t done = 0;
  auto start = [&](std::size_t i) {
    Slot& s = slot[i];
    s.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s.fd < 0) die("socket", errno);
    const int one = 1;
    setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s.sent = s.got = 0;
    ++s.seed;
    if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&o.addr), sizeof o.addr) < 0 &&
        errno != EINPROGRESS)
      die("connect", errno);
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s.fd, &ev) < 0) die("epoll_ctl", errno);
  };
  for (std::size_t i = 0; i < slot.size(); ++i) start(i);

  const auto t0 = Clock::now();
  const auto t_measure = t0 + std::chrono::duration<double>(o.warmup);
  const auto t_end = t_measure + std::chrono::duration<double>(o.seconds);
  bool measuring = false;
  std::uint64_t done0 = 0;
  double cpu0 = -1;
  epoll_event evs[256];
  for (;;) {
    const auto now = Clock::now();
    if (!measuring && now >= t_measure) {
      measuring = true;
      done0 = done;
      if (o.server_pid) cpu0 = process_cpu_seconds(o.server_pid);
    }
    if (now >= t_end) break;
    const int n = epoll_wait(ep, evs, 256, 100);
    if (n < 0 && errno != EINTR) die("epoll_wait", errno);
    for (int k = 0; k < n; ++k) {
      const std::size_t i = evs[k].data.u64;
      Slot& s = slot[i];
      if (s.sent < size) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) die("connect (SO_ERROR)", err);
        for (std::size_t b = 0; b < size; ++b) tx[b] = static_cast<unsigned char>(s.seed + b);
        const ssize_t w = ::send(s.fd, tx.data(), size, MSG_NOSIGNAL);
        if (w != static_cast<ssize_t>(size)) die("send (short or failed)", w < 0 ? errno : EIO);
        s.sent = size;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        if (epoll_ctl(ep, EPOLL_CTL_MOD, s.fd, &ev) < 0) die("epoll_ctl", errno);
        continue;
      }
      const ssize_t r = ::recv(s.fd, rx.data() + s.got, size - s.got, 0);
      if (r < 0 && errno == EAGAIN) continue;
      if (r <= 0) die("recv (reset or early end of stream)", r < 0 ? errno : EPIPE);
      for (std::size_t b = s.got; b < s.got + static_cast<std::size_t>(r); ++b)
        if (rx[b] != static_cast<unsigned char>(s.seed + b)) die("echo", EBADMSG);
      s.got += static_cast<std::size_t>(r);
      if (s.got < size) continue;
      ::close(s.fd);  // removes it from the epoll set
      ++done;
      start(i);
    }
  }
  const double measured = std::chrono::duration<double>(Clock::now() - t_measure).count();
  const std::uint64_t conns = done - done0;
  const double cpu1 = o.server_pid ? process_cpu_seconds(o.server_pid) : -1;
  std::printf("churn_load: %llu connections in %.2f s: %.0f connections/s",
              static_cast<unsigned long long>(conns), measured, static_cast<double>(conns) / measured);
  if (cpu0 >= 0 && cpu1 >= 0 && conns)
    std::printf(", server %.2f us CPU per connection (%.0f%% of a core)",
                (cpu1 - cpu0) * 1e6 / static_cast<double>(conns), 100 * (cpu1 - cpu0) / measured);
  std::printf("\n");
  return 0;
}
