// The registry of hooked calls, the descriptor table and the waits the hook definitions share.
#include "hooks_internal.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/hooks.hpp>
#include <skein/net_error.hpp>

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <system_error>

// Defined by hooks_dynamic.cpp, which only dynamically linked programs carry (skein_hooks_dep):
// where `name` resolves for shared libraries (1: the hook, 0: elsewhere).
extern "C" int skein_hooks_resolves_to_hook(const char* name, void* hook) __attribute__((weak));
// Only present when the program is linked with -Wl,--wrap=getaddrinfo (skein_hooks_static_dep).
extern "C" int __real_getaddrinfo(const char*, const char*, const struct addrinfo*, struct addrinfo**)
    __attribute__((weak));

namespace skein::hooks::detail {

// The addresses of the hook definitions, by Call, for is_hooked(); set in hooks_calls.cpp.
extern void* const hook_addresses[call_count];

const char* const call_names[call_count] = {
    "read",        "write",  "readv",      "writev", "recv",       "recvfrom",  "recvmsg",
    "send",        "sendto", "sendmsg",    "accept", "accept4",    "connect",   "close",
    "poll",        "select", "epoll_wait", "sleep",  "usleep",     "nanosleep", "clock_nanosleep",
    "getaddrinfo", "socket", "fcntl",      "ioctl",  "setsockopt", "dup",       "dup2",
    "dup3",
};

namespace {

// SKEIN_HOOKS_DISABLE=name,name,... (or "all"), read once on the first hooked call. getenv calls
// nothing hooked, so this is safe from inside any hook.
constinit std::atomic<std::uint64_t> disabled_mask{0};
constinit std::atomic<bool> env_read{false};
constinit thread_local unsigned tl_bypass = 0;
// SKEIN_HOOKS_KEEP_INTERRUPTED: 0 unread, 1 unset (interrupted connections are shut down), 2 set.
constinit std::atomic<int> keep_env{0};

bool keep_all_interrupted() noexcept {
  int k = keep_env.load(std::memory_order_acquire);
  if (k == 0) {
    const char* env = std::getenv("SKEIN_HOOKS_KEEP_INTERRUPTED");
    k = env && *env && std::strcmp(env, "0") != 0 ? 2 : 1;
    keep_env.store(k, std::memory_order_release);
  }
  return k == 2;
}

std::uint64_t disabled() noexcept {
  if (!env_read.load(std::memory_order_acquire)) {
    std::uint64_t mask = 0;
    if (const char* env = std::getenv("SKEIN_HOOKS_DISABLE")) {
      const char* p = env;
      while (*p) {
        const char* end = std::strchr(p, ',');
        const std::size_t len = end ? static_cast<std::size_t>(end - p) : std::strlen(p);
        if (len == 3 && std::strncmp(p, "all", 3) == 0) mask = ~std::uint64_t{0};
        for (unsigned i = 0; i < call_count; ++i)
          if (std::strlen(call_names[i]) == len && std::strncmp(call_names[i], p, len) == 0)
            mask |= std::uint64_t{1} << i;
        p += len;
        if (*p == ',') ++p;
      }
    }
    disabled_mask.store(mask, std::memory_order_relaxed);
    env_read.store(true, std::memory_order_release);
  }
  return disabled_mask.load(std::memory_order_relaxed);
}

bool call_on(Call c) noexcept {
  return !(disabled() & (std::uint64_t{1} << static_cast<unsigned>(c)));
}

// fd -> entry, in chunks allocated on first use and never freed (descriptors are reused).
constexpr std::size_t chunk_size = 1024;
constexpr std::size_t chunk_count = 1024;  // fds up to 1,048,575; beyond fall through to libc
constinit std::atomic<FdEntry*> chunks[chunk_count] = {};

int raw_fcntl(int fd, int cmd, long arg = 0) noexcept {
  return static_cast<int>(syscall(SYS_fcntl, fd, cmd, arg));
}

std::int64_t timeout_ns(int fd, int opt) noexcept {
  timeval tv{};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, opt, &tv, &len) < 0) return 0;
  return std::int64_t{tv.tv_sec} * 1'000'000'000 + std::int64_t{tv.tv_usec} * 1'000;
}

}  // namespace

