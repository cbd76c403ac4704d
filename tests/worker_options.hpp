// What the suites that meson runs once per worker count share: the count (SKEIN_TEST_WORKERS,
// default 4), runtime options with it, and the errc a call throws.
#pragma once

#include <skein/runtime.hpp>

#include <cstddef>
#include <cstdlib>
#include <system_error>

namespace skein_test {

inline std::size_t workers() {
  static const std::size_t n = [] {
    const char* env = std::getenv("SKEIN_TEST_WORKERS");
    const long v = env ? std::strtol(env, nullptr, 10) : 4;
    return static_cast<std::size_t>(v > 0 ? v : 4);
  }();
  return n;
}

inline skein::RuntimeOptions options() {
  return skein::RuntimeOptions{workers()};
}

// The std::errc of the std::system_error `f` throws, or errc{} if it returns.
template <class F>
std::errc error_of(F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return static_cast<std::errc>(e.code().value());
  }
  return std::errc{};
}

// How a task that returns error_of(its wait) ended once cancelled: the error its body returned (the
// cancel reached it in the wait) or the join's own (it reached it before the task started: under
// load another worker may not have run it yet). Either way the task did not complete its wait.
template <class Task>
std::errc cancelled_outcome(Task& task) {
  std::errc from_body{};
  const std::errc from_join = error_of([&] { from_body = task.join(); });
  return from_join != std::errc{} ? from_join : from_body;
}

}  // namespace skein_test
