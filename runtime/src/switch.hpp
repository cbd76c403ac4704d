// Switching between execution contexts: the one place that moves the CPU from one stack to
// another, carrying along what must travel with a context (the C++ exception state, ASan's view of
// the stack). Built on asm/context.hpp.
#pragma once

#include "context.hpp"

#include <skein/detail/exec_context.hpp>

#include <cxxabi.h>

#if defined(__SANITIZE_ADDRESS__)
#define SKEIN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SKEIN_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define SKEIN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SKEIN_TSAN 1
#endif
#endif

#if defined(SKEIN_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(SKEIN_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

namespace skein::detail {

// The thread's own stack, as a context; it runs the scheduler loop.
inline constinit thread_local ExecContext tl_thread_context{};
// The context on the CPU, or nullptr for tl_thread_context (a thread that never switched).
inline constinit thread_local ExecContext* tl_running = nullptr;
// The context a switch in progress is leaving (its stack is still in use until the jump), for the
// stack-overflow report; nullptr outside a switch.
inline constinit thread_local ExecContext* tl_leaving = nullptr;

inline ExecContext& running_context() noexcept {
  return tl_running ? *tl_running : tl_thread_context;
}

// Itanium C++ ABI: the per-thread exception globals have exactly EhState's layout.
inline EhState* eh_globals() noexcept {
  static constinit thread_local EhState* globals = nullptr;
  if (!globals) [[unlikely]]
    globals = reinterpret_cast<EhState*>(abi::__cxa_get_globals());
  return globals;
}

// Completes a switch on the side that was switched to: records where the previous context stopped.
inline void finish_switch(Transfer t, ExecContext& self) noexcept {
  auto* prev = static_cast<ExecContext*>(t.data);
  prev->sp = t.ctx;
  tl_leaving = nullptr;
#if defined(SKEIN_ASAN)
  const void* lo = nullptr;
  std::size_t size = 0;
  __sanitizer_finish_switch_fiber(self.sanitizer, &lo, &size);
  if (prev->kind == ContextKind::thread && !prev->stack)  // learn the thread stack's bounds
    prev->stack = Stack{static_cast<char*>(const_cast<void*>(lo)), size, 0};
#else
  (void)self;
#endif
}

inline void start_switch(ExecContext& from, ExecContext& to, bool from_exits) noexcept {
  EhState* g = eh_globals();
  from.eh = *g;
  *g = to.eh;
  tl_leaving = &from;
  tl_running = &to;
#if defined(SKEIN_ASAN)
  __sanitizer_start_switch_fiber(from_exits ? nullptr : &from.sanitizer, to.stack.lo, to.stack.size);
#else
  (void)from_exits;
#endif
#if defined(SKEIN_TSAN)
  // TSan keeps a shadow call stack and clock per fiber; a thread's own context is the fiber TSan
  // created for the thread. The switch itself orders the two contexts (flag 0: synchronise).
  if (!from.sanitizer) from.sanitizer = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(to.sanitizer, 0);
#endif
}

// Suspends `from` (the running context) and resumes `to`; returns when a context switches back.
inline void switch_context(ExecContext& from, ExecContext& to) noexcept {
  start_switch(from, to, false);
  finish_switch(jump_context(to.sp, &from), from);
}

// The last switch out of `from`, which never runs again (ASan releases its fake stack).
[[noreturn]] inline void exit_context(ExecContext& from, ExecContext& to) noexcept {
  start_switch(from, to, true);
  jump_context(to.sp, &from);
  __builtin_unreachable();
}

// First thing on a fresh context: completes the switch that entered it; returns the context.
inline ExecContext& enter_context(Transfer t) noexcept {
  ExecContext& self = *tl_running;
  finish_switch(t, self);
  return self;
}

// Prepares `ctx` to start in `entry` on its stack, below `top` (which must lie within the stack).
inline void prepare_context(ExecContext& ctx, void* top, ContextEntry entry) noexcept {
  ctx.sp = make_context(top, static_cast<std::size_t>(static_cast<char*>(top) - ctx.stack.lo), entry);
#if defined(SKEIN_TSAN)
  ctx.sanitizer = __tsan_create_fiber(0);
#endif
}

// Lets go of what the sanitizers keep for a context that will never run again (not the running one).
inline void discard_context(ExecContext& ctx) noexcept {
#if defined(SKEIN_TSAN)
  if (ctx.sanitizer) __tsan_destroy_fiber(ctx.sanitizer);
  ctx.sanitizer = nullptr;
#else
  (void)ctx;
#endif
}

}  // namespace skein::detail
