// The hook definitions: libc's names, defined here so the program (and, through the dynamic
// symbol table, every shared library it loads) calls these instead. Each issues the real call as a
// raw system call; inside a fiber, on a socket the user keeps blocking, an EAGAIN from the kernel
// becomes a park of the fiber until the socket is ready, its timeout passes or a cancel.
//
// Fortified builds of the glibc headers turn read() into an inline wrapper; the definitions here
// need the plain declarations; _FILE_OFFSET_BITS=64 would rename fcntl to fcntl64, which is
// defined here under its own name (off_t is 64-bit on every target skein builds for).
#undef _FORTIFY_SOURCE
#undef _FILE_OFFSET_BITS

#include "blocking_pool.hpp"
#include "hooks_internal.hpp"

#include <skein/detail/fiber.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

using namespace skein::hooks::detail;
using skein::Clock;
using skein::no_deadline;
using skein::TimePoint;

extern "C" [[noreturn]] void __chk_fail(void);
extern "C" int __real_getaddrinfo(const char*, const char*, const addrinfo*, addrinfo**)
    __attribute__((weak));
// hooks_dynamic.cpp: libc's getaddrinfo through dlsym(RTLD_NEXT), in dynamically linked programs.
extern "C" void* skein_hooks_next_getaddrinfo() __attribute__((weak));

namespace {

// ---- the transfers ------------------------------------------------------------------------

// Why a blocking transfer stops early: the errno it reports when nothing was transferred.
int interrupted_errno(int w) noexcept {
  return w == wait_own_deadline ? EAGAIN : w;
}

// One blocking transfer of `len` bytes. `attempt(done)` makes the raw call for what is left after
// `done` bytes. `all`: a blocking stream send (or MSG_WAITALL receive) goes on until everything is
// transferred; an error or timeout after a part returns the part, as the kernel's own loop does.
template <class Attempt>
ssize_t transfer(Call call, int fd, Direction dir, bool dontwait, bool all, std::size_t len,
                 Attempt attempt) noexcept {
  FdEntry* e = classified(fd);
  if (!waitable(e) || dontwait) return attempt(0);
  IoCore* core = fiber_core(call);
  const CallLabel label(core != nullptr, call);
  if (core) {
    if (!make_nonblocking(fd, *e)) return attempt(0);
  } else if (!(e->flags.load(std::memory_order_relaxed) & fd_ours_nb)) {
    return attempt(0);  // as libc: the kernel blocks the thread
  }
  IoHandle h = attach(fd, *e, core);
  const std::uint32_t flags = e->flags.load(std::memory_order_relaxed);
  const TimePoint deadline = deadline_in(
      (dir == Direction::read ? e->rcv_timeout_ns : e->snd_timeout_ns).load(std::memory_order_relaxed));
  std::size_t done = 0;
  for (;;) {
    const ssize_t n =
        IoCore::run(h, dir, deadline, transfer_kind(flags, len - done), [&] { return attempt(done); });
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      if (!all || done >= len) return static_cast<ssize_t>(done);
      continue;
    }
    if (n == 0) return static_cast<ssize_t>(done);
    const int w = wait_outcome(static_cast<int>(-n), deadline);
    if (w == wait_ready) continue;
    if (interrupting(w)) {
      // What arrived (or the room that opened) before the fiber was resumed counts, as what is
      // ready at its deadline counts for the kernel's poll: a reply that came in time is the
      // call's answer, not a late one to cut off with the connection.
      const ssize_t m = attempt(done);
      if (m == 0) return static_cast<ssize_t>(done);
      if (m > 0) {
        done += static_cast<std::size_t>(m);
        if (!all || done >= len) return static_cast<ssize_t>(done);
      }
      // Part of a request sent or a reply awaited: the connection cannot go on as if not.
      interrupted(fd);
    }
    if (done) return static_cast<ssize_t>(done);
    errno = interrupted_errno(w);
    return -1;
  }
}

// Classifies `fd` if it is not yet: asked before the transfer starts.
bool is_stream(int fd) noexcept {
  const FdEntry* e = classified(fd);
  return e && (e->flags.load(std::memory_order_relaxed) & fd_stream);
}

