// Tasks: spawn a fiber, join its result, cancel it (asyncio's create_task / gather / wait_for,
// gevent's spawn / joinall / kill).
//
// Errors: waits throw std::system_error with errc::operation_canceled when the waiting fiber is
// cancelled and errc::timed_out when a deadline passes. Misuse throws std::system_error too:
// joining an empty handle (invalid_argument), a fiber waiting for itself
// (resource_deadlock_would_occur), spawning outside skein::run (operation_not_permitted). A
// body's own exception is rethrown, unchanged, by join().
#pragma once

#include <skein/detail/fiber.hpp>
#include <skein/source_location.hpp>
#include <skein/stack.hpp>
#include <skein/time.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace skein {

// How to start a fiber.
struct FiberOptions {
  std::string name;                             // shown in diagnostics (stack overflow, errors)
  std::size_t stack_size = default_stack_size;  // reserved bytes, rounded up to pages
};

template <class T>
class Task;

namespace detail {

struct TaskAccess;

template <class T>
struct TaskFiber : Fiber {
  std::optional<T> value;
};

template <>
struct TaskFiber<void> : Fiber {};

template <class F, class T>
struct FiberImpl final : TaskFiber<T> {
  explicit FiberImpl(F&& f) : fn(std::move(f)) {}
  explicit FiberImpl(const F& f) : fn(f) {}

  void run_body() noexcept override {
    try {
      if constexpr (std::is_void_v<T>)
        std::invoke(*fn);
      else
        this->value.emplace(std::invoke(*fn));
    } catch (...) {
      this->error = std::current_exception();
    }
    destroy_fn();
  }

  void skip_body() noexcept override {
    this->error = std::make_exception_ptr(std::system_error(
        std::make_error_code(std::errc::operation_canceled), "skein: task cancelled before it started"));
    destroy_fn();
  }

  // The closure dies when the body ends, on the fiber's stack: captured resources are released
  // then, not when the Task handle goes away.
  void destroy_fn() noexcept {
    try {
      fn.reset();
    } catch (...) {
      if (!this->error) this->error = std::current_exception();
    }
  }

  std::optional<F> fn;
};

template <class T>
using result_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

}  // namespace detail

// A handle to a spawned fiber and its result. Move-only. Dropping an unjoined handle detaches the
// fiber, which runs on (skein::run still waits for it); an exception it ends with is then printed.
//
// Several parties (fibers on any worker, plain threads) may wait for and join one handle at once:
// they all wait for the body, the first join to be woken (or to find it finished) gets the result,
// and every other join then throws invalid_argument, as a join of an empty handle does. The handle
// keeps the finished fiber's record until it is destroyed, assigned or detached, so moving,
// assigning, detaching or destroying it is its owner's business and must not race with those.
template <class T>
class Task {
  static_assert(!std::is_reference_v<T>,
                "skein::Task<T&>: a task cannot return a reference; return a value, a pointer or a "
                "std::reference_wrapper");
  static_assert(std::is_reference_v<T> || std::is_void_v<T> || (std::is_object_v<T> && !std::is_array_v<T>),
                "skein::Task<T>: T must be void or an object type");

 public:
  using value_type = T;

  Task() noexcept = default;
  Task(Task&& other) noexcept
      : f_(std::exchange(other.f_, nullptr)), joined_(other.joined_.load(std::memory_order_relaxed)) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      reset();
      f_ = std::exchange(other.f_, nullptr);
      joined_.store(other.joined_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    return *this;
  }
  ~Task() { reset(); }

  // True while the handle refers to a fiber (not joined, detached or moved from).
  bool valid() const noexcept { return f_ && !joined_.load(std::memory_order_acquire); }
  explicit operator bool() const noexcept { return valid(); }

  // True once the body has returned or thrown.
  bool done() const noexcept { return valid() && f_->finished.load(std::memory_order_acquire); }

  std::uint64_t id() const noexcept { return valid() ? f_->id : 0; }
  std::string_view name() const noexcept { return valid() ? std::string_view(f_->name) : std::string_view(); }

