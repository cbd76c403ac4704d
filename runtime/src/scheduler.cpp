#include "scheduler.hpp"

#include "switch.hpp"

#include <skein/run.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <system_error>
#include <thread>
#include <utility>

namespace skein::detail {

namespace {

// Idle step when no I/O layer is installed: sleep in the kernel until the next timer.
class ClockDriver final : public Driver {
 public:
  void wait_until(TimePoint deadline) noexcept override {
    if (deadline == no_deadline) return;  // nothing can wake us; the loop will see a deadlock
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    // steady_clock is CLOCK_MONOTONIC in libstdc++ and libc++.
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
  }
  void poll() noexcept override {}
  std::size_t waiters() const noexcept override { return 0; }
};

bool is_cancellation(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const std::system_error& s) {
    return s.code() == std::errc::operation_canceled;
  } catch (...) {
    return false;
  }
}

// An exception that ended a detached fiber would otherwise vanish (gevent prints these too).
void report_unobserved(const Fiber& f) noexcept {
  if (!f.error || f.error_observed || is_cancellation(f.error)) return;
  try {
    std::rethrow_exception(f.error);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "skein: fiber #%llu \"%s\" ended with an exception nobody joined: %s\n",
                 static_cast<unsigned long long>(f.id), f.name.c_str(), e.what());
  } catch (...) {
    std::fprintf(stderr, "skein: fiber #%llu \"%s\" ended with a non-standard exception nobody joined\n",
                 static_cast<unsigned long long>(f.id), f.name.c_str());
  }
}

}  // namespace

// ---- timer heap ---------------------------------------------------------------------------

void TimerHeap::push(Fiber* f) {
  heap_.emplace_back();
  sift_up(heap_.size() - 1, Entry{f->deadline, seq_++, f});
}

void TimerHeap::erase(Fiber* f) noexcept {
  const std::size_t i = f->timer_slot;
  f->timer_slot = Fiber::no_timer;
  const Entry last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;
  if (i > 0 && last < heap_[(i - 1) / 2])
    sift_up(i, last);
  else
    sift_down(i, last);
}

Fiber* TimerHeap::pop() noexcept {
  Fiber* f = heap_.front().fiber;
  erase(f);
  return f;
}

void TimerHeap::sift_up(std::size_t i, Entry e) noexcept {
  while (i > 0) {
    const std::size_t parent = (i - 1) / 2;
    if (!(e < heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, e);
}

void TimerHeap::sift_down(std::size_t i, Entry e) noexcept {
  const std::size_t n = heap_.size();
  for (;;) {
    std::size_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && heap_[child + 1] < heap_[child]) ++child;
    if (!(heap_[child] < e)) break;
    place(i, heap_[child]);
    i = child;
  }
  place(i, e);
}

// ---- scheduler ----------------------------------------------------------------------------

Scheduler::Scheduler() : driver_(std::make_unique<ClockDriver>()) {
  if (tl_scheduler)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::run: this thread already runs a scheduler");
  tl_scheduler = this;
}

Scheduler::~Scheduler() {
  tl_scheduler = nullptr;
}

void Scheduler::start(Fiber* f, Stack stack, std::string name) noexcept {
  f->stack = stack;
  f->scheduler = this;
  f->id = next_id_++;
  f->name = std::move(name);
  prepare_context(*f, f, &Scheduler::fiber_entry);
  f->next_live = live_;
  if (live_) live_->prev_live = f;
  live_ = f;
  ++live_count_;
  ready_.push(f);
}

void Scheduler::fiber_entry(Transfer t) noexcept {
  auto& f = static_cast<Fiber&>(enter_context(t));
  if (f.cancel_requested)
    f.skip_body();
  else
    f.run_body();
  f.state = FiberState::done;
  exit_context(f, *f.scheduler->home_);
}

void Scheduler::loop() {
  home_ = &running_context();
  while (live_count_ > 0) {
    // One round: the fibers ready now. Those they make ready run next round, after timers and
    // I/O have had their turn, so a busy fiber cannot starve a sleeping one.
    for (std::size_t n = ready_.size(); n > 0; --n) {
      Fiber* f = ready_.pop();
      // With thousands of fibers their records and saved frames are cold (each lives on its own
      // stack). Start loading the next two while this one runs: the next one's saved frame (its
      // record was prefetched a turn ago) and the record of the one after it.
      if (Fiber* next = ready_.front()) {
        __builtin_prefetch(next->resume_at->sp);
        __builtin_prefetch(static_cast<char*>(next->resume_at->sp) + 64);
        if (Fiber* after = next->next_ready) {
          __builtin_prefetch(after);
          __builtin_prefetch(reinterpret_cast<char*>(after) + 64);
        }
      }
      resume(f);
    }
    if (live_count_ == 0) break;
    if (!timers_.empty()) fire_timers(Clock::now());
    if (!ready_.empty()) {
      if (driver_->waiters() > 0) driver_->poll();
      continue;
    }
    if (!timers_.empty())
      driver_->wait_until(timers_.top()->deadline);
    else if (driver_->waiters() > 0)
      driver_->wait_until(no_deadline);
    else
      recover_deadlock();
  }
}

void Scheduler::finish(Fiber* f) noexcept {
  (f->prev_live ? f->prev_live->next_live : live_) = f->next_live;
  if (f->next_live) f->next_live->prev_live = f->prev_live;
  --live_count_;
  while (WaitNode* n = f->joiners.pop_front()) wake(n->fiber, Wake::notified);
  if (f->detached) report_unobserved(*f);
  release(f);
}

void Scheduler::wake(Fiber* f, Wake why) noexcept {
  if (f->state != FiberState::parked) return;
  if (f->timer_slot != Fiber::no_timer) timers_.erase(f);
  if (why != Wake::notified && f->unlink) f->unlink(f, f->unlink_arg);
  f->wake = why;
  f->state = FiberState::ready;
  ready_.push(f);
}

void Scheduler::cancel(Fiber* f) noexcept {
  f->cancel_requested = true;
  if (!f->shielded) wake(f, Wake::cancelled);
}

void Scheduler::fire_timers(TimePoint now) noexcept {
  while (!timers_.empty() && timers_.top()->deadline <= now) wake(timers_.top(), Wake::timed_out);
}

void Scheduler::recover_deadlock() noexcept {
  // Every live fiber is parked and nothing can wake them. Go would crash; we cancel the newest
  // one (its wait throws operation_canceled) and let the loop see whether that unblocks the rest.
  Fiber* f = live_;
  while (f && (f->state != FiberState::parked || f->shielded)) f = f->next_live;
  if (!f) {
    // Only shielded waits are left, each for a fiber that can never finish: nothing to cancel.
    std::fputs("skein: deadlock among shielded waits; aborting\n", stderr);
    std::abort();
  }
  std::fprintf(stderr,
               "skein: deadlock: %zu fiber(s) parked with nothing left to wake them; cancelling the newest, "
               "#%llu \"%s\"\n",
               live_count_, static_cast<unsigned long long>(f->id), f->name.c_str());
  cancel(f);
}

// ---- the detail API -----------------------------------------------------------------------

Fiber* current_fiber() noexcept {
  return tl_scheduler ? tl_scheduler->running() : nullptr;
}

Wake park(TimePoint deadline, Unlink unlink, void* arg) noexcept {
  return tl_scheduler->park_running(deadline, unlink, arg);
}

void unpark(Fiber* fiber) noexcept {
  fiber->scheduler->wake(fiber, Wake::notified);
}

void cancel(Fiber* fiber) noexcept {
  // A finished fiber's scheduler may be gone (a Task kept past skein::run).
  if (fiber->state != FiberState::done) fiber->scheduler->cancel(fiber);
}

void unlink_wait_node(Fiber*, void* node) noexcept {
  auto* n = static_cast<WaitNode*>(node);
  if (n->list) n->list->remove(n);
}

void throw_if_interrupted(Wake w) {
  if (w == Wake::cancelled)
    throw std::system_error(std::make_error_code(std::errc::operation_canceled), "skein: fiber cancelled");
  if (w == Wake::timed_out)
    throw std::system_error(std::make_error_code(std::errc::timed_out), "skein: deadline passed");
}

void release(Fiber* fiber) noexcept {
  if (--fiber->refs > 0) return;
  const Stack stack = fiber->stack;
  fiber->~Fiber();
  release_stack(stack);
}

void release_handle(Fiber* fiber) noexcept {
  fiber->detached = true;
  if (fiber->state == FiberState::done) report_unobserved(*fiber);
  release(fiber);
}

Scheduler& scheduler_for(const char* what) {
  if (!tl_scheduler)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            std::string(what) + ": no scheduler on this thread (call it inside skein::run)");
  return *tl_scheduler;
}