// `iov` with its first `skip` bytes dropped, into `out` (which keeps the storage).
const iovec* advance(const iovec* iov, int& count, std::size_t skip, std::vector<iovec>& out) {
  if (skip == 0) return iov;
  out.assign(iov, iov + count);
  std::size_t i = 0;
  while (i < out.size() && skip >= out[i].iov_len) skip -= out[i++].iov_len;
  if (i < out.size()) {
    out[i].iov_base = static_cast<char*>(out[i].iov_base) + skip;
    out[i].iov_len -= skip;
  }
  count = static_cast<int>(out.size() - i);
  return out.data() + i;
}

std::size_t total(const iovec* iov, int count) noexcept {
  std::size_t n = 0;
  for (int i = 0; i < count; ++i) n += iov[i].iov_len;
  return n;
}

ssize_t do_read(int fd, void* buf, std::size_t len) noexcept {
  return transfer(Call::read, fd, Direction::read, false, false, len,
                  [&](std::size_t) { return static_cast<ssize_t>(syscall(SYS_read, fd, buf, len)); });
}

ssize_t do_recvfrom(Call call, int fd, void* buf, std::size_t len, int flags, sockaddr* from,
                    socklen_t* fromlen) noexcept {
  const bool all = (flags & MSG_WAITALL) && is_stream(fd);
  return transfer(call, fd, Direction::read, flags & MSG_DONTWAIT, all, len, [&](std::size_t done) {
    return static_cast<ssize_t>(
        syscall(SYS_recvfrom, fd, static_cast<char*>(buf) + done, len - done, flags, from, fromlen));
  });
}

ssize_t do_sendto(Call call, int fd, const void* buf, std::size_t len, int flags, const sockaddr* to,
                  socklen_t tolen) noexcept {
  return transfer(
      call, fd, Direction::write, flags & MSG_DONTWAIT, is_stream(fd), len, [&](std::size_t done) {
        return static_cast<ssize_t>(
            syscall(SYS_sendto, fd, static_cast<const char*>(buf) + done, len - done, flags, to, tolen));
      });
}

// recvmsg/sendmsg, also readv/writev on a socket (the same with no address and no control data).
ssize_t do_msg(Call call, int fd, msghdr* msg, int flags, Direction dir) noexcept {
  std::vector<iovec> scratch;
  const bool stream = is_stream(fd);
  const bool all = stream && (dir == Direction::write || (flags & MSG_WAITALL));
  const std::size_t len = total(msg->msg_iov, static_cast<int>(msg->msg_iovlen));
  return transfer(call, fd, dir, flags & MSG_DONTWAIT, all, len, [&](std::size_t done) -> ssize_t {
    if (done == 0)
      return static_cast<ssize_t>(
          syscall(dir == Direction::read ? SYS_recvmsg : SYS_sendmsg, fd, msg, flags));
    // The rest of a stream transfer: the remaining bytes, without the control data sent (or
    // received) with the first part.
    int count = static_cast<int>(msg->msg_iovlen);
    msghdr rest{};
    try {
      rest.msg_iov = const_cast<iovec*>(advance(msg->msg_iov, count, done, scratch));
    } catch (const std::bad_alloc&) {
      errno = ENOMEM;
      return -1;
    }
    rest.msg_iovlen = static_cast<std::size_t>(count);
    return static_cast<ssize_t>(
        syscall(dir == Direction::read ? SYS_recvmsg : SYS_sendmsg, fd, &rest, flags));
  });
}

ssize_t do_iov(Call call, int fd, const iovec* iov, int count, Direction dir) noexcept {
  const FdEntry* e = classified(fd);
  if (!waitable(e)) return syscall(dir == Direction::read ? SYS_readv : SYS_writev, fd, iov, count);
  if (count < 0 || count > IOV_MAX) {
    errno = EINVAL;
    return -1;
  }
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<std::size_t>(count);
  // write(2) on a socket raises SIGPIPE as send(2) without MSG_NOSIGNAL does: no flags.
  return do_msg(call, fd, &msg, 0, dir);
}

ssize_t do_write(int fd, const void* buf, std::size_t len) noexcept {
  return transfer(Call::write, fd, Direction::write, false, is_stream(fd), len, [&](std::size_t done) {
    return static_cast<ssize_t>(syscall(SYS_write, fd, static_cast<const char*>(buf) + done, len - done));
  });
}