  // Waits until the body has finished, without taking the result. Throws operation_canceled if
  // the waiting fiber is cancelled, invalid_argument if the handle is empty.
  void wait() const { wait_until(Deadline()); }

  // As wait(), until `deadline`: true if the body finished, false if the deadline passed first.
  bool wait_until(Deadline deadline) const { return detail::wait_done(checked(), deadline.at()); }

  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const {
    return wait_until(d);
  }

  // Waits for the body, then returns its value or rethrows its exception. Empties the handle.
  // Throws invalid_argument if the handle is empty or another join got the result.
  T join() { return join_until(Deadline()); }

  // As join(), but throws timed_out if `deadline` passes first (the task keeps running and the
  // handle stays valid).
  T join_until(Deadline deadline) {
    detail::Fiber* f = checked();
    switch (detail::join_done(f, deadline.at())) {
      case detail::Joined::took:
        break;
      case detail::Joined::refused:
        throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                "skein::Task::join: another join took the result");
      case detail::Joined::timed_out:
        throw std::system_error(std::make_error_code(std::errc::timed_out),
                                "skein::Task::join: deadline passed before the task finished");
    }
    joined_.store(true, std::memory_order_release);
    if (f->error) {
      f->error_observed = true;
      std::rethrow_exception(f->error);
    }
    if constexpr (!std::is_void_v<T>) return std::move(*static_cast<detail::TaskFiber<T>*>(f)->value);
  }

  template <class Rep, class Period>
  T join_for(std::chrono::duration<Rep, Period> d) {
    return join_until(d);
  }

  // Asks the fiber to stop: the wait it is parked in (or its next one) throws operation_canceled.
  // Cooperative: a fiber that never waits runs to completion. No effect once done. Any thread.
  void cancel() noexcept {
    if (valid()) detail::cancel(f_);
  }

  // Lets the fiber run on without a handle (or, once joined, lets its record go).
  void detach() noexcept { reset(); }

 private:
  friend struct detail::TaskAccess;

  explicit Task(detail::Fiber* f) noexcept : f_(f) {}

  detail::Fiber* checked() const {
    if (!valid())
      throw std::system_error(std::make_error_code(std::errc::invalid_argument), "skein::Task: empty handle");
    return f_;
  }

  void reset() noexcept {
    if (f_) detail::release_handle(std::exchange(f_, nullptr));
    joined_.store(false, std::memory_order_relaxed);
  }

  detail::Fiber* f_ = nullptr;
  std::atomic<bool> joined_{false};  // a join got the result (the record stays until reset)
};

namespace detail {
struct TaskAccess {
  template <class T>
  static Task<T> adopt(Fiber* f) noexcept {
    return Task<T>(f);
  }
  template <class T>
  static void wait_shielded(const Task<T>& t) noexcept {
    wait_done_shielded(t.f_);
  }
  template <class T>
  static Fiber* fiber_of(const Task<T>& t) noexcept {
    return t.f_;
  }
};
}  // namespace detail

namespace detail {
template <class F>
using fiber_result_t = std::invoke_result_t<std::decay_t<F>&>;

// Constructs the record of a fiber that will run `f` at the top of a fresh stack (not started).
template <class F>
std::pair<Fiber*, Stack> make_fiber(std::size_t stack_size, F&& f) {
  static_assert(std::is_invocable_v<std::decay_t<F>&>, "skein::spawn: the callable must take no arguments");
  using R = fiber_result_t<F>;
  static_assert(!std::is_reference_v<R>,
                "skein::spawn: the callable returns a reference, which a task cannot hold; return a value, a "
                "pointer or a std::reference_wrapper");
  static_assert(std::is_void_v<R> || std::is_move_constructible_v<R>,
                "skein::spawn: the callable's result must be move-constructible (join() moves it out)");
  using Fn = std::decay_t<F>;
  using Impl = FiberImpl<Fn, fiber_result_t<F>>;
  static_assert(alignof(Impl) <= 16, "over-aligned closures are not supported");
  Stack stack = acquire_stack(stack_size);
  // Rounded to a cache line, so the record's hot fields start on one (see detail::Fiber).
  constexpr std::size_t footprint = (sizeof(Impl) + 63) & ~std::size_t{63};
  if (footprint + 4096 > stack.size) {
    release_stack(stack);
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein::spawn: closure too large for the stack");
  }
  try {
    return {new (stack.hi() - footprint) Impl(std::forward<F>(f)), stack};
  } catch (...) {
    release_stack(stack);
    throw;
  }
}
}  // namespace detail

