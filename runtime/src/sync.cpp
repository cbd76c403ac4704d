// Mutex, ConditionVariable, Event, Semaphore, WaitGroup, Barrier and the Promise/Future state, all
// on the wait protocol of skein/detail/wait_queue.hpp.
#include <skein/sync.hpp>

#include <skein/detail/wait_queue.hpp>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <system_error>

namespace skein {

using detail::Wake;

namespace {

// Queues the caller on `list` (its lock held by `lock`, released here) and blocks until handed
// what it waits for (true), its deadline (false) or an interruption (throws). `why` is what a
// parked fiber records (skein::debug).
bool wait_in(detail::WaitFor why, detail::WaitList& list, std::unique_lock<detail::SpinLock>& lock,
             TimePoint deadline) {
  detail::ThreadWaiter thread;
  detail::WaitNode node;
  detail::attach(node, thread);
  list.push_back(&node);
  lock.unlock();
  const Wake w = detail::block(why, node, deadline, &detail::unlink_wait_node, &node);
  if (w == Wake::timed_out) return false;
  detail::throw_if_interrupted(w);
  return true;
}

// Wakes every waiter on `list`; `lock` holds its lock and is released here.
void notify_all_in(detail::WaitList& list, std::unique_lock<detail::SpinLock>& lock) noexcept {
  detail::WaitNode* woken = detail::claim_all(list);
  lock.unlock();
  detail::deliver_all(woken);
}

// The identity of the caller, for Mutex's recursion check: its fiber, or a token per plain thread.
const void* self_id() noexcept {
  static constinit thread_local char thread_token = 0;
  if (const detail::Fiber* f = detail::current_fiber()) return f;
  return &thread_token;
}

[[noreturn]] void invalid(const char* what) {
  throw std::system_error(std::make_error_code(std::errc::invalid_argument), what);
}

}  // namespace

// ---- Mutex ----------------------------------------------------------------------------------

void Mutex::lock() {
  try_lock_until(no_deadline);
}

bool Mutex::try_lock() noexcept {
  std::lock_guard g(waiters_.lock);
  if (locked_) return false;
  locked_ = true;
  owner_.store(self_id(), std::memory_order_relaxed);
  return true;
}

bool Mutex::try_lock_until(Deadline deadline) {
  const void* self = self_id();
  std::unique_lock g(waiters_.lock);
  if (!locked_) {
    locked_ = true;
    owner_.store(self, std::memory_order_relaxed);
    return true;
  }
  if (owner_.load(std::memory_order_relaxed) == self)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein::Mutex::lock: the caller already holds this mutex");
  // Woken means handed the lock: unlock() leaves locked_ set for the waiter it picks.
  if (!wait_in(detail::wait_for(debug::WaitReason::mutex, this), waiters_, g, deadline.at())) return false;
  owner_.store(self, std::memory_order_relaxed);
  return true;
}

void Mutex::unlock() noexcept {
  detail::Wakeup next;
  {
    std::lock_guard g(waiters_.lock);
    if (!locked_) {
      std::fputs("skein::Mutex::unlock: the mutex is not locked; aborting\n", stderr);
      std::abort();
    }
    owner_.store(nullptr, std::memory_order_relaxed);
    next = detail::claim_one(waiters_);
    if (!next) locked_ = false;
  }
  detail::deliver(next);
}

void Mutex::lock_uninterruptible() noexcept {
  detail::run_shielded([this] { lock(); });
}

// ---- ConditionVariable ----------------------------------------------------------------------

void ConditionVariable::wait(std::unique_lock<Mutex>& lock) {
  wait_until(lock, no_deadline);
}

bool ConditionVariable::wait_until(std::unique_lock<Mutex>& lock, Deadline deadline) {
  if (!lock.owns_lock())
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::ConditionVariable::wait: the lock is not held");
  detail::ThreadWaiter thread;
  detail::WaitNode node;
  detail::attach(node, thread);
  {
    // Queued before the mutex is released: a notify issued right after the unlock finds it.
    std::lock_guard g(waiters_.lock);
    waiters_.push_back(&node);
  }
  Mutex& mutex = *lock.mutex();
  lock.unlock();
  const Wake w = detail::block(detail::wait_for(debug::WaitReason::condvar, this), node, deadline.at(),
                               &detail::unlink_wait_node, &node);
  mutex.lock_uninterruptible();
  lock = std::unique_lock<Mutex>(mutex, std::adopt_lock);
  if (w == Wake::timed_out) return false;
  detail::throw_if_interrupted(w);
  return true;
}

void ConditionVariable::notify_one() noexcept {
  detail::Wakeup next;
  {
    std::lock_guard g(waiters_.lock);
    next = detail::claim_one(waiters_);
  }
  detail::deliver(next);
}

void ConditionVariable::notify_all() noexcept {
  std::unique_lock g(waiters_.lock);
  notify_all_in(waiters_, g);
}

// ---- Event ----------------------------------------------------------------------------------

void Event::set() noexcept {
  std::unique_lock g(waiters_.lock);
  set_.store(true, std::memory_order_release);
  notify_all_in(waiters_, g);
}

void Event::clear() noexcept {
  std::lock_guard g(waiters_.lock);
  set_.store(false, std::memory_order_relaxed);
}

bool Event::is_set() const noexcept {
  return set_.load(std::memory_order_acquire);
}

void Event::wait() {
  wait_until(no_deadline);
}

bool Event::wait_until(Deadline deadline) {
  if (is_set()) return true;
  std::unique_lock g(waiters_.lock);
  if (set_.load(std::memory_order_relaxed)) return true;
  return wait_in(detail::wait_for(debug::WaitReason::event, this), waiters_, g, deadline.at());
}

// ---- Semaphore ------------------------------------------------------------------------------

void Semaphore::acquire() {
  try_acquire_until(no_deadline);
}

bool Semaphore::try_acquire() noexcept {
  std::lock_guard g(waiters_.lock);
  if (permits_ == 0) return false;
  --permits_;
  return true;
}

bool Semaphore::try_acquire_until(Deadline deadline) {
  std::unique_lock g(waiters_.lock);
  // Permits are handed to waiters directly, so a free permit means nobody is queued.
  if (permits_ > 0) {
    --permits_;
    return true;
  }
  return wait_in(detail::wait_for(debug::WaitReason::semaphore, this), waiters_, g, deadline.at());
}

void Semaphore::release(std::size_t n) noexcept {
  std::unique_lock g(waiters_.lock);
  detail::WaitNode* woken = nullptr;
  detail::WaitNode** tail = &woken;
  for (; n > 0; --n) {
    detail::WaitNode* w = detail::claim_front(waiters_);
    if (!w) break;
    *tail = w;
    tail = &w->next;
  }
  *tail = nullptr;
  permits_ += n;
  g.unlock();
  detail::deliver_all(woken);
}

std::size_t Semaphore::available() const noexcept {
  std::lock_guard g(waiters_.lock);
  return permits_;
}

// ---- WaitGroup ------------------------------------------------------------------------------

void WaitGroup::add(std::ptrdiff_t n) {
  std::unique_lock g(waiters_.lock);
  // Negated in unsigned arithmetic: -PTRDIFF_MIN does not fit a ptrdiff_t.
  const std::size_t magnitude =
      n < 0 ? std::size_t{0} - static_cast<std::size_t>(n) : static_cast<std::size_t>(n);
  if (n < 0 && magnitude > count_) invalid("skein::WaitGroup: count would go below zero");
  count_ = n < 0 ? count_ - magnitude : count_ + magnitude;
  if (count_ == 0) notify_all_in(waiters_, g);
}

void WaitGroup::wait() {
  wait_until(no_deadline);
}

bool WaitGroup::wait_until(Deadline deadline) {
  std::unique_lock g(waiters_.lock);
  if (count_ == 0) return true;
  return wait_in(detail::wait_for(debug::WaitReason::wait_group, this), waiters_, g, deadline.at());
}

std::size_t WaitGroup::count() const noexcept {
  std::lock_guard g(waiters_.lock);
  return count_;
}

// ---- Barrier --------------------------------------------------------------------------------

struct Barrier::Node : detail::WaitNode {
  Barrier* barrier = nullptr;
  bool withdrawn = false;  // the timeout or cancel took the arrival back
};

Barrier::Barrier(std::size_t parties) : parties_(parties) {
  if (parties == 0) invalid("skein::Barrier: zero parties");
}

void Barrier::withdraw(detail::Fiber*, void* node) noexcept {
  auto* n = static_cast<Node*>(node);
  std::lock_guard g(n->barrier->waiters_.lock);
  // Still queued means the phase has not completed: take the arrival back. Not queued means the
  // phase completed with it (its wake-up lost the race with this timeout or cancel).
  if (!n->linked) return;
  n->barrier->waiters_.remove(n);
  --n->barrier->arrived_;
  n->withdrawn = true;
}

bool Barrier::arrive_and_wait() {
  return *arrive_and_wait_until(no_deadline);
}

std::optional<bool> Barrier::arrive_and_wait_until(Deadline deadline) {
  std::unique_lock g(waiters_.lock);
  if (++arrived_ == parties_) {
    arrived_ = 0;
    notify_all_in(waiters_, g);
    return true;
  }
  detail::ThreadWaiter thread;
  Node node;
  node.barrier = this;
  detail::attach(node, thread);
  waiters_.push_back(&node);
  g.unlock();
  const Wake w = detail::block(detail::wait_for(debug::WaitReason::barrier, this), node, deadline.at(),
                               &Barrier::withdraw, &node);
  // Not withdrawn: the phase completed with this arrival just as the wait was ended otherwise. It
  // counts as released (a cancel or scope then takes effect at the caller's next wait).
  if (w != Wake::notified && !node.withdrawn) return false;
  if (w == Wake::timed_out) return std::nullopt;
  detail::throw_if_interrupted(w);
  return false;
}

// ---- Promise / Future -----------------------------------------------------------------------

namespace detail {

bool OnceState::wait_until(TimePoint deadline) {
  if (ready()) return true;
  std::unique_lock g(waiters_.lock);
  if (ready_.load(std::memory_order_relaxed)) return true;
  return wait_in(wait_for(debug::WaitReason::future, this), waiters_, g, deadline);
}

void OnceState::already_satisfied() {
  throw_future_error(std::future_errc::promise_already_satisfied, "skein::Promise: already satisfied");
}

void throw_future_error(std::future_errc e, const char*) {
  throw std::future_error(e);
}

}  // namespace detail

}  // namespace skein