int do_accept(Call call, int fd, sockaddr* addr, socklen_t* addrlen, int flags) noexcept {
  FdEntry* e = classified(fd);
  IoCore* core = waitable(e) ? fiber_core(call) : nullptr;
  const CallLabel label(core != nullptr, call);
  const bool emulate = core || (waitable(e) && (e->flags.load(std::memory_order_relaxed) & fd_ours_nb));
  if (core && !make_nonblocking(fd, *e)) core = nullptr;
  // In a fiber the new socket starts non-blocking in the kernel, saving the fcntl of its first use.
  const int kernel_flags = core ? flags | SOCK_NONBLOCK : flags;
  const auto call_accept = [&] {
    return static_cast<ssize_t>(syscall(SYS_accept4, fd, addr, addrlen, kernel_flags));
  };
  ssize_t s;
  if (!emulate) {
    s = call_accept();
  } else {
    IoHandle h = attach(fd, *e, core);
    const TimePoint deadline = deadline_in(e->rcv_timeout_ns.load(std::memory_order_relaxed));
    for (;;) {
      s = IoCore::run(h, Direction::read, deadline,
                      IoTransfer::message().report_signals().reason(skein::debug::WaitReason::accept),
                      call_accept);
      if (s >= 0) break;
      const int w = wait_outcome(static_cast<int>(-s), deadline);
      if (w == wait_ready) continue;
      errno = interrupted_errno(w);
      return -1;
    }
  }
  if (s < 0) return -1;
  std::uint32_t f = fd_socket;
  if (e && (e->flags.load(std::memory_order_relaxed) & fd_stream)) f |= fd_stream;
  if (flags & SOCK_NONBLOCK)
    f |= fd_user_nb;
  else if (kernel_flags & SOCK_NONBLOCK)
    f |= fd_ours_nb;
  // Linux copies the listener's socket options, its timeouts among them, to the new socket.
  record_new(static_cast<int>(s), f, e ? e->rcv_timeout_ns.load(std::memory_order_relaxed) : 0,
             e ? e->snd_timeout_ns.load(std::memory_order_relaxed) : 0);
  return static_cast<int>(s);
}

int do_connect(int fd, const sockaddr* addr, socklen_t len) noexcept {
  FdEntry* e = classified(fd);
  IoCore* core = waitable(e) ? fiber_core(Call::connect) : nullptr;
  const CallLabel label(core != nullptr, Call::connect);
  const bool emulate = core || (waitable(e) && (e->flags.load(std::memory_order_relaxed) & fd_ours_nb));
  if (!emulate || (core && !make_nonblocking(fd, *e)))
    return static_cast<int>(syscall(SYS_connect, fd, addr, len));
  IoHandle h = attach(fd, *e, core);
  const TimePoint deadline = deadline_in(e->snd_timeout_ns.load(std::memory_order_relaxed));
  for (;;) {
    if (syscall(SYS_connect, fd, addr, len) == 0) return 0;
    const int err = errno;
    int w;
    if (err == EINPROGRESS) {
      w = wait_outcome(
          IoCore::wait(h, Direction::write, deadline,
                       IoTransfer::message().report_signals().reason(skein::debug::WaitReason::connect)),
          deadline);
      if (w == wait_ready) {
        int so_error = 0;
        socklen_t n = sizeof so_error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &n) < 0) return -1;
        if (so_error == 0) return 0;
        errno = so_error;
        return -1;
      }
    } else if (err == EAGAIN) {
      // A Unix socket whose listener's backlog is full: a blocking connect waits for room, and no
      // readiness event says when there is some, so try again shortly.
      const TimePoint soon = std::min(deadline, Clock::now() + std::chrono::milliseconds(2));
      if (core) {
        w = fiber_sleep_until(soon);
      } else {
        const timespec ts{0, 2'000'000};
        syscall(SYS_nanosleep, &ts, nullptr);
        w = 0;
      }
      if (w == 0 && deadline != no_deadline && Clock::now() >= deadline) w = wait_own_deadline;
      if (w == 0) continue;
    } else {
      return -1;
    }
    // An abandoned attempt is aborted, not left to complete behind the caller's back.
    if (interrupting(w)) interrupted(fd);
    // socket(7): a connect that times out fails with EINPROGRESS (it goes on in the background).
    errno = w == wait_own_deadline ? (err == EAGAIN ? EAGAIN : EINPROGRESS) : w;
    return -1;
  }
}

