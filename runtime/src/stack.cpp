// Fiber stacks: slabs of guarded slots, the per-thread caches over shared free lists, trimming,
// and the stack-overflow report.
#include "switch.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/stack.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
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

// ---- advice over many ranges ------------------------------------------------------------------

// process_madvise(2) on this process takes any advice since Linux 6.13: up to 1024 ranges per
// system call instead of one. -1: not tried yet, 0: unavailable (older kernel, qemu-user).
std::atomic<int> g_self_pidfd{-1};

int self_pidfd() noexcept {
  // A forked child inherits the parent's pidfd, which names the parent: it must not be used.
  static const pid_t opener = getpid();
  if (getpid() != opener) return -2;
  int fd = g_self_pidfd.load(std::memory_order_acquire);
  if (fd != -1) return fd;
#if defined(SYS_pidfd_open) && defined(SYS_process_madvise)
  int opened = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (opened < 0) opened = -2;
#else
  int opened = -2;
#endif
  int expected = -1;
  if (!g_self_pidfd.compare_exchange_strong(expected, opened, std::memory_order_acq_rel)) {
    if (opened >= 0) close(opened);
    return expected;
  }
  return opened;
}

// Applies `advice` to each range; false (errno set) if the kernel refused one.
bool advise_ranges(iovec* ranges, std::size_t n, int advice) noexcept {
  std::size_t done = 0;
#if defined(SYS_process_madvise)
#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
  // Valgrind knows neither pidfd_open nor process_madvise (and warns about each).
  static std::atomic<bool> batched_works{!RUNNING_ON_VALGRIND};
#else
  static std::atomic<bool> batched_works{true};
#endif
  // Only where MADV_GUARD_INSTALL is honoured (6.13+, which also lets a process advise itself
  // through process_madvise): an emulator that accepts advice without acting on it might not
  // translate the ranges either.
  if (n > 1 && batched_works.load(std::memory_order_relaxed) && madvise_works()) {
    if (const int fd = self_pidfd(); fd >= 0) {
      while (done < n) {
        const std::size_t k = std::min<std::size_t>(n - done, 1024);  // UIO_MAXIOV
        std::size_t bytes = 0;
        for (std::size_t i = done; i < done + k; ++i) bytes += ranges[i].iov_len;
        const long rc = syscall(SYS_process_madvise, fd, ranges + done, k, advice, 0u);
        if (rc < 0 || static_cast<std::size_t>(rc) != bytes) {
          // Unsupported here (or partial): plain madvise for the rest (every advice used is
          // idempotent, so ranges the call may have covered are harmless to repeat).
          if (rc < 0 && (errno == EINVAL || errno == ENOSYS || errno == EPERM))
            batched_works.store(false, std::memory_order_relaxed);
          break;
        }
        done += k;
      }
    }
  }
#endif
  for (; done < n; ++done)
    if (madvise(ranges[done].iov_base, ranges[done].iov_len, advice) != 0) return false;
  return true;
}

// ---- slabs --------------------------------------------------------------------------------
//
// Stacks of the default size are slots carved from large MAP_NORESERVE reservations (slabs):
//
//   slab:  | guard | stack (64 KiB) | guard | stack | guard | stack | ...   (uncarved tail) |
//
// A slot's guard is installed once, when the slot is carved, and stays for the life of the
// process: a stack is never unmapped, it goes back to a free list, and past a high-water mark its
// pages go back to the kernel with MADV_DONTNEED (guard markers and PROT_NONE survive that). So
// a spawn costs no mmap, no guard install and no munmap; only the first touch of each page.
// Each guard mode has its own slabs, so that a slot's guard is always of the mode it says.

