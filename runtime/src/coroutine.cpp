#include "scheduler.hpp"
#include "switch.hpp"

#include <skein/detail/coroutine.hpp>
#include <skein/detail/fiber.hpp>
#include <skein/timeout.hpp>

#include <cstdio>
#include <cstdlib>
#include <system_error>

// skein_switch_jump (see <skein/detail/coroutine.hpp>) is jump_context under a name the public
// headers can call whichever backend this library was built with: a tail jump to the switch, so
// that the caller's own return address is the one the switch saves and jumps back to. Hidden (the
// library is static: callers bind to it directly, never through a PLT or another copy of skein),
// and it opens with a landing pad (endbr64, bti c) like every other entry of the switch, for
// binaries built with branch protection.
#if defined(SKEIN_CONTEXT_BOOST) && SKEIN_CONTEXT_BOOST
#define SKEIN_SWITCH_TARGET "jump_fcontext"
#else
#define SKEIN_SWITCH_TARGET "skein_jump_fcontext"
#endif
#if defined(__x86_64__)
asm(R"(
        .pushsection .text
        .globl  skein_switch_jump
        .hidden skein_switch_jump
        .type   skein_switch_jump, @function
        .p2align 4
skein_switch_jump:
        endbr64
        jmp     )" SKEIN_SWITCH_TARGET R"(@PLT
        .size   skein_switch_jump, .-skein_switch_jump
        .popsection
)");
#elif defined(__aarch64__)
asm(R"(
        .pushsection .text
        .globl  skein_switch_jump
        .hidden skein_switch_jump
        .type   skein_switch_jump, %function
        .p2align 4
skein_switch_jump:
        hint    #34
        b       )" SKEIN_SWITCH_TARGET R"(
        .size   skein_switch_jump, .-skein_switch_jump
        .popsection
)");
#else
// Elsewhere (Boost.Context only) a plain function: correct, one mispredicted return slower.
extern "C" skein::detail::SwitchTransfer skein_switch_jump(void* to, void* data) noexcept {
  const skein::detail::Transfer t = skein::detail::jump_context(to, data);
  return {t.ctx, t.data};
}
#endif

