// Fiber stacks: mapping, guard pages, the per-thread pool, and the stack-overflow report.
#include "switch.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/stack.hpp>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#endif

#if defined(SKEIN_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace skein {

namespace {

// Linux 6.13+: guard pages as page-table markers, not a VMA of their own. Not yet in glibc 2.36.
constexpr int kMadvGuardInstall = 102;

// A pool keeps at most this many bytes of free stacks per thread; the rest go back to the kernel.
constexpr std::size_t kMaxCachedBytes = 64u << 20;

std::atomic<GuardMode> g_requested_mode{GuardMode::automatic};
std::atomic<int> g_madvise_works{-1};  // -1: not probed yet

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// True if MADV_GUARD_INSTALL is accepted *and* honoured: some emulators (qemu-user) accept
// unknown advice without acting on it, so the probe checks that the kernel now refuses to read the
// guarded page (write(2) from it fails with EFAULT).
bool probe_madvise_guard() noexcept {
  const std::size_t page = page_size();
  void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  bool ok = madvise(p, page, kMadvGuardInstall) == 0;
  int fds[2];
  if (ok && pipe(fds) == 0) {
    ok = write(fds[1], p, 1) < 0 && errno == EFAULT;
    close(fds[0]);
    close(fds[1]);
  }
  munmap(p, 2 * page);
  return ok;
}

bool madvise_works() noexcept {
  int v = g_madvise_works.load(std::memory_order_relaxed);
  if (v < 0) {
    v = probe_madvise_guard() ? 1 : 0;
    g_madvise_works.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

// ---- stack overflow report ----------------------------------------------------------------

struct sigaction g_previous_segv;
std::size_t g_guard_bytes = 0;  // read by the signal handler; set before it is installed

// Async-signal-safe formatting into a fixed buffer.
struct Line {
  char buf[512];
  std::size_t len = 0;
  void put(const char* s) noexcept {
    while (*s && len < sizeof buf) buf[len++] = *s++;
  }
  void put(std::uint64_t v, int base = 10) noexcept {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = "0123456789abcdef"[v % static_cast<unsigned>(base)];
      v /= static_cast<unsigned>(base);
    } while (v);
    while (n && len < sizeof buf) buf[len++] = digits[--n];
  }
};

void describe_fiber(Line& line, const detail::Fiber& f) noexcept {
  line.put("fiber #");
  line.put(f.id);
  line.put(" \"");
  line.put(f.name.c_str());
  line.put("\"");
}

void on_segv(int sig, siginfo_t* info, void* uctx) {
  const char* addr = static_cast<const char*>(info->si_addr);
  // During a switch the CPU is still on the context being left after tl_running names the next.
  const detail::ExecContext* c = nullptr;
  if (info->si_code > 0) {  // a fault, not a signal someone sent
    for (const detail::ExecContext* candidate : {detail::tl_running, detail::tl_leaving}) {
      if (candidate && candidate->kind != detail::ContextKind::thread && candidate->stack &&
          addr < candidate->stack.lo && addr >= candidate->stack.lo - g_guard_bytes)
        c = candidate;
    }
  }
  if (c) {
    Line line;
    line.put("skein: stack overflow in ");
    if (c->kind == detail::ContextKind::fiber) {
      describe_fiber(line, static_cast<const detail::Fiber&>(*c));
    } else {
      line.put("a coroutine");
      if (const detail::Fiber* f = detail::current_fiber()) {
        line.put(" resumed by ");
        describe_fiber(line, *f);
      }
    }
    line.put(" (stack ");
    line.put(c->stack.size / 1024);
    line.put(" KiB, fault at 0x");
    line.put(reinterpret_cast<std::uintptr_t>(addr), 16);
    line.put("); aborting\n");
    [[maybe_unused]] ssize_t n = write(STDERR_FILENO, line.buf, line.len);
    std::abort();
  }
  // Not a fiber's guard page: hand the fault to whoever handled SIGSEGV before us.
  if ((g_previous_segv.sa_flags & SA_SIGINFO) && g_previous_segv.sa_sigaction) {
    g_previous_segv.sa_sigaction(sig, info, uctx);
  } else if (g_previous_segv.sa_handler != SIG_DFL && g_previous_segv.sa_handler != SIG_IGN) {
    g_previous_segv.sa_handler(sig);
  } else {
    signal(SIGSEGV, SIG_DFL);
    // A fault repeats on return and takes the default action; a sent signal must be raised again.
    if (info->si_code <= 0) raise(SIGSEGV);
  }
}

void install_overflow_handler() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    g_guard_bytes = page_size();
    struct sigaction sa {};
    sa.sa_sigaction = &on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_previous_segv);
  });
}

// ---- per-thread pool ----------------------------------------------------------------------

