// Synchronisation between fibers — on one worker, on different workers, and with plain threads:
// Mutex, ConditionVariable, Event, Semaphore, WaitGroup, Barrier, Promise/Future. A fiber that
// waits parks only itself; a plain thread that waits blocks. Waiters are served first come, first
// served, and a release hands the lock or permit straight to the oldest waiter, so a fiber that
// unlocks and re-locks in a loop cannot starve the others.
//
// Errors (docs/errors.md): every blocking call is a cancellation point and throws
// std::system_error(operation_canceled) when the waiting fiber is cancelled, and timed_out when an
// enclosing TimeoutScope expires. A call's own deadline (the *_until / *_for forms) is not an
// error: they return false. Misuse throws std::system_error(invalid_argument): a negative
// WaitGroup count, a Barrier of zero. Promise/Future speak std::future's language instead:
// std::future_error with promise_already_satisfied, broken_promise (the Promise died
// unsatisfied) or no_state (an empty handle). A Promise's own exception is rethrown unchanged by Future::get.
#pragma once

#include <skein/detail/wait_queue.hpp>
#include <skein/time.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

namespace skein {

// A mutual-exclusion lock that parks fibers (std::mutex blocks the whole worker). Meets the
// standard Lockable and TimedLockable requirements: std::lock_guard, std::unique_lock and
// std::scoped_lock work with it. Not recursive, and it checks: lock() or try_lock_until() from the
// fiber (or plain thread) that holds it throws resource_deadlock_would_occur instead of waiting
// forever, and unlock() of a mutex nobody holds aborts with a message (a broken invariant: unlock
// runs in destructors, and carrying on would let two owners in). Unlock only what you locked.
class Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // Waits until the lock is the caller's. Throws resource_deadlock_would_occur if it is already.
  void lock();
  // Takes the lock if it is free and nobody is queued for it; never waits.
  bool try_lock() noexcept;
  // As lock(), but gives up at `deadline`: false if the lock was not acquired by then.
  bool try_lock_until(Deadline deadline);
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> d) {
    return try_lock_until(d);
  }
  // Releases the lock, handing it to the oldest waiter if there is one. Any thread or fiber (a
  // std::unique_lock may move); aborts if the mutex is not locked.
  void unlock() noexcept;

 private:
  friend class ConditionVariable;
  // Acquires even if the caller is cancelled or its TimeoutScope has expired (a condition wait
  // must return holding the lock, whatever ended it).
  void lock_uninterruptible() noexcept;

  detail::WaitList waiters_;  // its lock guards locked_
  bool locked_ = false;
  // Who holds it (a Fiber, or a plain thread's token), for the recursion check; null while a
  // hand-off is on its way to a waiter, which then records itself. Atomic because the new owner
  // writes it outside the lock; only its own owner can ever find itself there.
  std::atomic<const void*> owner_{nullptr};
};

// Waits for a condition guarded by a Mutex, like std::condition_variable. Notifications reach
// only the waiters queued at the time (no spurious wake-ups, but use the predicate forms anyway:
// the condition may change again before the woken waiter re-locks).
class ConditionVariable {
 public:
  ConditionVariable() = default;
  ConditionVariable(const ConditionVariable&) = delete;
  ConditionVariable& operator=(const ConditionVariable&) = delete;

  // Unlocks `lock`, waits for a notification, re-locks. `lock` is held again when this returns or
  // throws; a `lock` that does not hold its mutex throws operation_not_permitted.
  void wait(std::unique_lock<Mutex>& lock);
  // As wait(), until `deadline`: false if it passed without a notification.
  bool wait_until(std::unique_lock<Mutex>& lock, Deadline deadline);

  // Waits until `pred()` holds (checked with the lock held).
  template <class Pred>
  void wait(std::unique_lock<Mutex>& lock, Pred pred) {
    while (!pred()) wait(lock);
  }
  // Waits until `pred()` holds or `deadline` passes; returns pred()'s last value.
  template <class Pred>
  bool wait_until(std::unique_lock<Mutex>& lock, Deadline deadline, Pred pred) {
    while (!pred())
      if (!wait_until(lock, deadline)) return pred();
    return true;
  }
  // As wait(), for at most `d`: false if it passed without a notification.
  template <class Rep, class Period>
  bool wait_for(std::unique_lock<Mutex>& lock, std::chrono::duration<Rep, Period> d) {
    return wait_until(lock, d);
  }
  template <class Rep, class Period, class Pred>
  bool wait_for(std::unique_lock<Mutex>& lock, std::chrono::duration<Rep, Period> d, Pred pred) {
    return wait_until(lock, Deadline(d), std::move(pred));
  }