constexpr std::size_t kSlabFirstSlots = 64;   // ~4 MiB; a small program reserves little
constexpr std::size_t kSlabMaxSlots = 16384;  // ~1.1 GiB of address space per slab, at most
constexpr std::size_t kCarveBatch = 64;       // slots carved (guards installed) per lock
constexpr std::size_t kLocalMax = 256;        // free slots a thread keeps before sharing half
constexpr std::size_t kRefillBatch = 64;      // slots a thread takes from the shared list at once
constexpr std::size_t kTrimFloor = 1024;      // free slots (64 MiB) kept resident: the high-water mark
constexpr std::size_t kPeakEpochs = 4;        // how many epochs the demand for slots is remembered

// How long a free slot stays idle before a trim may take it (a test shortens it).
std::atomic<unsigned> g_trim_epoch_ms{250};
std::chrono::milliseconds trim_epoch() noexcept {
  return std::chrono::milliseconds(g_trim_epoch_ms.load(std::memory_order_relaxed));
}

std::atomic<StackTrim> g_trim{StackTrim::dontneed};

// Origins recorded in Stack::origin.
constexpr std::uint8_t kSingleMapping = 0;
constexpr std::uint8_t kSlabOrigin[2] = {1, 2};  // madvise, mprotect slabs

std::size_t slot_usable() noexcept {
  return default_stack_size;
}

class Arena {
 public:
  explicit Arena(GuardMode mode) : mode_(mode) {}

  // Fills `out` with up to `want` free slots (the warmest first), carving new ones if none is
  // free. Throws std::system_error if the address space or the guard cannot be had.
  void take(std::vector<detail::Stack>& out, std::size_t want) {
    std::lock_guard lock(mutex_);
    // The warmest go last, where the thread's cache takes from: trimmed (cold) slots first, then
    // the warm ones in their order.
    const std::size_t warm = std::min(want, dirty_.size());
    const std::size_t cold = std::min(want - warm, clean_.size());
    for (auto [list, k] : {std::pair{&clean_, cold}, std::pair{&dirty_, warm}}) {
      out.insert(out.end(), list->end() - static_cast<std::ptrdiff_t>(k), list->end());
      list->resize(list->size() - k);
    }
    want -= warm + cold;
    idle_ = std::min(idle_, dirty_.size());
    if (out.empty()) carve(out, std::max<std::size_t>(want, 1));
    peaks_[0] = std::max(peaks_[0], busy());
  }

  // Takes back free slots from a thread; past the high-water mark, returns the memory of those
  // idle for a whole epoch to the kernel.
  void give(const detail::Stack* stacks, std::size_t n) noexcept {
    std::vector<detail::Stack> trim;
    {
      std::lock_guard lock(mutex_);
      for (std::size_t i = 0; i < n; ++i) {
        try {
          dirty_.push_back(stacks[i]);
        } catch (...) {
          forget(stacks[i]);
        }
      }
      // The high-water mark: enough free slots to cover the most slots in use over the last
      // kPeakEpochs epochs (at least kTrimFloor). Free slots beyond it that no take reached during a
      // whole epoch (the front of dirty_, released longest ago) go back to the kernel in one batch.
      // A program that churns through the same number of fibers round after round keeps its
      // stacks resident, however long a round takes; one whose fibers are gone for a second
      // returns their memory.
      const auto now = std::chrono::steady_clock::now();
      if (now - epoch_start_ >= trim_epoch()) {
        const std::size_t in_use = busy();
        std::size_t demand = in_use;
        for (std::size_t p : peaks_) demand = std::max(demand, p);
        const std::size_t keep = std::max(kTrimFloor, demand - in_use);
        const std::size_t excess = dirty_.size() > keep ? dirty_.size() - keep : 0;
        const std::size_t k = std::min(idle_, excess);
        if (k > 0) {
          try {
            trim.assign(dirty_.begin(), dirty_.begin() + static_cast<std::ptrdiff_t>(k));
            dirty_.erase(dirty_.begin(), dirty_.begin() + static_cast<std::ptrdiff_t>(k));
            trimming_ += k;
            ++trims_;
          } catch (...) {
            trim.clear();
          }
        }
        epoch_start_ = now;
        idle_ = dirty_.size();
        for (std::size_t i = kPeakEpochs - 1; i > 0; --i) peaks_[i] = peaks_[i - 1];
        peaks_[0] = in_use;
      }
    }
    if (!trim.empty()) trim_out(trim);
  }

