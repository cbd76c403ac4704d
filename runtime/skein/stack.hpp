// Fiber stacks: slots of large reserved regions, lazily committed, guarded below by one page, reused
// through per-thread caches over a shared free list.
#pragma once

#include <cstddef>
#include <cstdint>

namespace skein {

// Reserved size of a stack unless a fiber asks otherwise. Pages are committed by the kernel only
// when touched, so an idle fiber costs about one page of memory.
inline constexpr std::size_t default_stack_size = 64 * 1024;

// The smallest stack a fiber may ask for; smaller requests are rounded up to it.
inline constexpr std::size_t min_stack_size = 16 * 1024;

// How the guard page below each stack is made.
enum class GuardMode {
  automatic,  // madvise(MADV_GUARD_INSTALL) where the kernel has it (6.13+), else mprotect
  madvise,    // MADV_GUARD_INSTALL only: no extra memory mapping per stack
  mprotect,   // PROT_NONE page: two mappings per stack, so vm.max_map_count caps stacks near 32k
};

// Chooses how guard pages are made for stacks mapped from now on (process-wide; for benchmarks
// and tests). A stack mapping fails with std::system_error if `madvise` is forced and unsupported.
void set_guard_mode(GuardMode mode) noexcept;

// The mode new stacks get: `madvise` or `mprotect`, never `automatic` (probes the kernel once).
GuardMode effective_guard_mode() noexcept;

// How the memory of idle free stacks goes back to the kernel, once free stacks outnumber those in
// use (and number over 1024).
enum class StackTrim {
  dontneed,  // MADV_DONTNEED: freed at once (RSS drops); the next owner faults in zeroed pages
  free,      // MADV_FREE: freed only under memory pressure; until then reuse costs no fault
};

// Chooses how idle stacks are trimmed from now on (process-wide; for benchmarks).
void set_stack_trim(StackTrim how) noexcept;

// The shared stack pools of the process (stacks of the default size), for tests and monitoring.
struct StackStats {
  std::size_t slabs = 0;           // address-space reservations stacks are carved from
  std::size_t reserved_bytes = 0;  // their total size
  std::size_t slots_carved = 0;    // stacks carved so far (each with its guard page)
  std::size_t slots_free = 0;      // free in the shared lists (threads' own caches not counted)
  std::size_t slots_trimmed = 0;   // of those, the ones whose memory was returned to the kernel
  std::size_t trims = 0;           // batches returned to the kernel so far
};

// A snapshot of the shared pools' counters. Takes their locks briefly.
StackStats stack_stats();

}  // namespace skein