// ---- poll, select, epoll_wait -------------------------------------------------------------

int raw_poll(pollfd* fds, nfds_t n, int timeout_ms) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ms >= 0) {
    ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1'000'000L};
    tsp = &ts;
  }
  return static_cast<int>(syscall(SYS_ppoll, fds, n, tsp, nullptr, 0));
}

struct PollArgs {
  pollfd* fds;
  nfds_t n;
};

int poll_now(void* arg) {
  auto* a = static_cast<PollArgs*>(arg);
  return raw_poll(a->fds, a->n, 0);
}

int do_poll(pollfd* fds, nfds_t n, int timeout_ms) noexcept {
  IoCore* core = fiber_core(Call::poll);
  const CallLabel label(core != nullptr, Call::poll);
  if (!core || timeout_ms == 0) return raw_poll(fds, n, timeout_ms);
  const TimePoint deadline = timeout_ms < 0 ? no_deadline : deadline_in(std::int64_t{timeout_ms} * 1'000'000);
  PollArgs args{fds, n};
  return wait_any(*core, fds, n, deadline, &poll_now, &args);
}

struct SelectArgs {
  int nfds;
  fd_set* sets[3];
  fd_set saved[3];
};

int select_now(void* arg) {
  auto* a = static_cast<SelectArgs*>(arg);
  for (int i = 0; i < 3; ++i)
    if (a->sets[i]) *a->sets[i] = a->saved[i];
  timespec zero{0, 0};
  return static_cast<int>(syscall(SYS_pselect6, a->nfds, a->sets[0], a->sets[1], a->sets[2], &zero, nullptr));
}

