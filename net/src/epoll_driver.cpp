#include "epoll_driver.hpp"

#include "scheduler.hpp"

#include <skein/net_error.hpp>
#include <skein/run.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <system_error>

namespace skein::detail {

namespace {

constinit thread_local EpollDriver* tl_driver = nullptr;

// epoll_event.data for the two eventfds; fd events carry (generation << 32 | fd), never these.
constexpr std::uint64_t eventfd_tag = ~std::uint64_t{0};
constexpr std::uint64_t inbox_tag = ~std::uint64_t{1};
constexpr int max_events = 256;

[[noreturn]] void fatal(const char* what) {
  std::fprintf(stderr, "skein: %s failed: %s\n", what, std::strerror(errno));
  std::abort();
}

void unlink_waiter(Fiber*, void* slot) noexcept {
  *static_cast<Fiber**>(slot) = nullptr;
}

}  // namespace

// ---- mailbox ------------------------------------------------------------------------------

bool Mailbox::post(std::shared_ptr<Completion> c) noexcept {
  std::lock_guard lock(mutex_);
  if (closed_) return false;
  posted_.push_back(std::move(c));
  if (!signalled_) {
    signalled_ = true;
    const std::uint64_t one = 1;
    // Cannot fail short of a bug: the counter is far from overflowing and the fd is open.
    [[maybe_unused]] const ssize_t n = ::write(eventfd_, &one, sizeof one);
  }
  return true;
}

void Mailbox::take(std::vector<std::shared_ptr<Completion>>& out) noexcept {
  std::lock_guard lock(mutex_);
  out.swap(posted_);
  signalled_ = false;
}

void Mailbox::close() noexcept {
  std::lock_guard lock(mutex_);
  closed_ = true;
  posted_.clear();
}

// ---- driver -------------------------------------------------------------------------------

EpollDriver::EpollDriver(Inbox& inbox) : inbox_(inbox) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) throw std::system_error(errno, std::generic_category(), "skein: epoll_create1");
  eventfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventfd_ < 0) {
    const int err = errno;
    ::close(epfd_);
    throw std::system_error(err, std::generic_category(), "skein: eventfd");
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: drained on every wake-up anyway
  ev.data.u64 = eventfd_tag;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, eventfd_, &ev) < 0) {
    const int err = errno;
    ::close(eventfd_);
    ::close(epfd_);
    throw std::system_error(err, std::generic_category(), "skein: epoll_ctl(eventfd)");
  }
  ev.data.u64 = inbox_tag;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, inbox.fd(), &ev) < 0) {
    const int err = errno;
    ::close(eventfd_);
    ::close(epfd_);
    throw std::system_error(err, std::generic_category(), "skein: epoll_ctl(inbox)");
  }
  mailbox_ = std::make_shared<Mailbox>(eventfd_);
}

EpollDriver::~EpollDriver() {
  mailbox_->close();
  ::close(eventfd_);
  ::close(epfd_);
  if (tl_driver == this) tl_driver = nullptr;
}

EpollDriver* EpollDriver::current() noexcept {
  Scheduler* s = Scheduler::current();
  // Outside a fiber (the thread's own stack, including the scheduler loop running a finished
  // fiber's destructors) nothing can park: callers block in poll(2) instead.
  if (!s || !s->running()) return nullptr;
  if (tl_driver) return tl_driver;
  try {
    auto driver = std::make_unique<EpollDriver>(s->inbox());
    tl_driver = driver.get();
    s->set_driver(std::move(driver));
  } catch (const std::exception& e) {
    // Out of descriptors or memory before the first I/O: nothing sensible to fall back to.
    std::fprintf(stderr, "skein: cannot start the epoll driver: %s\n", e.what());
    std::abort();
  }
  return tl_driver;
}

EpollDriver* EpollDriver::installed() noexcept {
  return tl_driver;
}

FdState& EpollDriver::state(int fd) {
  const auto i = static_cast<std::size_t>(fd);
  const std::size_t chunk = i / chunk_size;
  while (chunks_.size() <= chunk) chunks_.push_back(std::make_unique<FdState[]>(chunk_size));
  return chunks_[chunk][i % chunk_size];
}