  // Wakes the oldest waiter, if any.
  void notify_one() noexcept;
  // Wakes every waiter.
  void notify_all() noexcept;

 private:
  detail::WaitList waiters_;
};

// A flag fibers wait for (gevent's Event, asyncio.Event): set() wakes every waiter and lets later
// waits through until clear().
class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // Sets the flag and wakes every waiter.
  void set() noexcept;
  // Lowers the flag; later waits wait again.
  void clear() noexcept;
  bool is_set() const noexcept;
  // Waits until the flag is set.
  void wait();
  // Waits until the flag is set or `deadline` passes: true if it is set.
  bool wait_until(Deadline deadline);
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) {
    return wait_until(d);
  }

 private:
  detail::WaitList waiters_;  // its lock guards set_ for writers
  std::atomic<bool> set_{false};
};

// A counting semaphore (gevent's Semaphore, asyncio.Semaphore): acquire takes a permit, waiting
// for one if none is free; release returns permits to the oldest waiters first.
class Semaphore {
 public:
  explicit Semaphore(std::size_t permits) noexcept : permits_(permits) {}
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  // Waits for a permit and takes it.
  void acquire();
  // Takes a permit if one is free and nobody is queued; never waits.
  bool try_acquire() noexcept;
  // As acquire(), giving up at `deadline`: false if no permit was taken.
  bool try_acquire_until(Deadline deadline);
  template <class Rep, class Period>
  bool try_acquire_for(std::chrono::duration<Rep, Period> d) {
    return try_acquire_until(d);
  }
  // Returns `n` permits: each goes to a waiter if one is queued, else to the pool.
  void release(std::size_t n = 1) noexcept;
  // Permits free right now (a snapshot).
  std::size_t available() const noexcept;

 private:
  mutable detail::WaitList waiters_;  // its lock guards permits_
  std::size_t permits_;
};

// Waits for a number of jobs to finish (Go's sync.WaitGroup): add() before starting each, done()
// as each ends, wait() until the count is back to zero.
class WaitGroup {
 public:
  WaitGroup() = default;
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  // Adds `n` (may be negative) to the count; reaching zero wakes every waiter. Throws
  // invalid_argument, changing nothing, if the count would go below zero.
  void add(std::ptrdiff_t n = 1);
  // add(-1).
  void done() { add(-1); }
  // Waits until the count is zero.
  void wait();
  // As wait(), until `deadline`: true if the count reached zero.
  bool wait_until(Deadline deadline);
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) {
    return wait_until(d);
  }
  std::size_t count() const noexcept;

 private:
  mutable detail::WaitList waiters_;  // its lock guards count_
  std::size_t count_ = 0;
};

// A reusable rendezvous of `parties` waiters (std::barrier without a completion step): each
// arrive_and_wait() waits until all have arrived, then all are released and the next phase starts.
class Barrier {
 public:
  // Throws invalid_argument for zero parties.
  explicit Barrier(std::size_t parties);
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  // Arrives and waits for the rest of this phase. True for exactly one caller per phase (the last
  // to arrive), like Python's threading.Barrier index 0.
  bool arrive_and_wait();
  // As arrive_and_wait(), until `deadline`. If the deadline passes (or the caller is cancelled)
  // first, the arrival is withdrawn and it returns std::nullopt (or throws); the phase then still
  // needs a party. (If the phase completed just as the wait ended otherwise, it counts as
  // released and returns false; a cancel then takes effect at the next wait.)
  std::optional<bool> arrive_and_wait_until(Deadline deadline);
  template <class Rep, class Period>
  std::optional<bool> arrive_and_wait_for(std::chrono::duration<Rep, Period> d) {
    return arrive_and_wait_until(d);
  }
  std::size_t parties() const noexcept { return parties_; }

 private:
  struct Node;
  static void withdraw(detail::Fiber*, void* node) noexcept;

