// The scheduler's entry point and the calls a fiber makes about itself.
//
// Errors: sleep_* and yield() throw std::system_error(errc::operation_canceled) in a cancelled
// fiber; run() rethrows whatever `f` threw.
#pragma once

#include <skein/runtime.hpp>
#include <skein/source_location.hpp>
#include <skein/task.hpp>
#include <skein/time.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>

namespace skein {

// Runs `f` as the first fiber of a new single-worker runtime on this thread, runs every fiber it
// spawns, and returns `f`'s value (or rethrows its exception) once all of them have finished.
// run(RuntimeOptions, f) in <skein/runtime.hpp> is the same with more workers.
template <class F>
auto run(F&& f, skein::SourceLocation where = skein::SourceLocation::current())
    -> std::invoke_result_t<std::decay_t<F>&> {
  return run(RuntimeOptions{1}, std::forward<F>(f), where);
}

// Lets every other ready fiber run before the caller continues. A cancellation point. Outside a
// fiber it does nothing.
void yield();

// Parks the calling fiber until `deadline`; only the fiber waits, never the thread. Outside a
// fiber the thread sleeps. Throws operation_canceled if the fiber is cancelled meanwhile.
void sleep_until(TimePoint deadline);

template <class Rep, class Period>
void sleep_for(std::chrono::duration<Rep, Period> d) {
  sleep_until(deadline_after(d));
}

// True when called on a fiber (not on a thread's own stack).
bool in_fiber() noexcept;

namespace this_fiber {
// The running fiber's id, unique within its runtime (1, 2, 3, ... in a single-worker one), or 0
// outside a fiber.
std::uint64_t id() noexcept;
// The running fiber's name, or "" outside a fiber.
std::string_view name() noexcept;
// True once the running fiber has been asked to stop.
bool cancelled() noexcept;
}  // namespace this_fiber

}  // namespace skein