  void stats(StackStats& s) {
    std::lock_guard lock(mutex_);
    s.slabs += slabs_;
    s.reserved_bytes += reserved_;
    s.slots_carved += carved_;
    s.slots_free += dirty_.size() + clean_.size();
    s.slots_trimmed += clean_.size();
    s.trims += trims_;
  }

 private:
  // Carved slots not free in the shared lists: in use, or in a thread's cache.
  std::size_t busy() const noexcept { return carved_ - dirty_.size() - clean_.size() - trimming_; }

  std::size_t slot_bytes() const noexcept { return slot_usable() + page_size(); }

  void carve(std::vector<detail::Stack>& out, std::size_t want) {
    if (slab_used_ == slab_slots_) new_slab();
    const std::size_t n = std::min({want, kCarveBatch, slab_slots_ - slab_used_});
    const std::size_t page = page_size();
    char* first = slab_ + slab_used_ * slot_bytes();
    if (mode_ == GuardMode::madvise) {
      iovec guards[kCarveBatch];
      for (std::size_t i = 0; i < n; ++i) guards[i] = {first + i * slot_bytes(), page};
      if (!advise_ranges(guards, n, kMadvGuardInstall))
        throw std::system_error(errno, std::generic_category(), "skein: installing a stack guard page");
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        if (mprotect(first + i * slot_bytes(), page, PROT_NONE) != 0) {
          // The guards already made stay: the next carve starts after them.
          slab_used_ += i;
          carved_ += i;
          for (std::size_t j = i; j-- > 0;) out.push_back(make_slot(first + j * slot_bytes()));
          if (!out.empty()) return;
          throw std::system_error(errno, std::generic_category(), "skein: installing a stack guard page");
        }
      }
    }
    slab_used_ += n;
    carved_ += n;
    // Lowest address last: it is taken first, so stacks fill a slab from its start.
    for (std::size_t j = n; j-- > 0;) out.push_back(make_slot(first + j * slot_bytes()));
  }

  detail::Stack make_slot(char* guard) const noexcept {
    detail::Stack s{guard + page_size(), slot_usable(), 0};
    s.origin = kSlabOrigin[mode_ == GuardMode::mprotect];
#if defined(SKEIN_VALGRIND) && SKEIN_VALGRIND
    s.valgrind_id = VALGRIND_STACK_REGISTER(s.lo, s.hi());
#endif
    return s;
  }

  void new_slab() {
    std::size_t slots = next_slots_;
    for (;;) {
      void* p = mmap(nullptr, slots * slot_bytes(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
      if (p != MAP_FAILED) {
        // A transparent huge page would make one fiber's first touch commit 2 MiB, its
        // neighbours' stacks included (MAP_STACK implies this only since Linux 6.7).
        madvise(p, slots * slot_bytes(), MADV_NOHUGEPAGE);
        slab_ = static_cast<char*>(p);
        slab_slots_ = slots;
        slab_used_ = 0;
        ++slabs_;
        reserved_ += slots * slot_bytes();
        next_slots_ = std::min(kSlabMaxSlots, slots * 2);
        return;
      }
      // Short of address space (RLIMIT_AS, vm.max_map_count): a smaller slab may still fit.
      if (errno != ENOMEM || slots == 1)
        throw std::system_error(errno, std::generic_category(),
                                "skein: reserving address space for fiber stacks (" + std::to_string(slots) +
                                    " x " + std::to_string(slot_bytes() / 1024) + " KiB)");
      slots /= 2;
    }
  }

  void trim_out(std::vector<detail::Stack>& trim) noexcept {
    const int advice = g_trim.load(std::memory_order_relaxed) == StackTrim::free ? MADV_FREE : MADV_DONTNEED;
    std::vector<iovec> ranges;
    try {
      ranges.reserve(trim.size());
      for (const detail::Stack& s : trim) ranges.push_back({s.lo, s.size});
      advise_ranges(ranges.data(), ranges.size(), advice);
    } catch (...) {
      for (const detail::Stack& s : trim) madvise(s.lo, s.size, advice);
    }
    std::lock_guard lock(mutex_);
    trimming_ -= trim.size();
    for (const detail::Stack& s : trim) {
      try {
        clean_.push_back(s);
      } catch (...) {
        forget(s);
      }
    }
  }

  // Out of memory for the free list itself: the slot's memory goes back to the kernel and its
  // address space stays reserved, unused (the slot is counted as busy for ever).
  static void forget(const detail::Stack& s) noexcept {
    madvise(s.lo, s.size, MADV_DONTNEED);
  }

  const GuardMode mode_;
  std::mutex mutex_;
  std::vector<detail::Stack> dirty_;  // free, pages possibly resident; released longest ago first
  std::vector<detail::Stack> clean_;  // free, pages returned to the kernel
  std::size_t trimming_ = 0;          // taken out of dirty_, on their way to clean_
  std::size_t idle_ = 0;              // the front of dirty_ no take has reached this epoch
  std::size_t peaks_[kPeakEpochs]{};  // the most slots in use in this epoch [0] and the previous ones
  std::chrono::steady_clock::time_point epoch_start_ = std::chrono::steady_clock::now();
  char* slab_ = nullptr;  // the slab being carved
  std::size_t slab_slots_ = 0;
  std::size_t slab_used_ = 0;
  std::size_t next_slots_ = kSlabFirstSlots;
  std::size_t carved_ = 0;
  std::size_t slabs_ = 0;
  std::size_t reserved_ = 0;
  std::size_t trims_ = 0;
};

// Never destroyed: a stack may be released during static destruction, after any static object.
Arena& arena(std::uint8_t origin) noexcept {
  static Arena* const arenas[2] = {new Arena(GuardMode::madvise), new Arena(GuardMode::mprotect)};
  return *arenas[origin == kSlabOrigin[1]];
}

// ---- stacks of other sizes: a mapping each --------------------------------------------------

// A thread keeps at most this many bytes of free stacks of other sizes; the rest are unmapped.
constexpr std::size_t kMaxCachedBytes = 64u << 20;

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

// A stack taken from a free list: its previous owner's frames may still be marked.
detail::Stack reused(detail::Stack s) noexcept {
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

// ---- per-thread pool ----------------------------------------------------------------------

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
    if (usable == slot_usable()) [[likely]] {
      const int m = effective_guard_mode() == GuardMode::mprotect;
      std::vector<detail::Stack>& cache = slots_[m];
      if (!cache.empty()) [[likely]] {
        const detail::Stack s = cache.back();
        cache.pop_back();
        return reused(s);
      }
      return refill(m);
    }
    return acquire_other(usable);
  }

  void release(detail::Stack s) noexcept {
    if (s.origin != kSingleMapping) [[likely]] {
      std::vector<detail::Stack>& cache = slots_[s.origin - 1];
      if (cache.size() < kLocalMax && cache.size() < cache.capacity()) [[likely]] {
        cache.push_back(s);  // never allocates: the capacity is there
        return;
      }
      release_overflow(s);
      return;
    }
    release_other(s);
  }

  ~StackPool();

 private:
  // The spawn and finish paths above stay small; what follows runs once per 64 or 128 stacks, or
  // for stacks of other sizes.
  [[gnu::noinline]] detail::Stack refill(int m) {
    std::vector<detail::Stack>& cache = slots_[m];
    if (cache.capacity() < kLocalMax + 1) cache.reserve(kLocalMax + 1);
    arena(kSlabOrigin[m]).take(cache, kRefillBatch);
    const detail::Stack s = cache.back();
    cache.pop_back();
    return reused(s);
  }

  [[gnu::noinline]] void release_overflow(detail::Stack s) noexcept {
    std::vector<detail::Stack>& cache = slots_[s.origin - 1];
    if (cache.capacity() < kLocalMax + 1) {
      try {
        cache.reserve(kLocalMax + 1);
      } catch (...) {
      }
    }
    if (cache.size() < cache.capacity())
      cache.push_back(s);
    else
      arena(s.origin).give(&s, 1);
    if (cache.size() > kLocalMax) {
      // The older half goes to the shared list, where any thread may take it.
      const std::size_t half = cache.size() / 2;
      arena(s.origin).give(cache.data(), half);
      cache.erase(cache.begin(), cache.begin() + static_cast<std::ptrdiff_t>(half));
    }
  }

  [[gnu::noinline]] detail::Stack acquire_other(std::size_t usable) {
    for (std::size_t i = odd_.size(); i-- > 0;) {
      if (odd_[i].size != usable) continue;
      detail::Stack s = odd_[i];
      odd_[i] = odd_.back();
      odd_.pop_back();
      odd_bytes_ -= s.size;
      return reused(s);
    }
    return map_stack(usable);
  }

  [[gnu::noinline]] void release_other(detail::Stack s) noexcept {
    if (odd_bytes_ + s.size > kMaxCachedBytes) {
      unmap_stack(s);
      return;
    }
    try {
      odd_.push_back(s);
      odd_bytes_ += s.size;
    } catch (...) {
      unmap_stack(s);
    }
  }

  std::vector<detail::Stack> slots_[2];  // free slab slots (madvise, mprotect), warmest last
  std::vector<detail::Stack> odd_;       // free stacks of other sizes, most recently released last
  std::size_t odd_bytes_ = 0;
  bool ready_ = false;
  AltStack altstack_;
};