detail::Stack map_stack(std::size_t usable) {
  const std::size_t page = page_size();
  const std::size_t total = usable + page;
  void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (base == MAP_FAILED)
    throw std::system_error(errno, std::generic_category(), "skein: mapping a fiber stack");
  const GuardMode mode = effective_guard_mode();
  const int rc =
      mode == GuardMode::madvise ? madvise(base, page, kMadvGuardInstall) : mprotect(base, page, PROT_NONE);
  if (rc != 0) {
    const int err = errno;
    munmap(base, total);
    throw std::system_error(err, std::generic_category(), "skein: installing a stack guard page");
  }
  detail::Stack s{static_cast<char*>(base) + page, usable, 0};
#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
  s.valgrind_id = VALGRIND_STACK_REGISTER(s.lo, s.hi());
#endif
  return s;
}

void unmap_stack(detail::Stack s) noexcept {
#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
  VALGRIND_STACK_DEREGISTER(s.valgrind_id);
#endif
  const std::size_t page = page_size();
  munmap(s.lo - page, s.size + page);
}

// Each thread that runs fibers gets an alternate signal stack, so a guard-page fault (which
// leaves no usable stack) can still run the overflow report.
class AltStack {
 public:
  void ensure() noexcept {
    if (mem_) return;
    stack_t current{};
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;  // someone else's
    std::size_t size = std::size_t{64} * 1024;
    const long min = sysconf(_SC_SIGSTKSZ);
    if (min > 0 && static_cast<std::size_t>(min) > size) size = static_cast<std::size_t>(min);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    stack_t ss{};
    ss.ss_sp = p;
    ss.ss_size = size;
    if (sigaltstack(&ss, nullptr) != 0) {
      munmap(p, size);
      return;
    }
    mem_ = p;
    size_ = size;
  }
  ~AltStack() {
    if (!mem_) return;
    stack_t current{};
    if (sigaltstack(nullptr, &current) == 0 && current.ss_sp == mem_) {
      stack_t off{};
      off.ss_flags = SS_DISABLE;
      sigaltstack(&off, nullptr);
    }
    munmap(mem_, size_);
  }

 private:
  void* mem_ = nullptr;
  std::size_t size_ = 0;
};

class StackPool {
 public:
  // The overflow report needs the handler and, on this thread, an alternate signal stack.
  void prepare() {
    if (ready_) [[likely]]
      return;
    install_overflow_handler();
    altstack_.ensure();
    ready_ = true;
  }

  detail::Stack acquire(std::size_t usable) {
    prepare();
    for (std::size_t i = free_.size(); i-- > 0;) {
      if (free_[i].size != usable) continue;
      detail::Stack s = free_[i];
      free_[i] = free_.back();
      free_.pop_back();
      cached_bytes_ -= s.size;
#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
      // Valgrind marked the previous owner's frames inaccessible as they returned (the stack
      // pointer moved up over them); for the next owner they are fresh, uninitialised stack.
      VALGRIND_MAKE_MEM_UNDEFINED(s.lo, s.size);
#endif
#if defined(SKEIN_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(s.lo, s.size);  // frames of the previous owner may be poisoned
#endif
      return s;
    }
    return map_stack(usable);
  }

  void release(detail::Stack s) noexcept {
    if (cached_bytes_ + s.size > kMaxCachedBytes) {
      unmap_stack(s);
      return;
    }
    try {
      free_.push_back(s);
      cached_bytes_ += s.size;
    } catch (...) {
      unmap_stack(s);
    }
  }

  ~StackPool();

 private:
  std::vector<detail::Stack> free_;  // most recently released last: the warmest stack goes first
  std::size_t cached_bytes_ = 0;
  bool ready_ = false;
  AltStack altstack_;
};

thread_local StackPool tl_pool;
// Set once the thread's pool is destroyed: a stack released later (a Task destroyed during static
// destruction, after the pool) goes straight back to the kernel.
constinit thread_local bool tl_pool_gone = false;

StackPool::~StackPool() {
  tl_pool_gone = true;
  for (const detail::Stack& s : free_) unmap_stack(s);
}

}  // namespace

void set_guard_mode(GuardMode mode) noexcept {
  g_requested_mode.store(mode, std::memory_order_relaxed);
}

GuardMode effective_guard_mode() noexcept {
  const GuardMode m = g_requested_mode.load(std::memory_order_relaxed);
  if (m != GuardMode::automatic) return m;
  return madvise_works() ? GuardMode::madvise : GuardMode::mprotect;
}

namespace detail {

Stack acquire_stack(std::size_t size) {
  const std::size_t page = page_size();
  if (size < min_stack_size) size = min_stack_size;
  if (size > (std::size_t{1} << 40))
    throw std::system_error(std::make_error_code(std::errc::invalid_argument), "skein: stack size too large");
  return tl_pool.acquire((size + page - 1) & ~(page - 1));
}

void prepare_fiber_thread() {
  tl_pool.prepare();
}

void release_stack(Stack stack) noexcept {
  if (tl_pool_gone)
    unmap_stack(stack);
  else
    tl_pool.release(stack);
}

}  // namespace detail

}  // namespace skein