int do_select(int nfds, fd_set* r, fd_set* w, fd_set* x, timeval* tv) noexcept {
  IoCore* core = fiber_core(Call::select);
  const CallLabel label(core != nullptr, Call::select);
  const bool now = tv && tv->tv_sec == 0 && tv->tv_usec == 0;
  if (!core || now || nfds < 0 || nfds > FD_SETSIZE ||
      (tv && (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1'000'000))) {
    // The kernel's select, which (on Linux) also writes the time left back to *tv.
    timespec ts{};
    if (tv) ts = {tv->tv_sec, tv->tv_usec * 1000};
    const int n = static_cast<int>(syscall(SYS_pselect6, nfds, r, w, x, tv ? &ts : nullptr, nullptr));
    if (tv && n >= 0) *tv = {ts.tv_sec, ts.tv_nsec / 1000};
    return n;
  }
  SelectArgs args{nfds, {r, w, x}, {}};
  std::vector<pollfd> interest;
  try {
    for (int fd = 0; fd < nfds; ++fd) {
      short events = 0;
      if (r && FD_ISSET(fd, r)) events |= POLLIN;
      if (w && FD_ISSET(fd, w)) events |= POLLOUT;
      if (x && FD_ISSET(fd, x)) events |= POLLPRI;
      if (events) interest.push_back({fd, events, 0});
    }
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return -1;
  }
  for (int i = 0; i < 3; ++i)
    if (args.sets[i]) args.saved[i] = *args.sets[i];
  const TimePoint deadline =
      tv ? deadline_in(std::int64_t{tv->tv_sec} * 1'000'000'000 + std::int64_t{tv->tv_usec} * 1000)
         : no_deadline;
  const int n = wait_any(*core, interest.data(), interest.size(), deadline, &select_now, &args);
  if (tv && n >= 0) {
    const auto left =
        deadline == no_deadline || Clock::now() >= deadline
            ? 0
            : std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
    *tv = {static_cast<time_t>(left / 1'000'000), static_cast<suseconds_t>(left % 1'000'000)};
  }
  return n;
}

struct EpollArgs {
  int epfd;
  epoll_event* events;
  int max;
};

int epoll_now(void* arg) {
  auto* a = static_cast<EpollArgs*>(arg);
  return static_cast<int>(syscall(SYS_epoll_pwait, a->epfd, a->events, a->max, 0, nullptr, 0));
}

// ---- sleeps -------------------------------------------------------------------------------

bool valid(const timespec* ts) noexcept {
  return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1'000'000'000;
}

std::int64_t ns_of(const timespec& ts) noexcept {
  constexpr std::int64_t max_s = INT64_MAX / 1'000'000'000 - 1;
  if (ts.tv_sec > max_s) return INT64_MAX;
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void store_left(timespec* rem, TimePoint deadline) noexcept {
  if (!rem) return;
  const auto now = Clock::now();
  const std::int64_t left =
      deadline <= now ? 0 : std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
  *rem = {static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
}

// A relative sleep in a fiber: 0, or the errno of an early end (with the time left in *rem).
int fiber_sleep(const timespec& req, timespec* rem) noexcept {
  const TimePoint deadline = skein::deadline_after(std::chrono::nanoseconds(ns_of(req)));
  const int err = fiber_sleep_until(deadline);
  if (err) store_left(rem, deadline);
  return err;
}

int do_nanosleep(Call call, const timespec* req, timespec* rem) noexcept {
  if (!fiber_core(call) || !req || !valid(req)) return static_cast<int>(syscall(SYS_nanosleep, req, rem));
  const CallLabel label(true, call);
  const int err = fiber_sleep(*req, rem);
  if (err == 0) return 0;
  errno = err;
  return -1;
}

// A descriptor made by dup shares the open file description, O_NONBLOCK included: it shares
// what the hooks know of it too (but not the driver slot, which is per number).
void copy_fd(int from, int to) noexcept {
  const FdEntry* e = entry(from);
  if (!e) return;
  const std::uint32_t f = e->flags.load(std::memory_order_acquire);
  if (!(f & fd_known)) return;
  record_new(to, f, e->rcv_timeout_ns.load(std::memory_order_relaxed),
             e->snd_timeout_ns.load(std::memory_order_relaxed));
}

int do_fcntl(int fd, int cmd, void* arg) noexcept {
  switch (cmd) {
    case F_GETFL: {
      const int fl = static_cast<int>(syscall(SYS_fcntl, fd, F_GETFL));
      const FdEntry* e = fl >= 0 ? entry(fd) : nullptr;
      // The user sees the flags they set: not the O_NONBLOCK the hooks need.
      if (e && (e->flags.load(std::memory_order_relaxed) & (fd_ours_nb | fd_user_nb)) == fd_ours_nb)
        return fl & ~O_NONBLOCK;
      return fl;
    }
    case F_SETFL: {
      auto fl = static_cast<int>(reinterpret_cast<std::intptr_t>(arg));
      FdEntry* e = classified(fd);
      const bool socket = e && (e->flags.load(std::memory_order_relaxed) & fd_socket);
      if (socket && (e->flags.load(std::memory_order_relaxed) & fd_ours_nb)) fl |= O_NONBLOCK;
      const int r = static_cast<int>(syscall(SYS_fcntl, fd, F_SETFL, fl));
      if (r == 0 && socket) {
        if (reinterpret_cast<std::intptr_t>(arg) & O_NONBLOCK)
          e->flags.fetch_or(fd_user_nb, std::memory_order_relaxed);
        else
          e->flags.fetch_and(~fd_user_nb, std::memory_order_relaxed);
      }
      return r;
    }
    case F_DUPFD:
    case F_DUPFD_CLOEXEC: {
      const int r = static_cast<int>(syscall(SYS_fcntl, fd, cmd, arg));
      if (r >= 0) copy_fd(fd, r);
      return r;
    }
    default:
      return static_cast<int>(syscall(SYS_fcntl, fd, cmd, arg));
  }
}

}  // namespace

// ---- the hooked names ---------------------------------------------------------------------

extern "C" {

ssize_t read(int fd, void* buf, size_t len) {
  return do_read(fd, buf, len);
}

ssize_t __read_chk(int fd, void* buf, size_t len, size_t buflen) {
  if (len > buflen) __chk_fail();
  return do_read(fd, buf, len);
}

ssize_t write(int fd, const void* buf, size_t len) {
  return do_write(fd, buf, len);
}

ssize_t readv(int fd, const struct iovec* iov, int count) {
  return do_iov(Call::readv, fd, iov, count, Direction::read);
}

ssize_t writev(int fd, const struct iovec* iov, int count) {
  return do_iov(Call::writev, fd, iov, count, Direction::write);
}

ssize_t recv(int fd, void* buf, size_t len, int flags) {
  return do_recvfrom(Call::recv, fd, buf, len, flags, nullptr, nullptr);
}

ssize_t __recv_chk(int fd, void* buf, size_t len, size_t buflen, int flags) {
  if (len > buflen) __chk_fail();
  return do_recvfrom(Call::recv, fd, buf, len, flags, nullptr, nullptr);
}

ssize_t recvfrom(int fd, void* buf, size_t len, int flags, struct sockaddr* from, socklen_t* fromlen) {
  return do_recvfrom(Call::recvfrom, fd, buf, len, flags, from, fromlen);
}

ssize_t __recvfrom_chk(int fd, void* buf, size_t len, size_t buflen, int flags, struct sockaddr* from,
                       socklen_t* fromlen) {
  if (len > buflen) __chk_fail();
  return do_recvfrom(Call::recvfrom, fd, buf, len, flags, from, fromlen);
}

ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
  return do_msg(Call::recvmsg, fd, msg, flags, Direction::read);
}

ssize_t send(int fd, const void* buf, size_t len, int flags) {
  return do_sendto(Call::send, fd, buf, len, flags, nullptr, 0);
}

ssize_t sendto(int fd, const void* buf, size_t len, int flags, const struct sockaddr* to, socklen_t tolen) {
  return do_sendto(Call::sendto, fd, buf, len, flags, to, tolen);
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  return do_msg(Call::sendmsg, fd, const_cast<msghdr*>(msg), flags, Direction::write);
}

int accept(int fd, struct sockaddr* addr, socklen_t* addrlen) {
  return do_accept(Call::accept, fd, addr, addrlen, 0);
}

int accept4(int fd, struct sockaddr* addr, socklen_t* addrlen, int flags) {
  return do_accept(Call::accept4, fd, addr, addrlen, flags);
}

int connect(int fd, const struct sockaddr* addr, socklen_t len) {
  return do_connect(fd, addr, len);
}

int close(int fd) {
  reset(fd);
  // Linux frees the descriptor even when close reports EINTR: never retried.
  return static_cast<int>(syscall(SYS_close, fd));
}

int poll(struct pollfd* fds, nfds_t n, int timeout_ms) {
  return do_poll(fds, n, timeout_ms);
}

int __poll_chk(struct pollfd* fds, nfds_t n, int timeout_ms, size_t fdslen) {
  if (fdslen / sizeof *fds < n) __chk_fail();
  return do_poll(fds, n, timeout_ms);
}

int select(int nfds, fd_set* r, fd_set* w, fd_set* x, struct timeval* tv) {
  return do_select(nfds, r, w, x, tv);
}

int epoll_wait(int epfd, struct epoll_event* events, int max, int timeout_ms) {
  IoCore* core = fiber_core(Call::epoll_wait);
  const CallLabel label(core != nullptr, Call::epoll_wait);
  if (!core || timeout_ms == 0)
    return static_cast<int>(syscall(SYS_epoll_pwait, epfd, events, max, timeout_ms, nullptr, 0));
  // An epoll set is itself readable while it has events: wait for that, then collect them.
  EpollArgs args{epfd, events, max};
  const pollfd interest{epfd, POLLIN, 0};
  const TimePoint deadline = timeout_ms < 0 ? no_deadline : deadline_in(std::int64_t{timeout_ms} * 1'000'000);
  return wait_any(*core, &interest, 1, deadline, &epoll_now, &args);
}

unsigned int sleep(unsigned int seconds) {
  timespec req{static_cast<time_t>(seconds), 0};
  timespec rem{0, 0};
  const bool handled = fiber_core(Call::sleep) != nullptr;
  const CallLabel label(handled, Call::sleep);
  if (!handled) {
    if (syscall(SYS_nanosleep, &req, &rem) == 0) return 0;
  } else if (const int err = fiber_sleep(req, &rem); err == 0) {
    return 0;
  } else {
    errno = err;
  }
  // As glibc: the seconds left, rounded to the nearest.
  return static_cast<unsigned int>(rem.tv_sec + (rem.tv_nsec >= 500'000'000));
}

int usleep(useconds_t us) {
  const timespec req{static_cast<time_t>(us / 1'000'000), static_cast<long>(us % 1'000'000) * 1000};
  return do_nanosleep(Call::usleep, &req, nullptr);
}

int nanosleep(const struct timespec* req, struct timespec* rem) {
  return do_nanosleep(Call::nanosleep, req, rem);
}

int clock_nanosleep(clockid_t clock, int flags, const struct timespec* req, struct timespec* rem) {
  const bool absolute = flags & TIMER_ABSTIME;
  if (!fiber_core(Call::clock_nanosleep) || !req || !valid(req) ||
      (clock != CLOCK_MONOTONIC && clock != CLOCK_REALTIME)) {
    // Returns the error, not -1 and errno.
    const long r = syscall(SYS_clock_nanosleep, clock, flags, req, rem);
    return r < 0 ? errno : 0;
  }
  const CallLabel label(true, Call::clock_nanosleep);
  if (!absolute) return fiber_sleep(*req, rem);
  TimePoint deadline;
  if (clock == CLOCK_MONOTONIC) {
    // libstdc++'s steady_clock is CLOCK_MONOTONIC: the same epoch.
    deadline = TimePoint(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(ns_of(*req))));
  } else {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    deadline = skein::deadline_after(std::chrono::nanoseconds(ns_of(*req) - ns_of(now)));
  }
  return fiber_sleep_until(deadline);
}

int __wrap_getaddrinfo(const char* node, const char* service, const struct addrinfo* hints,
                       struct addrinfo** res);

int __wrap_getaddrinfo(const char* node, const char* service, const struct addrinfo* hints,
                       struct addrinfo** res) {
  using Real = int (*)(const char*, const char*, const addrinfo*, addrinfo**);
  Real real = nullptr;
  if (&__real_getaddrinfo)
    real = &__real_getaddrinfo;  // -Wl,--wrap=getaddrinfo: libc's, bound at link time
  else if (skein_hooks_next_getaddrinfo)
    real = reinterpret_cast<Real>(skein_hooks_next_getaddrinfo());
  if (!real) {
    errno = ENOSYS;
    return EAI_SYSTEM;
  }
  if (!fiber_core(Call::getaddrinfo)) return real(node, service, hints, res);
  const CallLabel label(true, Call::getaddrinfo);
  // The resolver may read files and wait on DNS for seconds: off the scheduler thread.
  struct Lookup final : skein::detail::BlockingJob {
    void run() noexcept override {
      result = real(node, service, hints, res);
      err = errno;
      ran = true;
    }
    Real real;
    const char* node;
    const char* service;
    const addrinfo* hints;
    addrinfo** res;
    int result = EAI_SYSTEM;
    int err = 0;
    bool ran = false;
  };
  Lookup job;
  job.real = real;
  job.node = node;
  job.service = service;
  job.hints = hints;
  job.res = res;
  const int e = skein::detail::run_job(job);
  if (e == 0) {
    errno = job.err;
    return job.result;
  }
  // Cancelled, before the call or while it ran: then it finished first, and what it found is
  // freed, since the caller is told it failed.
  if (job.ran && job.result == 0) freeaddrinfo(*res);
  errno = e;
  return EAI_SYSTEM;
}

int socket(int domain, int type, int protocol) noexcept {
  const bool in_fiber = fiber_core(Call::socket) != nullptr;
  const int kernel_type = in_fiber ? type | SOCK_NONBLOCK : type;
  const int fd = static_cast<int>(syscall(SYS_socket, domain, kernel_type, protocol));
  if (fd < 0) return -1;
  std::uint32_t f = fd_socket;
  if ((type & 0xf) == SOCK_STREAM) f |= fd_stream;
  if (type & SOCK_NONBLOCK)
    f |= fd_user_nb;
  else if (in_fiber)
    f |= fd_ours_nb;
  record_new(fd, f);
  return fd;
}

int setsockopt(int fd, int level, int name, const void* value, socklen_t len) noexcept {
  const long r = syscall(SYS_setsockopt, fd, level, name, value, len);
  if (r == 0 && level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO) &&
      len >= sizeof(timeval)) {
    if (FdEntry* e = classified(fd)) {
      const auto* tv = static_cast<const timeval*>(value);
      const std::int64_t ns = std::int64_t{tv->tv_sec} * 1'000'000'000 + std::int64_t{tv->tv_usec} * 1000;
      (name == SO_RCVTIMEO ? e->rcv_timeout_ns : e->snd_timeout_ns)
          .store(ns > 0 ? ns : 0, std::memory_order_relaxed);
    }
  }
  return static_cast<int>(r);
}

