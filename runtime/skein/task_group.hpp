// Structured concurrency: TaskGroup (asyncio.TaskGroup, a Trio nursery) keeps children from
// outliving it and fails as a whole; Pool (gevent.pool.Pool) bounds how many tasks run at once.
//
// Errors (docs/errors.md): TaskGroup::join rethrows the first exception a child ended with
// (cancellations are not failures), unchanged; Pool::spawn and the joins are cancellation points
// (operation_canceled) and honour TimeoutScope (timed_out). A join's own deadline is not an
// error: join_until returns false. Pool(0) throws invalid_argument.
#pragma once

#include <skein/detail/wait_queue.hpp>
#include <skein/runtime.hpp>
#include <skein/source_location.hpp>
#include <skein/sync.hpp>
#include <skein/task.hpp>

#include <chrono>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <utility>
#include <vector>

namespace skein {

// A scope for child fibers. When one child fails, the group cancels the others; join() waits for
// every child and rethrows the first failure. Cancelling the group cancels every child. A group
// destroyed without join() cancels its children and waits for them, so no child outlives it —
// its body may safely use the spawning scope's locals. Spawn into it from any fiber; join it from
// one. Children spawned after cancel() or a failure start cancelled. A child's record and stack go
// back as its fiber ends (or when its Task handle, if kept, goes): the group holds only live
// children, and the last one or two that ended until the next spawn or child's end.
class TaskGroup {
  template <class F>
  struct Child;

 public:
  TaskGroup() = default;
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;
  ~TaskGroup();

  // Starts `f` as a child on the calling fiber's worker. The handle may be joined, or dropped:
  // the group keeps track of the child either way. `where` (defaulted) is what skein::debug reports.
  template <class F>
  auto spawn(FiberOptions options, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    // As skein::spawn, with the child listed in between: it cannot run before the caller waits.
    using C = Child<std::decay_t<F>>;
    detail::Scheduler& sched = detail::scheduler_for("skein::TaskGroup::spawn");
    auto [fiber, stack] = detail::make_fiber(options.stack_size, C(*this, false, std::forward<F>(f)));
    detail::start_fiber(sched, fiber, stack, std::move(options.name), where);
    add(static_cast<detail::FiberImpl<C, detail::fiber_result_t<C>>*>(fiber)->fn->member_, fiber);
    return detail::TaskAccess::adopt<detail::fiber_result_t<C>>(fiber);
  }
  template <class F>
  auto spawn(F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    return spawn(FiberOptions{"group child"}, std::forward<F>(f), where);
  }
  // As spawn(), on worker `worker` of the calling fiber's runtime.
  template <class F>
  auto spawn_on(std::size_t worker, FiberOptions options, F&& f,
                skein::SourceLocation where = skein::SourceLocation::current()) {
    return skein::spawn_on(worker, std::move(options),
                           Child<std::decay_t<F>>(*this, true, std::forward<F>(f)), where);
  }
  template <class F>
  auto spawn_on(std::size_t worker, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    return spawn_on(worker, FiberOptions{"group child"}, std::forward<F>(f), where);
  }

  // Waits until every child (including those spawned meanwhile) has finished, then rethrows the
  // first failure, if any, and forgets it: the group can be used again. If the waiting fiber is
  // cancelled or its TimeoutScope expires, the children are cancelled and waited for first. A
  // child joining its own group throws resource_deadlock_would_occur.
  void join() { join_until(Deadline()); }

  // As join(), giving up at `deadline`: false, with the children left running and any failure
  // kept for a later join, if some child was still running then.
  bool join_until(Deadline deadline);
  template <class Rep, class Period>
  bool join_for(std::chrono::duration<Rep, Period> d) {
    return join_until(d);
  }

  // Cancels every child, now and later spawned, until the next join() returns.
  void cancel() noexcept;

  // Children not yet finished (a snapshot).
  std::size_t active() const noexcept;

 private:
  // A child's place in its group, inside the child's closure (so on the child's own stack): counted
  // from its spawn, listed for cancel() while it may run, and gone with the closure, which the
  // fiber destroys as the body ends. Only the instance inside the fiber counts; a moved-from one
  // is inert.
  struct Member {
    Member(TaskGroup& group, bool count) noexcept;
    Member(Member&& other) noexcept
        : group_(std::exchange(other.group_, nullptr)), counted_(std::exchange(other.counted_, false)) {}
    Member& operator=(Member&&) = delete;
    ~Member() {
      if (counted_) group_->leave(*this);
    }

    TaskGroup* group_;
    bool counted_ = false;            // in live_ (leave() takes it out)
    bool listed_ = false;             // in members_ (under the group's lock)
    detail::Fiber* fiber_ = nullptr;  // set when listed
    Member* prev_ = nullptr;
    Member* next_ = nullptr;
  };

