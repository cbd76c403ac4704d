// The machinery shared by Generator and Coroutine: a context on its own stack that runs until it
// yields back to whoever resumed it. Internal to skein.
#pragma once

#include <skein/detail/exec_context.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <system_error>
#include <utility>

// Built with AddressSanitizer or ThreadSanitizer (GCC defines the first two, Clang answers the rest).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SKEIN_DETAIL_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SKEIN_DETAIL_SANITIZED 1
#endif
#endif
#ifndef SKEIN_DETAIL_SANITIZED
#define SKEIN_DETAIL_SANITIZED 0
#endif

namespace skein::detail {

// Thrown at a suspended coroutine's yield to unwind its stack when it is closed or destroyed
// unfinished (Python's GeneratorExit). Not a std::exception: catch (const std::exception&) does
// not swallow it. A body that catches it with catch (...) must rethrow.
struct ForcedUnwind {};

// A coroutine's life, value by value.
enum class CoState : std::uint8_t {
  created,    // the body has not started
  suspended,  // parked at a yield until the next resume
  running,    // the body (or something it called) is on the CPU
  done,       // the body returned, threw, or was unwound
};

struct CoroutineCore : ExecContext {
  CoroutineCore() noexcept { kind = ContextKind::coroutine; }
  CoroutineCore(const CoroutineCore&) = delete;
  CoroutineCore& operator=(const CoroutineCore&) = delete;
  virtual ~CoroutineCore() = default;

  // Runs the body, storing its exception in `error`; swallows ForcedUnwind. Never throws.
  virtual void run_body() noexcept = 0;

  ExecContext* caller = nullptr;  // the context that resumed it last
  std::exception_ptr error;
  CoState state = CoState::created;
  bool unwinding = false;
  // TimeoutScopes belong to the context that opened them. `scope_own`: the innermost scope opened
  // in the body, kept across suspensions; `scope_resumer`: while the body runs, the deadline in
  // force for its resumer, which bounds the body's waits too (the resumer waits with it).
  TimePoint scope_own = no_deadline;
  TimePoint scope_resumer = no_deadline;
  TimePoint* resumer_slot = nullptr;  // where scope_resumer goes back when the body yields
};

// Places the context of a constructed core at the top of `stack`, below the core itself.
void coroutine_prepare(CoroutineCore& co, Stack stack) noexcept;

// What crosses a switch: the context that was left and one pointer (asm/context.hpp's Transfer).
struct SwitchTransfer {
  void* ctx;
  void* data;
};

// The two halves of a switch between a coroutine and its resumer. The switch itself is called
// from the inline functions below, not from inside a library function, for the sake of the
// return-stack predictor: every `ret` executed right after a switch whose `call` was made on the
// other side of it mispredicts, and a resume through out-of-line helpers made four of those per
// round trip. The halves are ordinary calls that return before (or start after) the switch.
struct SwitchStep {
  void* to;           // the suspended context to resume
  ExecContext* from;  // the context being left, handed across the switch
};
// Checks and readies `co` to run (see coroutine_resume); the switch to make.
SwitchStep coroutine_resume_begin(CoroutineCore& co);
// Back in the resumer after the body yielded, finished or unwound.
void coroutine_resume_end(SwitchTransfer t, CoroutineCore& co) noexcept;
// From the body: readies the switch back to the resumer.
SwitchStep coroutine_suspend_begin(CoroutineCore& co) noexcept;
// Back in the body after a resume; throws ForcedUnwind if that resume is the destroyer's.
void coroutine_suspend_end(SwitchTransfer t, CoroutineCore& co);
// The same, the switch made inside the library: for code built with a sanitizer, whose switch
// annotations must not be separated from the switch by a function return.
void coroutine_resume_whole(CoroutineCore& co);
void coroutine_suspend_whole(CoroutineCore& co);

}  // namespace skein::detail

extern "C" {
// The context switch the library was built with (skein's assembly or Boost.Context's), under one
// name: suspends the running context, resumes `to` with `data`; returns when switched back to.
[[gnu::visibility("hidden")]] skein::detail::SwitchTransfer skein_switch_jump(void* to, void* data) noexcept;
}

namespace skein::detail {

// Runs `co` until it yields or finishes. Throws std::system_error: resource_deadlock_would_occur if
// it is already running (resumed from inside itself), invalid_argument if it has finished.
inline void coroutine_resume(CoroutineCore& co) {
#if SKEIN_DETAIL_SANITIZED
  coroutine_resume_whole(co);
#else
  const SwitchStep step = coroutine_resume_begin(co);
  coroutine_resume_end(skein_switch_jump(step.to, step.from), co);
#endif
}

// From the body: back to the resumer until the next resume. Throws ForcedUnwind when the
// coroutine is being destroyed.
inline void coroutine_suspend(CoroutineCore& co) {
#if SKEIN_DETAIL_SANITIZED
  coroutine_suspend_whole(co);
#else
  const SwitchStep step = coroutine_suspend_begin(co);
  coroutine_suspend_end(skein_switch_jump(step.to, step.from), co);
#endif
}

// Destroys a core made by make_coroutine: unwinds a suspended body first (every destructor on its
// stack runs), then returns the stack.
void coroutine_destroy(CoroutineCore* co) noexcept;

// Constructs `Impl` at the top of a fresh stack and prepares its context.
template <class Impl, class... Args>
Impl* make_coroutine(std::size_t stack_size, Args&&... args) {
  static_assert(alignof(Impl) <= 16, "over-aligned coroutine bodies are not supported");
  Stack stack = acquire_stack(stack_size);
  constexpr std::size_t footprint = (sizeof(Impl) + 15) & ~std::size_t{15};
  if (footprint + 4096 > stack.size) {
    release_stack(stack);
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein: coroutine body too large for its stack");
  }
  Impl* impl;
  try {
    impl = new (stack.hi() - footprint) Impl(std::forward<Args>(args)...);
  } catch (...) {
    release_stack(stack);
    throw;
  }
  coroutine_prepare(*impl, stack);
  return impl;
}

}  // namespace skein::detail