// Starts `f` on a new fiber of the calling fiber's worker; it first runs when the caller next waits,
// yields or ends, then at once, ahead of the fibers already ready (docs/architecture.md). Returns
// the handle to its result. Must be called inside skein::run. `where` (defaulted) is the spawn
// call, which skein::debug reports.
template <class F>
auto spawn(FiberOptions options, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
  detail::Scheduler& sched = detail::scheduler_for("skein::spawn");
  auto [fiber, stack] = detail::make_fiber(options.stack_size, std::forward<F>(f));
  detail::start_fiber(sched, fiber, stack, std::move(options.name), where);
  return detail::TaskAccess::adopt<detail::fiber_result_t<F>>(fiber);
}

template <class F>
auto spawn(F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
  return spawn(FiberOptions{}, std::forward<F>(f), where);
}

// Waits for every task, then returns their values as a tuple (std::monostate for void tasks). If
// any threw, rethrows the first exception in argument order once all have finished.
template <class... Ts>
std::tuple<detail::result_t<Ts>...> gather(Task<Ts>&... tasks) {
  (tasks.wait(), ...);
  std::exception_ptr first;
  auto take = [&first]<class T>(Task<T>& t) -> std::optional<detail::result_t<T>> {
    try {
      if constexpr (std::is_void_v<T>) {
        t.join();
        return std::monostate{};
      } else {
        return t.join();
      }
    } catch (...) {
      if (!first) first = std::current_exception();
      return std::nullopt;
    }
  };
  std::tuple<std::optional<detail::result_t<Ts>>...> parts{take(tasks)...};
  if (first) std::rethrow_exception(first);
  return std::apply([](auto&... p) { return std::tuple<detail::result_t<Ts>...>(std::move(*p)...); }, parts);
}

template <class... Ts>
std::tuple<detail::result_t<Ts>...> gather(Task<Ts>&&... tasks) {
  return gather(tasks...);
}

// Waits for every task in `tasks` and returns their values in order (std::monostate for void). If
// any threw, rethrows the first exception once all have finished.
template <std::ranges::range R>
requires requires(std::ranges::range_reference_t<R> t) {
  t.join();
}
auto join_all(R&& tasks) {
  using T = typename std::remove_cvref_t<std::ranges::range_reference_t<R>>::value_type;
  std::vector<detail::result_t<T>> values;
  for (auto& t : tasks) t.wait();
  std::exception_ptr first;
  for (auto& t : tasks) {
    try {
      if constexpr (std::is_void_v<T>) {
        t.join();
        values.emplace_back();
      } else {
        values.push_back(t.join());
      }
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
  return values;
}

// Runs `f` on a child fiber and returns its result, or cancels it and throws timed_out if it has
// not finished by `deadline`, a time point or a duration from now (asyncio.wait_for). The child has finished
// unwinding when this returns.
template <class F>
auto with_timeout(Deadline deadline, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
  auto task = spawn(FiberOptions{"with_timeout"}, std::forward<F>(f), where);
  // However this scope is left (the deadline, or the caller itself being cancelled), the child is
  // cancelled and gone before it returns: its body may reference the caller's locals.
  struct Reap {
    decltype(task)& t;
    ~Reap() {
      if (t.valid() && !t.done()) {
        t.cancel();
        detail::TaskAccess::wait_shielded(t);
      }
    }
  } reap{task};
  if (!task.wait_until(deadline)) {
    task.cancel();
    detail::TaskAccess::wait_shielded(task);
    throw std::system_error(std::make_error_code(std::errc::timed_out),
                            "skein::with_timeout: the body did not finish in time");
  }
  return task.join();
}

}  // namespace skein
