// The epoll backend: one epoll set per worker, each descriptor registered once, edge-triggered for
// both directions (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET), plus the inbox's eventfd, level-triggered.
// Events carry (generation << 32 | fd), which the core checks against its slot.
#include "io_backend.hpp"
#include "io_core.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>

namespace skein::detail {

namespace {

// epoll_event.data for the inbox's eventfd; fd events carry (generation << 32 | fd), never this.
constexpr std::uint64_t inbox_tag = ~std::uint64_t{0};
constexpr int max_events = 256;

class EpollBackend final : public IoBackend {
 public:
  EpollBackend(IoCore& core, Inbox& inbox, int epfd) noexcept : core_(core), inbox_(inbox), epfd_(epfd) {}
  ~EpollBackend() override { ::close(epfd_); }

  BackendKind kind() const noexcept override { return BackendKind::epoll; }

  int add(int fd, std::uint32_t generation) noexcept override {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (std::uint64_t{generation} << 32) | static_cast<std::uint32_t>(fd);
    return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0 ? errno : 0;
  }

  void remove(int fd) noexcept override { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

  void wait(TimePoint deadline) noexcept override {
    if (deadline == no_deadline) {
      once(-1, nullptr);
      return;
    }
    const auto left = deadline - Clock::now();
    if (left <= left.zero()) {
      once(0, nullptr);
      return;
    }
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    // epoll_wait's millisecond timeout, rounded up so the timer is due when it returns.
    const long long ms = (ns + 999'999) / 1'000'000;
    once(ms > INT_MAX ? INT_MAX : static_cast<int>(ms), &ts);
  }

  void poll() noexcept override { once(0, nullptr); }

 private:
  void prefetch(const epoll_event& e) const noexcept {
    if (e.data.u64 != inbox_tag)
      core_.prefetch(static_cast<int>(static_cast<std::uint32_t>(e.data.u64)), io_events_of(e.events));
  }

  void once(int timeout_ms, const timespec* timeout) noexcept {
    epoll_event events[max_events];
    int n;
    if (timeout && has_pwait2_) {
      // Nanosecond timeouts: a 100 us sleep must not become 1 ms.
      n = epoll_pwait2(epfd_, events, max_events, timeout, nullptr);
      // Older kernels lack it (ENOSYS); older container seccomp profiles refuse it (EPERM).
      if (n < 0 && (errno == ENOSYS || errno == EPERM)) {
        has_pwait2_ = false;
        n = epoll_wait(epfd_, events, max_events, timeout_ms);
      }
    } else {
      n = epoll_wait(epfd_, events, max_events, timeout_ms);
    }
    if (n < 0) {
      if (errno == EINTR) return;
      backend_fatal("epoll_wait", errno);
    }
    // Waking a fiber writes its record, which is cold when thousands of connections take turns:
    // prefetch a few events ahead.
    constexpr int ahead = 4;
    for (int i = 0; i < std::min(n, ahead); ++i) prefetch(events[i]);
    for (int i = 0; i < n; ++i) {
      if (i + ahead < n) prefetch(events[i + ahead]);
      const std::uint64_t data = events[i].data.u64;
      if (data == inbox_tag) {
        inbox_.clear_fd();  // the scheduler loop takes the messages
        continue;
      }
      core_.deliver(static_cast<int>(static_cast<std::uint32_t>(data)),
                    static_cast<std::uint32_t>(data >> 32), io_events_of(events[i].events));
    }
  }

  IoCore& core_;
  Inbox& inbox_;
  int epfd_;
  bool has_pwait2_ = true;
};

}  // namespace

std::unique_ptr<IoBackend> make_epoll_backend(IoCore& core, Inbox& inbox, int& err, const char*& why) {
  const int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    err = errno;
    why = "epoll_create1 failed";
    return nullptr;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: cleared on every wake-up anyway
  ev.data.u64 = inbox_tag;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, inbox.fd(), &ev) < 0) {
    err = errno;
    why = "epoll_ctl(inbox) failed";
    ::close(epfd);
    return nullptr;
  }
  auto backend = std::unique_ptr<IoBackend>(new (std::nothrow) EpollBackend(core, inbox, epfd));
  if (!backend) {
    err = ENOMEM;
    why = "out of memory";
    ::close(epfd);
  }
  return backend;
}

}  // namespace skein::detail
