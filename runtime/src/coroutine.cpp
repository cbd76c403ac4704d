#include "switch.hpp"

#include <skein/detail/coroutine.hpp>

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

}  // namespace

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
  switch_context(here, co);
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
    switch_context(here, *co);
  }
  const Stack stack = co->stack;
  discard_context(*co);
  co->~CoroutineCore();
  release_stack(stack);
}

}  // namespace skein::detail
