// An execution context: a stack and the CPU state suspended on it. Fibers and coroutines each own
// one; every thread has one for its own stack. Internal to skein (public only because templates in
// the public headers derive from it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace skein::detail {

// A mapped stack. Usable bytes are [lo, lo + size); the guard page lies just below lo.
struct Stack {
  char* lo = nullptr;
  std::size_t size = 0;
  unsigned valgrind_id = 0;  // VALGRIND_STACK_REGISTER handle, 0 when not registered
  std::uint8_t origin = 0;   // 0: a mapping of its own; else the slab pool it returns to

  char* hi() const noexcept { return lo + size; }
  explicit operator bool() const noexcept { return lo != nullptr; }
};

// The C++ runtime's per-thread exception bookkeeping (Itanium ABI __cxa_eh_globals), which must
// travel with the context: a fiber suspended inside a catch block owns its caught exceptions.
struct EhState {
  void* caught = nullptr;     // stack of currently caught exceptions
  unsigned int uncaught = 0;  // std::uncaught_exceptions()
};

enum class ContextKind : std::uint8_t {
  thread,     // a thread's own stack (runs the scheduler loop)
  fiber,      // a scheduled fiber (skein::spawn)
  coroutine,  // a generator or two-way coroutine, driven by whoever resumes it
};

struct ExecContext {
  void* sp = nullptr;  // the suspended state (asm frame) while not running
  Stack stack{};       // this context's stack; empty for a thread's own stack
  EhState eh{};        // exception state while not running
  // ASan's fake stack while not running, or TSan's fiber for this context (the two sanitizers
  // never share a build); unused otherwise.
  void* sanitizer = nullptr;
  ContextKind kind = ContextKind::thread;
};

// A stack of at least `size` bytes (rounded up to pages, at least min_stack_size): a slab slot
// for the default size (this thread's cache, the shared free list, or a new slot), a mapping of
// its own otherwise. Throws std::system_error if the kernel refuses address space or the guard.
Stack acquire_stack(std::size_t size);

// Readies this thread to run fibers whose stacks it did not map (a worker running fibers spawned
// from other threads): the stack-overflow report needs a handler and an alternate signal stack.
// acquire_stack does it too.
void prepare_fiber_thread();

// Returns a stack to this thread's cache (which shares its overflow with other threads), or to the
// kernel (a stack of another size, when the thread already keeps 64 MiB of those).
void release_stack(Stack stack) noexcept;

// How long (default 250 ms) a free stack must stay idle before its memory may go back to the
// kernel; the demand for stacks is remembered for four such epochs. For tests.
void set_stack_trim_epoch(unsigned milliseconds) noexcept;

}  // namespace skein::detail
