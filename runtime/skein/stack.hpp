// Fiber stacks: mmap'd, lazily committed, guarded below by one page, reused from a per-thread pool.
#pragma once

#include <cstddef>

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

}  // namespace skein