void EpollDriver::wait(int fd, Direction dir, TimePoint deadline) {
  FdState& st = state(fd);
  const auto d = static_cast<std::size_t>(dir);
  if (st.waiter[d])
    throw std::system_error(std::make_error_code(std::errc::device_or_resource_busy),
                            dir == Direction::read ? "skein: another fiber is already reading this socket"
                                                   : "skein: another fiber is already writing this socket");
  if (!st.registered) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (std::uint64_t{st.generation} << 32) | static_cast<std::uint32_t>(fd);
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0)
      throw std::system_error(errno, std::generic_category(), "skein: epoll_ctl(ADD)");
    st.registered = true;
  }
  if (st.ready[d]) return;
  budget_ = io_budget;  // a real wait: the fiber gives way anyway
  Fiber* self = current_fiber();
  const std::uint32_t generation = st.generation;
  st.waiter[d] = self;
  ++fd_waiters_;
  const Wake w = park(deadline, &unlink_waiter, &st.waiter[d]);
  --fd_waiters_;
  if (st.generation != generation)
    throw std::system_error(make_error_code(net_errc::closed), "skein: socket closed");
  throw_if_interrupted(w);
}

void EpollDriver::forget(int fd) noexcept {
  const auto i = static_cast<std::size_t>(fd);
  if (i / chunk_size >= chunks_.size()) return;
  FdState& st = state(fd);
  ++st.generation;
  if (st.registered) {
    // Before close(): an fd duplicated elsewhere would otherwise stay in the interest list.
    epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    st.registered = false;
  }
  for (std::size_t d = 0; d < 2; ++d) {
    st.ready[d] = true;
    st.hung_up[d] = false;
    if (Fiber* f = st.waiter[d]) {
      st.waiter[d] = nullptr;
      unpark(f);
    }
  }
}

void EpollDriver::yield_for_fairness() {
  budget_ = io_budget;
  skein::yield();
}

void EpollDriver::wait_until(TimePoint deadline) noexcept {
  if (deadline == no_deadline) {
    epoll_once(-1, nullptr);
    return;
  }
  const auto left = deadline - Clock::now();
  if (left <= left.zero()) {
    epoll_once(0, nullptr);
    return;
  }
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
  const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  // epoll_wait's millisecond timeout, rounded up so the timer is due when it returns.
  const long long ms = (ns + 999'999) / 1'000'000;
  epoll_once(ms > INT_MAX ? INT_MAX : static_cast<int>(ms), &ts);
}

void EpollDriver::prefetch_waiter(std::uint64_t data, std::uint32_t events) const noexcept {
  if (data == eventfd_tag || data == inbox_tag) return;
  const auto fd = static_cast<std::uint32_t>(data);
  const FdState& st = chunks_[fd / chunk_size][fd % chunk_size];
  const Fiber* f = st.waiter[(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ? 0 : 1];
  if (f) {
    __builtin_prefetch(f, 1);
    __builtin_prefetch(reinterpret_cast<const char*>(f) + 64, 1);
  }
}

void EpollDriver::poll() noexcept {
  epoll_once(0, nullptr);
}

void EpollDriver::epoll_once(int timeout_ms, const timespec* timeout) noexcept {
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
    fatal("epoll_wait");
  }
  // Waking a fiber writes its record, which is cold when thousands of connections take turns:
  // prefetch a few events ahead.
  constexpr int ahead = 4;
  for (int i = 0; i < std::min(n, ahead); ++i) prefetch_waiter(events[i].data.u64, events[i].events);
  for (int i = 0; i < n; ++i) {
    if (i + ahead < n) prefetch_waiter(events[i + ahead].data.u64, events[i + ahead].events);
    const std::uint64_t data = events[i].data.u64;
    if (data == eventfd_tag) {
      drain_mailbox();
      continue;
    }
    if (data == inbox_tag) {
      inbox_.clear_fd();  // the scheduler loop takes the messages
      continue;
    }
    const auto fd = static_cast<std::uint32_t>(data);
    FdState& st = chunks_[fd / chunk_size][fd % chunk_size];
    if (st.generation != static_cast<std::uint32_t>(data >> 32) || !st.registered) continue;  // stale
    const std::uint32_t e = events[i].events;
    // Hang-ups and errors wake both directions, for good: the next call reports them.
    if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) st.hung_up[0] = true;
    if (e & (EPOLLHUP | EPOLLERR)) st.hung_up[1] = true;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      st.ready[0] = true;
      if (Fiber* f = st.waiter[0]) {
        st.waiter[0] = nullptr;
        unpark(f);
      }
    }
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
      st.ready[1] = true;
      if (Fiber* f = st.waiter[1]) {
        st.waiter[1] = nullptr;
        unpark(f);
      }
    }
  }
}

void EpollDriver::drain_mailbox() noexcept {
  std::uint64_t count;
  while (::read(eventfd_, &count, sizeof count) < 0 && errno == EINTR) {
  }
  mailbox_->take(completed_);
  for (auto& c : completed_) {
    c->done = true;
    if (c->fiber) unpark(c->fiber);
  }
  completed_.clear();
}

}  // namespace skein::detail