  // The closure a child runs: its body, wrapped so a failure reaches the group.
  template <class F>
  struct Child {
    template <class G>
    Child(TaskGroup& group, bool count, G&& f) : member_(group, count), fn_(std::forward<G>(f)) {}

    detail::fiber_result_t<F> operator()() {
      TaskGroup& group = *member_.group_;
      if (!member_.listed_) group.enter(member_);  // spawned on another worker
      try {
        return fn_();
      } catch (...) {
        group.fail(member_, std::current_exception());
        throw;
      }
    }

    Member member_;  // first, so destroyed last: the group lets go only once the body's closure is gone
    F fn_;
  };

  // Counts and lists a child spawned on this worker, not yet run; cancels it if the group is
  // cancelling.
  void add(Member& m, detail::Fiber* fiber) noexcept;
  // Takes up to `room` children of ending_ whose fiber has ended, for release() once the lock is
  // let go: a spawn or a child's end drops them, so no ended child is kept past either.
  std::size_t take_ended(detail::Fiber** out, std::size_t room) noexcept SKEIN_REQUIRES(lock_);
  static constexpr std::size_t ending_batch = 8;
  void enter(Member& m);
  void leave(Member& m) noexcept;
  void fail(Member& m, std::exception_ptr e) noexcept;
  // Waits until no child is left; then, under the same lock, ends the round (the group stops
  // cancelling) and moves the first failure into `error`. False if `deadline` passes first; throws
  // if the wait is interrupted (not when shielded).
  bool wait_children(TimePoint deadline, std::exception_ptr& error);
  // Cancels the children and waits for them, shielded; drops any failure.
  void reap() noexcept;

  // Lock order: lock_, then joiners_.lock. Nothing takes lock_ while holding a wait list's lock.
  mutable detail::SpinLock lock_;
  Member* members_ SKEIN_GUARDED_BY(lock_) = nullptr;  // children whose body is running
  std::size_t live_ SKEIN_GUARDED_BY(lock_) = 0;       // children whose closure still exists
  std::exception_ptr first_error_ SKEIN_GUARDED_BY(lock_);
  bool cancelling_ SKEIN_GUARDED_BY(lock_) = false;
  // Children whose closure is gone and whose fiber may not have ended yet, each with a reference
  // (a few at a time: the next leave() or join drops those that have ended).
  std::vector<detail::Fiber*> ending_ SKEIN_GUARDED_BY(lock_);
  bool joined_ SKEIN_GUARDED_BY(lock_) = false;  // joiners_ may be non-empty (saves its lock)
  detail::WaitList joiners_;                     // woken when live_ drops to zero
};

// Runs at most `size` tasks at once: spawn() waits for a free slot (gevent.pool.Pool: new
// requests go to idle coroutines, with a bound). The pool's destructor waits for every
// task it started.
class Pool {
 public:
  explicit Pool(std::size_t size);
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool();

  // Waits for a free slot, then starts `f` on the calling fiber's worker; the slot frees when the
  // body ends.
  template <class F>
  auto spawn(FiberOptions options, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    slots_.acquire();
    running_.add(1);
    try {
      return skein::spawn(
          std::move(options),
          [this, fn = std::forward<F>(f)]() mutable -> detail::fiber_result_t<F> {
            struct Leave {
              Pool* pool;
              ~Leave() { pool->leave(); }
            } leave{this};
            return fn();
          },
          where);
    } catch (...) {
      leave();
      throw;
    }
  }
  template <class F>
  auto spawn(F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    return spawn(FiberOptions{"pool task"}, std::forward<F>(f), where);
  }

  // Waits until every task started so far has finished.
  void join() { running_.wait(); }
  // As join(), giving up at `deadline`: false if some task was still running then.
  bool join_until(Deadline deadline) { return running_.wait_until(deadline); }
  template <class Rep, class Period>
  bool join_for(std::chrono::duration<Rep, Period> d) {
    return join_until(d);
  }
  std::size_t size() const noexcept { return size_; }
  // Slots free right now (a snapshot).
  std::size_t free_slots() const noexcept { return slots_.available(); }
  // Tasks running right now (a snapshot).
  std::size_t running() const noexcept { return running_.count(); }

 private:
  // The last thing a task does: frees its slot, then (possibly letting ~Pool proceed) leaves.
  void leave() noexcept {
    slots_.release();
    try {
      running_.done();
    } catch (...) {
      // The count cannot go below zero: every leave() follows an add(1).
    }
  }
  std::size_t size_;
  Semaphore slots_;
  WaitGroup running_;
};

}  // namespace skein