IoCore* fiber_core(Call c) noexcept {
  if (tl_bypass || !call_on(c)) return nullptr;
  return IoCore::current();
}

FdEntry* entry(int fd) noexcept {
  if (fd < 0) return nullptr;
  const auto i = static_cast<std::size_t>(fd);
  if (i / chunk_size >= chunk_count) return nullptr;
  std::atomic<FdEntry*>& slot = chunks[i / chunk_size];
  FdEntry* chunk = slot.load(std::memory_order_acquire);
  if (!chunk) {
    FdEntry* fresh = new (std::nothrow) FdEntry[chunk_size];
    if (!fresh) return nullptr;
    if (slot.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel))
      chunk = fresh;
    else
      delete[] fresh;  // another thread won; `chunk` is its
  }
  return &chunk[i % chunk_size];
}

FdEntry* classified(int fd) noexcept {
  FdEntry* e = entry(fd);
  if (!e) return nullptr;
  if (e->flags.load(std::memory_order_acquire) & fd_known) return e;
  struct stat sb;
  if (fstat(fd, &sb) < 0) return nullptr;
  std::uint32_t flags = fd_known;
  if (S_ISSOCK(sb.st_mode)) {
    flags |= fd_socket;
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM) flags |= fd_stream;
    const int fl = raw_fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) flags |= fd_user_nb;
    e->rcv_timeout_ns.store(timeout_ns(fd, SO_RCVTIMEO), std::memory_order_relaxed);
    e->snd_timeout_ns.store(timeout_ns(fd, SO_SNDTIMEO), std::memory_order_relaxed);
  }
  e->flags.store(flags, std::memory_order_release);
  return e;
}

void record_new(int fd, std::uint32_t flags, std::int64_t rcv_ns, std::int64_t snd_ns) noexcept {
  FdEntry* e = entry(fd);
  if (!e) return;
  // A core's slot for this number belongs to a descriptor closed behind the hooks' back.
  e->core.store(nullptr, std::memory_order_relaxed);
  e->rcv_timeout_ns.store(rcv_ns, std::memory_order_relaxed);
  e->snd_timeout_ns.store(snd_ns, std::memory_order_relaxed);
  e->flags.store(flags | fd_known, std::memory_order_release);
}

void reset(int fd) noexcept {
  FdEntry* e = entry(fd);
  if (!e) return;
  // Cleared before the kernel frees the number, so a descriptor that gets it next is classified
  // afresh rather than inheriting this one's state.
  void* core = e->core.exchange(nullptr, std::memory_order_relaxed);
  e->flags.store(0, std::memory_order_release);
  // Another worker's core is not ours to touch: its slot is reset when next attached there.
  if (core && core == IoCore::installed()) static_cast<IoCore*>(core)->forget(fd);
}

