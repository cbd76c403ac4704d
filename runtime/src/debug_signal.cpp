// Dump on a signal. A handler may call only async-signal-safe functions, and dump() allocates,
// locks and waits for every worker: so the handler writes one byte to a pipe and returns, and a
// plain thread that blocks every signal reads the pipe and does the work.
//
// The state is process-wide and reference counted per signal. The pipe belongs to one run of the
// thread: it is created when the first signal is held and closed when the last one is released,
// after every handler has left it (handlers_inside), so a handler never writes to a number that
// was closed and reused meanwhile.
#include "debug_signal.hpp"

#include "scheduler.hpp"

#include <skein/debug.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <iostream>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace skein::detail {

namespace {

std::atomic<int> write_end{-1};            // the pipe the handler writes to; -1 once stopping
std::atomic<unsigned> handlers_inside{0};  // handlers between loading write_end and writing
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<unsigned>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

void on_dump_signal(int sig) {
  const int saved = errno;
  // seq_cst on both sides (here and in stop_thread): a store then a load of the other flag, which
  // weaker orders would let both sides miss.
  handlers_inside.fetch_add(1, std::memory_order_seq_cst);
  const int fd = write_end.load(std::memory_order_seq_cst);
  if (fd >= 0) {
    const auto byte = static_cast<unsigned char>(sig);
    // Non-blocking: with the pipe full, a dump is pending anyway.
    [[maybe_unused]] const ssize_t n = ::write(fd, &byte, 1);
  }
  handlers_inside.fetch_sub(1, std::memory_order_seq_cst);
  errno = saved;
}

// Reads the pipe until its write end is closed; one dump per batch of signals read at once.
void dumper_main(int read_end) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    unsigned char bytes[64];
    const ssize_t n = ::read(read_end, bytes, sizeof bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    try {
      skein::debug::dump(std::cerr);
      std::cerr.flush();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "skein: dump on signal %d failed: %s\n", bytes[n - 1], e.what());
    }
  }
  ::close(read_end);
}

struct Held {
  unsigned count = 0;
  struct sigaction previous {};
};

struct DumpSignals {
  std::mutex mutex;
  Held held[NSIG];
  unsigned total = 0;  // holds of all signals
  std::thread thread;
};

DumpSignals& dump_signals() {
  static auto* state = new DumpSignals;  // never destroyed: a runtime may end during exit
  return *state;
}

[[noreturn]] void fail(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), "skein: RuntimeOptions::dump_signal: " + what);
}

// Closes the pipe once no handler is inside it, then lets the thread go: joined, unless the
// caller is a worker, which the thread may be waiting on in dump() (it then ends by itself).
void stop_thread(DumpSignals& s) noexcept {
  const int fd = write_end.exchange(-1, std::memory_order_seq_cst);
  while (handlers_inside.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  ::close(fd);
  if (Scheduler::current())
    s.thread.detach();
  else
    s.thread.join();
}

}  // namespace

void hold_dump_signal(int sig) {
  if (sig == 0) return;
  if (sig < 1 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP || sig == SIGSEGV || sig == SIGBUS ||
      sig == SIGFPE || sig == SIGILL || sig == debug_signal())
    fail(EINVAL, "signal " + std::to_string(sig) + " cannot be used");
  DumpSignals& s = dump_signals();
  std::lock_guard lock(s.mutex);
  if (s.total == 0) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) fail(errno, "pipe");
    ::fcntl(fds[1], F_SETFL, O_NONBLOCK);
    try {
      s.thread = std::thread(dumper_main, fds[0]);
    } catch (...) {
      ::close(fds[0]);
      ::close(fds[1]);
      throw;
    }
    write_end.store(fds[1], std::memory_order_release);
  }
  Held& h = s.held[sig];
  if (h.count == 0) {
    struct sigaction action {};
    action.sa_handler = on_dump_signal;
    sigemptyset(&action.sa_mask);
    // SA_ONSTACK: the handler may interrupt a fiber near its guard page; workers have an
    // alternate signal stack.
    action.sa_flags = SA_RESTART | SA_ONSTACK;
    if (::sigaction(sig, &action, &h.previous) != 0) {
      const int err = errno;
      if (s.total == 0) stop_thread(s);
      fail(err, "sigaction");
    }
  }
  ++h.count;
  ++s.total;
}

void release_dump_signal(int sig) noexcept {
  if (sig == 0) return;
  DumpSignals& s = dump_signals();
  std::lock_guard lock(s.mutex);
  Held& h = s.held[sig];
  if (--h.count == 0) ::sigaction(sig, &h.previous, nullptr);
  if (--s.total == 0) stop_thread(s);
}

}  // namespace skein::detail
