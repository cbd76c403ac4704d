// TaskGroup's bookkeeping and Pool's construction.
#include <skein/task_group.hpp>

#include <cstdint>
#include <system_error>
#include <vector>

namespace skein {

TaskGroup::Member::Member(TaskGroup& group, bool count) noexcept : group_(&group), counted_(count) {
  if (!count) return;
  detail::Fiber* ended[ending_batch];
  std::size_t n;
  {
    detail::SpinGuard g(group.lock_);
    ++group.live_;
    n = group.take_ended(ended, ending_batch);
  }
  for (std::size_t i = 0; i < n; ++i) detail::release(ended[i]);
}

std::size_t TaskGroup::take_ended(detail::Fiber** out, std::size_t room) noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < ending_.size() && n < room;) {
    if (ending_[i]->finished.load(std::memory_order_acquire)) {
      out[n++] = ending_[i];
      ending_[i] = ending_.back();
      ending_.pop_back();
    } else {
      ++i;
    }
  }
  return n;
}

TaskGroup::~TaskGroup() {
  reap();
}

void TaskGroup::add(Member& m, detail::Fiber* fiber) noexcept {
  m.fiber_ = fiber;
  bool cancelled;
  detail::Fiber* ended[ending_batch];
  std::size_t n;
  {
    detail::SpinGuard g(lock_);
    n = take_ended(ended, ending_batch);
    ++live_;
    m.counted_ = true;
    m.next_ = members_;
    if (members_) members_->prev_ = &m;
    members_ = &m;
    m.listed_ = true;
    cancelled = cancelling_;
  }
  for (std::size_t i = 0; i < n; ++i) detail::release(ended[i]);
  // Not run yet: it ends without running its body, as any fiber cancelled before it started.
  if (cancelled) detail::cancel(fiber);
}

void TaskGroup::enter(Member& m) {
  m.fiber_ = detail::current_fiber();
  {
    detail::SpinGuard g(lock_);
    if (!cancelling_) {
      m.next_ = members_;
      if (members_) members_->prev_ = &m;
      members_ = &m;
      m.listed_ = true;
      return;
    }
  }
  // Spawned after cancel() or a failure: as a fiber cancelled before it started, the body does
  // not run.
  detail::throw_if_interrupted(detail::Wake::cancelled);
}

namespace {
// Whether `m` lives on `f`'s stack: the member of a fiber that ends without running its body.
bool on_stack_of(const detail::Fiber* f, const void* m) noexcept {
  const auto p = reinterpret_cast<std::uintptr_t>(m);
  return f && p >= reinterpret_cast<std::uintptr_t>(f->stack.lo) &&
         p < reinterpret_cast<std::uintptr_t>(f->stack.hi());
}
}  // namespace

void TaskGroup::leave(Member& m) noexcept {
  // The child's closure is gone: none of its code runs any more. Its fiber still has to end, which
  // Task::done() reports, so a join must see it finished: the child is kept (a reference) until it
  // is seen so, by the next spawn, leave() or the join, and nothing more: its record and stack go back
  // as soon as its fiber ends (and its Task handle, if kept, lets go).
  detail::Fiber* self = m.fiber_;
  if (!self && on_stack_of(detail::current_fiber(), &m)) self = detail::current_fiber();  // skipped body
  if (self) self->refs.fetch_add(1, std::memory_order_relaxed);
  detail::Fiber* gone[ending_batch + 1];
  std::size_t n;
  detail::WaitNode* woken = nullptr;
  {
    detail::SpinGuard g(lock_);
    if (m.listed_) {
      (m.prev_ ? m.prev_->next_ : members_) = m.next_;
      if (m.next_) m.next_->prev_ = m.prev_;
    }
    n = take_ended(gone, ending_batch);
    if (self) {
      try {
        ending_.push_back(self);  // within the capacity the list has had, but for a burst
      } catch (...) {
        gone[n++] = self;  // out of memory: done() may lag the join for this one; nothing worse
      }
    }
    if (--live_ == 0 && joined_) {
      joined_ = false;
      detail::SpinGuard j(joiners_.lock);
      woken = detail::claim_all(joiners_);
    }
  }
  for (std::size_t i = 0; i < n; ++i) detail::release(gone[i]);
  // A joiner woken here may destroy the group at once: only the nodes are touched from now on.
  detail::deliver_all(woken);
}