namespace skein::detail {

namespace {

[[noreturn]] void coroutine_entry(Transfer t) noexcept {
  auto& co = static_cast<CoroutineCore&>(enter_context(t));
  if (!co.unwinding) co.run_body();
  co.state = CoState::done;
  exit_context(co, *co.caller);
}

// Switches into `co` with the TimeoutScopes right for it, and back: while the body runs, the
// deadline in force is the earlier of the resumer's and the body's own; the resumer gets its own
// back whether the body yielded, finished or unwound.
void enter_body(ExecContext& here, CoroutineCore& co) noexcept {
  TimePoint& slot = scope_slot();
  const TimePoint resumer = slot;
  co.scope_resumer = resumer;
  if (co.scope_own < resumer) slot = co.scope_own;
  switch_context(here, co);
  slot = resumer;
}

}  // namespace

ScopeEntry enter_scope(TimePoint deadline) noexcept {
  ExecContext& here = running_context();
  if (here.kind == ContextKind::coroutine) {
    auto& co = static_cast<CoroutineCore&>(here);
    const TimePoint outer = co.scope_own;
    co.scope_own = deadline < outer ? deadline : outer;
    const TimePoint in_force = co.scope_own < co.scope_resumer ? co.scope_own : co.scope_resumer;
    scope_slot() = in_force;
    return {outer, in_force};
  }
  const TimePoint outer = scope_deadline();
  const TimePoint in_force = deadline < outer ? deadline : outer;
  set_scope_deadline(in_force);
  return {outer, in_force};
}

void leave_scope(TimePoint outer) noexcept {
  ExecContext& here = running_context();
  if (here.kind == ContextKind::coroutine) {
    auto& co = static_cast<CoroutineCore&>(here);
    co.scope_own = outer;
    scope_slot() = outer < co.scope_resumer ? outer : co.scope_resumer;
    return;
  }
  set_scope_deadline(outer);
}

void coroutine_prepare(CoroutineCore& co, Stack stack) noexcept {
  co.stack = stack;
  prepare_context(co, &co, &coroutine_entry);
}

// The halves of a resume and of a suspension, used by the exported functions below. Always inline:
// a sanitizer's switch annotation made inside a function that returns before the switch would
// be undone, in TSan's per-fiber shadow call stack, on the wrong fiber.
namespace {

[[gnu::always_inline]] inline SwitchStep resume_prepare(CoroutineCore& co) {
  if (co.state == CoState::running)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein: a coroutine cannot resume itself");
  if (co.state == CoState::done)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein: coroutine already finished");
  ExecContext& here = running_context();
  co.caller = &here;
  co.state = CoState::running;
  // The TimeoutScopes while the body runs: the earlier of the resumer's deadline and the body's
  // own; resume_finish gives the resumer its own back.
  TimePoint& slot = scope_slot();
  const TimePoint resumer = slot;
  co.scope_resumer = resumer;
  co.resumer_slot = &slot;
  if (co.scope_own < resumer) slot = co.scope_own;
  start_switch(here, co, false);
  return {co.sp, &here};
}

[[gnu::always_inline]] inline void resume_finish(SwitchTransfer t, CoroutineCore& co) noexcept {
  finish_switch({t.ctx, t.data}, *co.caller);
  *co.resumer_slot = co.scope_resumer;
}

[[gnu::always_inline]] inline SwitchStep suspend_prepare(CoroutineCore& co) noexcept {
  if (co.unwinding) {
    // The body caught ForcedUnwind and tried to go on; it can never be resumed again.
    std::fputs("skein: a coroutine being destroyed caught the forced unwind and yielded again; aborting\n",
               stderr);
    std::abort();
  }
  co.state = CoState::suspended;
  start_switch(co, *co.caller, false);
  return {co.caller->sp, static_cast<ExecContext*>(&co)};
}

[[gnu::always_inline]] inline void suspend_finish(SwitchTransfer t, CoroutineCore& co) {
  finish_switch({t.ctx, t.data}, co);
  if (co.unwinding) throw ForcedUnwind{};
}

}  // namespace

SwitchStep coroutine_resume_begin(CoroutineCore& co) {
  return resume_prepare(co);
}

void coroutine_resume_end(SwitchTransfer t, CoroutineCore& co) noexcept {
  resume_finish(t, co);
}

SwitchStep coroutine_suspend_begin(CoroutineCore& co) noexcept {
  return suspend_prepare(co);
}

void coroutine_suspend_end(SwitchTransfer t, CoroutineCore& co) {
  suspend_finish(t, co);
}

void coroutine_resume_whole(CoroutineCore& co) {
  const SwitchStep step = resume_prepare(co);
  resume_finish(skein_switch_jump(step.to, step.from), co);
}

void coroutine_suspend_whole(CoroutineCore& co) {
  const SwitchStep step = suspend_prepare(co);
  suspend_finish(skein_switch_jump(step.to, step.from), co);
}

void coroutine_destroy(CoroutineCore* co) noexcept {
  if (co->state == CoState::running) {
    // Destroyed from inside its own body, or while a fiber is parked inside it: freeing the
    // stack would pull it from under code that is still on it.
    std::fputs("skein: a running coroutine was destroyed (from its own body, or while parked); aborting\n",
               stderr);
    std::abort();
  }
  if (co->state == CoState::suspended) {
    co->unwinding = true;
    ExecContext& here = running_context();
    co->caller = &here;
    co->state = CoState::running;
    enter_body(here, *co);
  }
  const Stack stack = co->stack;
  discard_context(*co);
  co->~CoroutineCore();
  release_stack(stack);
}

}  // namespace skein::detail
