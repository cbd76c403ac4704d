#include "scheduler.hpp"
#include "switch.hpp"

#include <skein/detail/coroutine.hpp>
#include <skein/detail/fiber.hpp>
#include <skein/timeout.hpp>

#include <cstdio>
#include <cstdlib>
#include <system_error>

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

void coroutine_resume(CoroutineCore& co) {
  if (co.state == CoState::running)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein: a coroutine cannot resume itself");
  if (co.state == CoState::done)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein: coroutine already finished");
  ExecContext& here = running_context();
  co.caller = &here;
  co.state = CoState::running;
  enter_body(here, co);
}

void coroutine_suspend(CoroutineCore& co) {
  if (co.unwinding) {
    // The body caught ForcedUnwind and tried to go on; it can never be resumed again.
    std::fputs("skein: a coroutine being destroyed caught the forced unwind and yielded again; aborting\n",
               stderr);
    std::abort();
  }
  co.state = CoState::suspended;
  switch_context(co, *co.caller);
  if (co.unwinding) throw ForcedUnwind{};
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