void start_fiber(Scheduler& scheduler, Fiber* fiber, Stack stack, std::string name) noexcept {
  scheduler.start(fiber, stack, std::move(name));
}

bool wait_done(Fiber* fiber, TimePoint deadline) {
  if (fiber->state == FiberState::done) return true;
  Fiber* self = current_fiber();
  if (!self)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::Task: waiting for an unfinished task outside a fiber");
  if (self == fiber)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein::Task: a fiber cannot wait for itself");
  WaitNode node{self};
  fiber->joiners.push_back(&node);
  const Wake w = park(deadline, &unlink_wait_node, &node);
  if (w == Wake::notified) return true;
  if (w == Wake::timed_out) return false;
  throw_if_interrupted(w);
  return false;
}

void wait_done_shielded(Fiber* fiber) noexcept {
  Fiber* self = current_fiber();
  if (fiber->state == FiberState::done || !self || self == fiber) return;
  const bool was_shielded = self->shielded;
  self->shielded = true;
  WaitNode node{self};
  fiber->joiners.push_back(&node);
  park(no_deadline, &unlink_wait_node, &node);
  self->shielded = was_shielded;
}

RunScope::RunScope() : scheduler_(std::make_unique<Scheduler>()) {}
RunScope::~RunScope() = default;
void RunScope::loop() {
  scheduler_->loop();
}

}  // namespace skein::detail

namespace skein {

void yield() {
  detail::Scheduler* s = detail::Scheduler::current();
  if (!s || !s->running()) return;
  s->yield_running();
  if (s->running()->cancel_requested) detail::throw_if_interrupted(detail::Wake::cancelled);
}

void sleep_until(TimePoint deadline) {
  detail::Scheduler* s = detail::Scheduler::current();
  if (!s || !s->running()) {
    std::this_thread::sleep_until(deadline);
    return;
  }
  // Waking at the deadline is the point of a sleep, not an error.
  if (s->park_running(deadline, nullptr, nullptr) == detail::Wake::cancelled)
    detail::throw_if_interrupted(detail::Wake::cancelled);
}

bool in_fiber() noexcept {
  return detail::current_fiber() != nullptr;
}

namespace this_fiber {
std::uint64_t id() noexcept {
  const detail::Fiber* f = detail::current_fiber();
  return f ? f->id : 0;
}
std::string_view name() noexcept {
  const detail::Fiber* f = detail::current_fiber();
  return f ? std::string_view(f->name) : std::string_view();
}
bool cancelled() noexcept {
  const detail::Fiber* f = detail::current_fiber();
  return f && f->cancel_requested;
}
}  // namespace this_fiber

}  // namespace skein
