// TaskGroup's bookkeeping and Pool's construction.
#include <skein/task_group.hpp>

#include <algorithm>
#include <system_error>

namespace skein {

TaskGroup::~TaskGroup() {
  cancel();
  wait_children(true);
}

void TaskGroup::track(detail::Fiber* child) {
  child->refs.fetch_add(1, std::memory_order_relaxed);
  std::vector<detail::Fiber*> finished;
  bool cancel_it;
  {
    detail::SpinGuard g(lock_);
    if (joining_ == 0 && children_.size() >= prune_at_) {
      // A long-lived group (a server's connections) must not keep every child it ever had.
      auto done = std::partition(children_.begin(), children_.end(), [](detail::Fiber* f) {
        return !f->finished.load(std::memory_order_acquire);
      });
      finished.assign(done, children_.end());
      children_.erase(done, children_.end());
      prune_at_ = std::max<std::size_t>(16, 2 * children_.size());
    }
    children_.push_back(child);
    cancel_it = cancelling_;
  }
  if (cancel_it) detail::cancel(child);
  for (detail::Fiber* f : finished) {
    f->error_observed = true;  // as in wait_children
    detail::release(f);
  }
}

void TaskGroup::fail(std::exception_ptr e) noexcept {
  if (detail::is_cancellation(e)) return;
  {
    detail::SpinGuard g(lock_);
    if (!first_error_) first_error_ = std::move(e);
  }
  cancel();
}

void TaskGroup::cancel() noexcept {
  // Under the lock: a joiner may release finished children the moment it is let go. Nothing takes
  // this lock while holding a wait list's, so cancelling (which may unlink a waiter) here is safe.
  detail::SpinGuard g(lock_);
  cancelling_ = true;
  for (detail::Fiber* f : children_) detail::cancel(f);
}

bool TaskGroup::wait_children(bool shielded, TimePoint deadline) {
  // The children stay listed while they are waited for, so a failing one can still cancel the
  // rest; pruning is off meanwhile so the cursor stays valid.
  struct Joining {
    TaskGroup& g;
    explicit Joining(TaskGroup& group) : g(group) {
      detail::SpinGuard lock(g.lock_);
      ++g.joining_;
    }
    ~Joining() {
      detail::SpinGuard lock(g.lock_);
      --g.joining_;
    }
  } joining(*this);
  for (std::size_t next = 0;;) {
    detail::Fiber* f = nullptr;
    std::vector<detail::Fiber*> done;
    {
      detail::SpinGuard g(lock_);
      while (next < children_.size() && children_[next]->finished.load(std::memory_order_acquire)) ++next;
      if (next < children_.size())
        f = children_[next];
      else
        done.swap(children_);
    }
    if (!f) {
      for (detail::Fiber* d : done) {
        // Failures reach the joiner through first_error_; cancellations are no news.
        d->error_observed = true;
        detail::release(d);
      }
      return true;
    }
    if (shielded)
      detail::wait_done_shielded(f);
    else if (!detail::wait_done(f, deadline))
      return false;
  }
}

bool TaskGroup::join_until(Deadline deadline) {
  try {
    if (!wait_children(false, deadline.at())) return false;
  } catch (...) {
    // The joiner was cancelled or its TimeoutScope expired: the children go first.
    cancel();
    wait_children(true);
    detail::SpinGuard g(lock_);
    cancelling_ = false;
    first_error_ = nullptr;
    throw;
  }
  std::exception_ptr e;
  {
    detail::SpinGuard g(lock_);
    cancelling_ = false;
    e = std::exchange(first_error_, nullptr);
  }
  if (e) std::rethrow_exception(e);
  return true;
}

std::size_t TaskGroup::active() const noexcept {
  detail::SpinGuard g(lock_);
  return static_cast<std::size_t>(std::count_if(children_.begin(), children_.end(), [](detail::Fiber* f) {
    return !f->finished.load(std::memory_order_acquire);
  }));
}

Pool::Pool(std::size_t size) : size_(size), slots_(size) {
  if (size == 0)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument), "skein::Pool: size 0");
}

Pool::~Pool() {
  detail::run_shielded([this] { running_.wait(); });
}

}  // namespace skein