bool make_nonblocking(int fd, FdEntry& e) noexcept {
  if (e.flags.load(std::memory_order_relaxed) & fd_ours_nb) return true;
  const int fl = raw_fcntl(fd, F_GETFL);
  if (fl < 0) return false;
  if (!(fl & O_NONBLOCK) && raw_fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return false;
  e.flags.fetch_or(fd_ours_nb, std::memory_order_relaxed);
  return true;
}

IoHandle attach(int fd, FdEntry& e, IoCore* core) noexcept {
  if (!core) return IoHandle{fd};
  if (e.core.load(std::memory_order_relaxed) != core) {
    core->forget(fd);
    e.core.store(core, std::memory_order_relaxed);
  }
  return core->handle(fd);
}

bool interrupted(int fd) noexcept {
  if (keep_all_interrupted()) return false;
  const int saved = errno;
  FdEntry* e = classified(fd);
  const std::uint32_t f = e ? e->flags.load(std::memory_order_acquire) : 0;
  bool cut = false;
  int type = 0, listening = 0;
  socklen_t len = sizeof type;
  if ((f & fd_socket) && !(f & fd_keep) && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
      (type == SOCK_STREAM || type == SOCK_SEQPACKET)) {
    len = sizeof listening;
    // shutdown(2) on a listener would stop it listening: it has no request to be cut in half.
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && !listening &&
        shutdown(fd, SHUT_RDWR) == 0) {
      cut = true;
      // What arrived before the shutdown is a reply the caller gave up on: drop it, or the next
      // read would still return it ahead of the end of the stream. Nothing queues after this
      // point (TCP answers later data with a reset, a Unix peer's send fails with EPIPE).
      char sink[2048];
      for (int i = 0; i < 100'000; ++i)
        if (syscall(SYS_recvfrom, fd, sink, sizeof sink, MSG_DONTWAIT, nullptr, nullptr) <= 0) break;
    }
  }
  errno = saved;
  return cut;
}

TimePoint deadline_in(std::int64_t ns) noexcept {
  if (ns <= 0) return no_deadline;
  return deadline_after(std::chrono::nanoseconds(ns));
}

namespace {

std::uint32_t epoll_events(short poll_events) noexcept {
  std::uint32_t events = 0;
  if (poll_events & (POLLIN | POLLRDNORM | POLLRDBAND)) events |= EPOLLIN;
  if (poll_events & (POLLOUT | POLLWRNORM | POLLWRBAND)) events |= EPOLLOUT;
  if (poll_events & POLLPRI) events |= EPOLLPRI;
  if (poll_events & POLLRDHUP) events |= EPOLLRDHUP;
  return events;
}

}  // namespace

int wait_outcome(int err, TimePoint deadline) noexcept {
  using namespace skein::detail;
  switch (err) {
    case 0:
      return wait_ready;
    case io_timed_out:
      return wait_own_deadline;
    case io_expired:
      return ETIMEDOUT;
    case io_cancelled:
      return ECANCELED;
    case io_closed:
      return EBADF;
    case io_busy: {
      const TimePoint soon = std::min(deadline, Clock::now() + std::chrono::milliseconds(1));
      // Another fiber waits on this fd in the same direction: retry shortly, labelled as the call.
      const Fiber* self = current_fiber();
      const Wake w = park(WaitFor{skein::debug::WaitReason::hooked_call,
                                  reinterpret_cast<std::uintptr_t>(self ? self->hooked_call : nullptr)},
                          soon);
      if (w == Wake::cancelled) return ECANCELED;
      if (Clock::now() >= soon) return deadline == soon ? wait_own_deadline : wait_ready;
      if (w == Wake::notified) return wait_ready;
      return w == Wake::timed_out && deadline != no_deadline && Clock::now() >= deadline ? wait_own_deadline
                                                                                         : ETIMEDOUT;
    }
    default:
      return err;
  }
}

int fiber_sleep_until(TimePoint deadline) noexcept {
  for (;;) {
    const skein::detail::Wake w = skein::detail::park({skein::debug::WaitReason::sleep, 0}, deadline);
    if (w == skein::detail::Wake::cancelled) return ECANCELED;
    if (Clock::now() >= deadline) return 0;
    if (w != skein::detail::Wake::notified) return ETIMEDOUT;
    // notified: a stray wake (nothing else knows this fiber sleeps); sleep on.
  }
}

int wait_any(IoCore& core, const pollfd* fds, std::size_t n, TimePoint deadline, int (*check)(void*),
             void* arg) noexcept {
  const int first = check(arg);
  if (first != 0) return first;
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    errno = ENOMEM;
    return -1;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (fds[i].fd < 0) continue;
    epoll_event ev{};
    ev.events = epoll_events(fds[i].events);  // level-triggered: readable while one is ready
    ev.data.u64 = i;
    // EPERM: a regular file or the like, which poll reports ready at once (check() saw it), so
    // leaving it out loses nothing; EBADF: check() reported it as POLLNVAL already.
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i].fd, &ev) < 0 && errno == EEXIST) {
      // The same fd twice: the set watches the union of what both ask for.
      for (std::size_t j = 0; j < i; ++j)
        if (fds[j].fd == fds[i].fd) ev.events |= epoll_events(fds[j].events);
      epoll_ctl(ep, EPOLL_CTL_MOD, fds[i].fd, &ev);
    }
  }
  // The number may have been another descriptor's, whose slot the core still remembers.
  core.forget(ep);
  IoHandle h = core.handle(ep);
  // The set is readable while one of the descriptors has an event: the core's loop waits for
  // that, with check() as the call (nothing ready counts as EAGAIN). It was just tried.
  bool checked = true;
  const auto attempt = [&]() -> ssize_t {
    const int ready = checked ? 0 : check(arg);
    checked = false;
    if (ready == 0) errno = EAGAIN;
    return ready == 0 ? -1 : ready;
  };
  int result;
  for (;;) {
    const ssize_t r = IoCore::run(h, Direction::read, deadline, IoTransfer::message(), attempt);
    if (r >= 0) {
      result = static_cast<int>(r);
      break;
    }
    const int w = wait_outcome(static_cast<int>(-r), deadline);
    if (w == wait_ready) continue;
    if (w == wait_own_deadline) {
      result = check(arg);  // what is ready at the deadline counts, as the kernel's poll does
      break;
    }
    // Every descriptor the fiber was waiting on is abandoned mid-exchange, whichever one the
    // caller's request was on. If connections were cut, the call reports what the kernel now
    // does (they hung up): a library's own handling of a closed connection runs, where a failed
    // poll may pass for "nothing ready" (libmemcached reports a cache miss).
    if (interrupting(w)) {
      // What was ready before the fiber was resumed counts: the caller's wait had ended.
      if ((result = check(arg)) != 0) break;
      bool cut = false;
      for (std::size_t i = 0; i < n; ++i) {
        // Only a descriptor the set still watches: one another fiber closed meanwhile left the
        // set, and its number may now be an unrelated connection (EPOLL_CTL_MOD: ENOENT).
        epoll_event ev{};
        ev.events = epoll_events(fds[i].events);
        ev.data.u64 = i;
        if (fds[i].fd >= 0 && epoll_ctl(ep, EPOLL_CTL_MOD, fds[i].fd, &ev) == 0)
          cut = interrupted(fds[i].fd) || cut;
      }
      if (cut && (result = check(arg)) > 0) break;
    }
    errno = w;
    result = -1;
    break;
  }
  const int saved = errno;
  core.forget(ep);
  syscall(SYS_close, ep);
  errno = saved;
  return result;
}

}  // namespace skein::hooks::detail