thread_local StackPool tl_pool;
// Set once the thread's pool is destroyed: a stack released later (a Task destroyed during static
// destruction, after the pool) goes straight to the shared lists, or back to the kernel.
constinit thread_local bool tl_pool_gone = false;

StackPool::~StackPool() {
  tl_pool_gone = true;
  // A thread's free slots are not stranded when it ends: other threads take them.
  for (int m = 0; m < 2; ++m)
    if (!slots_[m].empty()) {
      arena(kSlabOrigin[m]).give(slots_[m].data(), slots_[m].size());
      slots_[m].clear();
    }
  for (const detail::Stack& s : odd_) unmap_stack(s);
  odd_.clear();
}

}  // namespace

void set_guard_mode(GuardMode mode) noexcept {
  g_requested_mode.store(mode, std::memory_order_relaxed);
}

void set_stack_trim(StackTrim how) noexcept {
  g_trim.store(how, std::memory_order_relaxed);
}

StackStats stack_stats() {
  StackStats s;
  arena(kSlabOrigin[0]).stats(s);
  arena(kSlabOrigin[1]).stats(s);
  return s;
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
  const std::size_t usable = (size + page - 1) & ~(page - 1);
  if (!tl_pool_gone) [[likely]]
    return tl_pool.acquire(usable);
  // The thread's pool is destroyed (a fiber or generator made by a static destructor, or by a
  // thread_local destroyed after the pool): straight from the shared lists, or the kernel.
  if (usable == slot_usable()) {
    std::vector<detail::Stack> one;
    arena(kSlabOrigin[effective_guard_mode() == GuardMode::mprotect]).take(one, 1);
    return reused(one.back());
  }
  return map_stack(usable);
}

void set_stack_trim_epoch(unsigned milliseconds) noexcept {
  g_trim_epoch_ms.store(milliseconds, std::memory_order_relaxed);
}

void prepare_fiber_thread() {
  if (!tl_pool_gone) tl_pool.prepare();
}

void release_stack(Stack stack) noexcept {
  if (!tl_pool_gone)
    tl_pool.release(stack);
  else if (stack.origin != kSingleMapping)
    arena(stack.origin).give(&stack, 1);
  else
    unmap_stack(stack);
}

}  // namespace detail

}  // namespace skein