  detail::WaitList waiters_;  // its lock guards arrived_
  const std::size_t parties_;
  std::size_t arrived_ = 0;
};

namespace detail {
// What a Promise and its Futures share, without the value: readiness, the error, the waiters.
class OnceState {
 public:
  // Waits until published or `deadline`: true if published.
  bool wait_until(TimePoint deadline);
  bool ready() const noexcept { return ready_.load(std::memory_order_acquire); }
  // Runs `store` (which sets the value or error) and wakes every waiter; throws
  // promise_already_satisfied, without running it, if published already.
  template <class Store>
  void publish(Store&& store) {
    WaitNode* woken;
    {
      std::lock_guard lock(waiters_.lock);
      if (ready_.load(std::memory_order_relaxed)) already_satisfied();
      store();
      ready_.store(true, std::memory_order_release);
      woken = claim_all(waiters_);
    }
    deliver_all(woken);
  }
  std::exception_ptr error;  // written once, before ready_

 private:
  [[noreturn]] static void already_satisfied();
  WaitList waiters_;  // its lock orders publishing against joining the waiters
  std::atomic<bool> ready_{false};
};

template <class T>
struct FutureState : OnceState {
  std::optional<T> value;
};
template <>
struct FutureState<void> : OnceState {};

[[noreturn]] void throw_future_error(std::future_errc e, const char* what);
}  // namespace detail

template <class T>
class Promise;

// The reading end of a Promise (gevent's AsyncResult, a shared std::future): copyable, any number
// of fibers and threads may wait on copies of one Future, and get() may be called repeatedly.
template <class T>
class Future {
 public:
  Future() noexcept = default;

  bool valid() const noexcept { return state_ != nullptr; }
  // True once the promise has a value or an exception.
  bool ready() const noexcept { return state_ && state_->ready(); }
  // Waits until ready.
  void wait() const { wait_until(no_deadline); }
  // Waits until ready or `deadline`: true if ready.
  bool wait_until(Deadline deadline) const { return checked().wait_until(deadline.at()); }
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const {
    return wait_until(d);
  }
  // Waits until ready, then returns the value (a reference into the shared state, alive as long
  // as a Future or the Promise is) or rethrows the exception.
  std::add_lvalue_reference_t<const T> get() const {
    wait();
    if (state_->error) std::rethrow_exception(state_->error);
    if constexpr (!std::is_void_v<T>) return *state_->value;
  }

 private:
  friend class Promise<T>;
  explicit Future(std::shared_ptr<detail::FutureState<T>> s) noexcept : state_(std::move(s)) {}
  detail::FutureState<T>& checked() const {
    if (!state_) detail::throw_future_error(std::future_errc::no_state, "skein::Future: empty");
    return *state_;
  }
  std::shared_ptr<detail::FutureState<T>> state_;
};

// The writing end: set a value or an exception once; every Future of it wakes. A Promise destroyed
// unsatisfied leaves its Futures a broken_promise error. Move-only.
template <class T>
class Promise {
 public:
  Promise() : state_(std::make_shared<detail::FutureState<T>>()) {}
  Promise(Promise&&) noexcept = default;
  Promise& operator=(Promise&& other) noexcept {
    if (this != &other) {
      abandon();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  ~Promise() { abandon(); }

  // A reader of this promise; may be called any number of times.
  Future<T> get_future() const { return Future<T>(state_); }

  template <class... Args>
  requires(!std::is_void_v<T>) void set_value(Args&&... args) {
    live().publish([&] { state_->value.emplace(std::forward<Args>(args)...); });
  }
  void set_value() requires std::is_void_v<T> {
    live().publish([] {});
  }
  void set_exception(std::exception_ptr e) {
    live().publish([&] { state_->error = std::move(e); });
  }

 private:
  detail::FutureState<T>& live() {
    if (!state_) detail::throw_future_error(std::future_errc::no_state, "skein::Promise: moved from");
    return *state_;
  }
  void abandon() noexcept {
    if (!state_ || state_->ready()) return;
    try {
      state_->publish([&] {
        state_->error = std::make_exception_ptr(std::future_error(std::future_errc::broken_promise));
      });
    } catch (...) {
      // Another thread satisfied it between the check and the publish: nothing is broken.
    }
  }
  std::shared_ptr<detail::FutureState<T>> state_;
};

}  // namespace skein