namespace skein::hooks {

using detail::call_count;
using detail::call_names;

namespace {

bool resolves_to_hook(unsigned i) noexcept {
  if (i == static_cast<unsigned>(detail::Call::getaddrinfo) && &__real_getaddrinfo) return true;  // --wrap
  // A static program without hooks_dynamic.cpp binds every reference at link time, to the hooks.
  if (!skein_hooks_resolves_to_hook) return i != static_cast<unsigned>(detail::Call::getaddrinfo);
  return skein_hooks_resolves_to_hook(call_names[i], detail::hook_addresses[i]) == 1;
}

}  // namespace

std::vector<std::string_view> hooked_calls() {
  std::vector<std::string_view> out;
  const std::uint64_t off = detail::disabled();
  for (unsigned i = 0; i < call_count; ++i)
    if (!(off & (std::uint64_t{1} << i)) && resolves_to_hook(i)) out.emplace_back(call_names[i]);
  return out;
}

bool is_hooked(std::string_view call) noexcept {
  const std::uint64_t off = detail::disabled();
  for (unsigned i = 0; i < call_count; ++i)
    if (call == call_names[i]) return !(off & (std::uint64_t{1} << i)) && resolves_to_hook(i);
  return false;
}

std::string describe() {
  std::string line = "skein hooks:";
  std::string off;
  for (unsigned i = 0; i < call_count; ++i) {
    const bool on = is_hooked(call_names[i]);
    (on ? line : off) += ' ';
    (on ? line : off) += call_names[i];
  }
  if (!off.empty()) line += " (off:" + off + ")";
  if (detail::keep_all_interrupted()) line += " (interrupted connections kept)";
  return line;
}

void keep_after_interrupt(int fd, bool keep) noexcept {
  detail::FdEntry* e = detail::classified(fd);
  if (!e || !(e->flags.load(std::memory_order_acquire) & detail::fd_socket)) return;
  if (keep)
    e->flags.fetch_or(detail::fd_keep, std::memory_order_relaxed);
  else
    e->flags.fetch_and(~std::uint32_t{detail::fd_keep}, std::memory_order_relaxed);
}

Bypass::Bypass() noexcept {
  ++detail::tl_bypass;
}

Bypass::~Bypass() {
  --detail::tl_bypass;
}

}  // namespace skein::hooks