int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);  // as glibc reads it: every argument fits a pointer
  va_end(ap);
  return do_fcntl(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return do_fcntl(fd, cmd, arg);
}

int ioctl(int fd, unsigned long request, ...) noexcept {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (request == FIONBIO && arg) {
    FdEntry* e = classified(fd);
    if (e && (e->flags.load(std::memory_order_relaxed) & fd_socket)) {
      const bool on = *static_cast<const int*>(arg) != 0;
      int kernel = on;
      if (e->flags.load(std::memory_order_relaxed) & fd_ours_nb) kernel = 1;  // the hooks need it on
      const long r = syscall(SYS_ioctl, fd, FIONBIO, &kernel);
      if (r == 0) {
        if (on)
          e->flags.fetch_or(fd_user_nb, std::memory_order_relaxed);
        else
          e->flags.fetch_and(~fd_user_nb, std::memory_order_relaxed);
      }
      return static_cast<int>(r);
    }
  }
  return static_cast<int>(syscall(SYS_ioctl, fd, request, arg));
}

int dup(int fd) noexcept {
  const int r = static_cast<int>(syscall(SYS_dup, fd));
  if (r >= 0) copy_fd(fd, r);
  return r;
}

int dup2(int fd, int to) noexcept {
  if (fd == to) return static_cast<int>(syscall(SYS_fcntl, fd, F_GETFD)) < 0 ? -1 : to;
  return dup3(fd, to, 0);
}