void TaskGroup::fail(Member& m, std::exception_ptr e) noexcept {
  if (detail::is_cancellation(e)) return;
  // The failure reaches the joiner through first_error_: not an exception nobody saw, even when
  // the child's Task handle is dropped unjoined.
  m.fiber_->error_observed = true;
  {
    detail::SpinGuard g(lock_);
    if (!first_error_) first_error_ = std::move(e);
  }
  cancel();
}

void TaskGroup::cancel() noexcept {
  // Under the lock: a listed child's record is alive until its leave(), which takes the lock.
  // Nothing takes this lock while holding a wait list's, so cancelling (which may unlink a waiter)
  // here is safe.
  detail::SpinGuard g(lock_);
  cancelling_ = true;
  for (Member* m = members_; m; m = m->next_) detail::cancel(m->fiber_);
}

bool TaskGroup::wait_children(TimePoint deadline, std::exception_ptr& error) {
  for (;;) {
    detail::ThreadWaiter thread;
    detail::WaitNode node;
    std::vector<detail::Fiber*> ending;
    bool waiting = false;
    {
      detail::SpinGuard g(lock_);
      if (live_ == 0) {
        cancelling_ = false;
        error = std::exchange(first_error_, nullptr);
        ending.swap(ending_);
      } else {
        detail::attach(node, thread);
        detail::SpinGuard j(joiners_.lock);
        joiners_.push_back(&node);
        joined_ = true;
        waiting = true;
      }
    }
    if (!waiting) {
      // Every body has ended; their fibers are ending, if not ended yet (a few instructions).
      for (detail::Fiber* f : ending) {
        detail::run_shielded([f] { detail::wait_done(f, no_deadline); });
        detail::release(f);
      }
      return true;
    }
    // A fiber parks as a join of a task does: children run in this runtime, so a worker whose
    // fibers all wait here and on each other is deadlocked (single-worker detection).
    const detail::Wake w = node.fiber
                               ? detail::park(deadline, &detail::unlink_wait_node, &node)
                               : detail::block_thread(thread, deadline, &detail::unlink_wait_node, &node);
    if (w == detail::Wake::notified) continue;  // the count reached zero; a new child may have come
    if (w == detail::Wake::timed_out) return false;
    detail::throw_if_interrupted(w);
  }
}

void TaskGroup::reap() noexcept {
  cancel();
  detail::run_shielded([this] {
    std::exception_ptr dropped;
    wait_children(no_deadline, dropped);
  });
}

bool TaskGroup::join_until(Deadline deadline) {
  if (detail::Fiber* self = detail::current_fiber()) {
    detail::SpinGuard g(lock_);
    for (Member* m = members_; m; m = m->next_)
      if (m->fiber_ == self)
        throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                                "skein::TaskGroup::join: a child cannot join its own group");
  }
  std::exception_ptr e;
  try {
    if (!wait_children(deadline.at(), e)) return false;
  } catch (...) {
    // The joiner was cancelled or its TimeoutScope expired: the children go first.
    reap();
    throw;
  }
  if (e) std::rethrow_exception(e);
  return true;
}

std::size_t TaskGroup::active() const noexcept {
  detail::SpinGuard g(lock_);
  return live_;
}

Pool::Pool(std::size_t size) : size_(size), slots_(size) {
  if (size == 0)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument), "skein::Pool: size 0");
}

Pool::~Pool() {
  detail::run_shielded([this] { running_.wait(); });
}

}  // namespace skein