int dup3(int fd, int to, int flags) noexcept {
  if (fd != to) reset(to);
  const int r = static_cast<int>(syscall(SYS_dup3, fd, to, flags));
  if (r >= 0) copy_fd(fd, r);
  return r;
}

}  // extern "C"

namespace skein::hooks::detail {

// By Call. getaddrinfo's own definition is hooks_dynamic.cpp's, which checks it itself.
extern void* const hook_addresses[call_count];
void* const hook_addresses[call_count] = {
    reinterpret_cast<void*>(&::read),
    reinterpret_cast<void*>(&::write),
    reinterpret_cast<void*>(&::readv),
    reinterpret_cast<void*>(&::writev),
    reinterpret_cast<void*>(&::recv),
    reinterpret_cast<void*>(&::recvfrom),
    reinterpret_cast<void*>(&::recvmsg),
    reinterpret_cast<void*>(&::send),
    reinterpret_cast<void*>(&::sendto),
    reinterpret_cast<void*>(&::sendmsg),
    reinterpret_cast<void*>(&::accept),
    reinterpret_cast<void*>(&::accept4),
    reinterpret_cast<void*>(&::connect),
    reinterpret_cast<void*>(&::close),
    reinterpret_cast<void*>(&::poll),
    reinterpret_cast<void*>(&::select),
    reinterpret_cast<void*>(&::epoll_wait),
    reinterpret_cast<void*>(&::sleep),
    reinterpret_cast<void*>(&::usleep),
    reinterpret_cast<void*>(&::nanosleep),
    reinterpret_cast<void*>(&::clock_nanosleep),
    nullptr,
    reinterpret_cast<void*>(&::socket),
    reinterpret_cast<void*>(&::fcntl),
    reinterpret_cast<void*>(&::ioctl),
    reinterpret_cast<void*>(&::setsockopt),
    reinterpret_cast<void*>(&::dup),
    reinterpret_cast<void*>(&::dup2),
    reinterpret_cast<void*>(&::dup3),
};

}  // namespace skein::hooks::detail
