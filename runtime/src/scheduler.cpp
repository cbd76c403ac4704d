#include "scheduler.hpp"

#include "runtime_core.hpp"
#include "switch.hpp"

#include <skein/run.hpp>

#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <semaphore>
#include <system_error>
#include <thread>
#include <utility>

namespace skein::detail {

namespace {

// The driver when no I/O layer is installed: no fiber can wait on I/O, so the scheduler sleeps on
// its inbox's futex and never asks this one to sleep; if asked, it sleeps on the inbox's eventfd,
// as the driver contract (driver.hpp) requires.
class PollDriver final : public Driver {
 public:
  explicit PollDriver(Inbox& inbox) noexcept : inbox_(inbox) {}
  void wait_until(TimePoint deadline) noexcept override {
    pollfd p{inbox_.fd(), POLLIN, 0};
    timespec ts{};
    if (deadline != no_deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count();
      if (left > 0) ts = {static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
    }
    if (ppoll(&p, 1, deadline == no_deadline ? nullptr : &ts, nullptr) > 0) inbox_.clear_fd();
  }
  void poll() noexcept override {}
  std::size_t waiters() const noexcept override { return 0; }
  void take_remote() noexcept override {}

 private:
  Inbox& inbox_;
};

// Longer than sixteen pauses and a clock read ever take on a CPU of one's own (well under 1 us on
// current x86 and Arm cores), shorter than a time slice: a spin that sees such a gap was preempted.
constexpr std::chrono::microseconds preempted_gap{50};

// A spin-wait hint: lets the sibling hyperthread run and saves power while a line is watched.
inline void cpu_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
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

bool is_cancellation(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const std::system_error& s) {
    return s.code() == std::errc::operation_canceled;
  } catch (...) {
    return false;
  }
}

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

// ---- inbox -------------------------------------------------------------------------------

Inbox::Inbox() {
  eventfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventfd_ < 0) throw std::system_error(errno, std::generic_category(), "skein: eventfd");
}

Inbox::~Inbox() {
  ::close(eventfd_);
}

void Inbox::post(RemoteNode* n) noexcept {
  RemoteNode* head = head_.load(std::memory_order_relaxed);
  do {
    n->next = head;
  } while (!head_.compare_exchange_weak(head, n, std::memory_order_seq_cst, std::memory_order_relaxed));
  wake_sleeper();
}

void Inbox::wake_driver() noexcept {
  // Already asked and not yet taken: the consumer will call the driver anyway.
  if (driver_flag_.load(std::memory_order_seq_cst) || driver_flag_.exchange(true, std::memory_order_seq_cst))
    return;
  wake_sleeper();
}

void Inbox::wake_sleeper() noexcept {
  // Pairs with prepare_sleep() (the protocol is in scheduler.hpp): either the consumer sees the
  // node (or flag) before it sleeps, or this sees it sleeping. The plain load keeps a busy
  // consumer's producers off the line's exclusive state; the exchange lets only one producer
  // wake it.
  if (state_.load(std::memory_order_seq_cst) == awake) return;
  const std::uint32_t was = state_.exchange(awake, std::memory_order_seq_cst);
  if (was == on_futex) {
    syscall(SYS_futex, &state_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  } else if (was == in_driver) {
    // A worker whose driver has a ring wakes a ring-driven sleeper with a completion: it saves
    // the sleeper the eventfd's read (docs/io_uring.md has the figures).
    if (const int ring = wake_ring_.load(std::memory_order_acquire); ring >= 0)
      if (Scheduler* s = tl_scheduler; s && s->driver().post_wake(ring)) return;
    const std::uint64_t one = 1;
    // Cannot fail short of a bug: the counter is far from overflowing and the fd is open.
    [[maybe_unused]] const ssize_t r = ::write(eventfd_, &one, sizeof one);
  }
}

RemoteNode* Inbox::take() noexcept {
  RemoteNode* n = head_.exchange(nullptr, std::memory_order_acquire);
  RemoteNode* fifo = nullptr;
  while (n) {
    RemoteNode* next = n->next;
    n->next = fifo;
    fifo = n;
    n = next;
  }
  return fifo;
}

bool Inbox::prepare_sleep(State how) noexcept {
  // Dekker's pattern (store one's own flag, then load the other side's) needs the store ordered
  // before the load. A seq_cst store promises it, and an Arm core keeps an STLR before a later
  // LDAR, but qemu-user emulates STLR as barrier-then-store and LDAR as load-then-barrier: on an x86
  // host the load passes the store still in the store buffer, a producer pushing meanwhile reads
  // state_ as awake, and the worker sleeps with the node queued (a hang when nothing else posts to
  // it). An exchange is a read-modify-write, which qemu runs as a locked host instruction (a full
  // barrier), x86 as one already, and Arm as SWPAL (its release part is kept before the LDAR); a
  // fence would do too, but TSan cannot check fences. The producer's push is a read-modify-write
  // already.
  state_.exchange(how, std::memory_order_seq_cst);
  if (head_.load(std::memory_order_seq_cst) == nullptr && !driver_flag_.load(std::memory_order_seq_cst))
    return true;
  state_.store(awake, std::memory_order_relaxed);
  return false;
}

void Inbox::sleep_until(TimePoint deadline) noexcept {
  if (!prepare_sleep(on_futex)) return;
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, which is steady_clock's epoch: no
  // clock read to turn the deadline into a relative timeout. The kernel compares the word with
  // on_futex under its lock: a post that exchanged it first makes this return at once.
  timespec ts{};
  const timespec* timeout = nullptr;
  if (deadline != no_deadline) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    ts = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    if (ns < 0) ts = {};
    timeout = &ts;
  }
  syscall(SYS_futex, &state_, FUTEX_WAIT_BITSET_PRIVATE, std::uint32_t{on_futex}, timeout, nullptr,
          FUTEX_BITSET_MATCH_ANY);
  end_sleep();
}

void Inbox::clear_fd() noexcept {
  std::uint64_t count;
  while (::read(eventfd_, &count, sizeof count) < 0 && errno == EINTR) {
  }
}

// ---- scheduler ----------------------------------------------------------------------------

Scheduler::Scheduler(RuntimeCore& runtime, std::size_t index) : runtime_(&runtime), index_(index) {
  if (tl_scheduler)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::run: this thread already runs a scheduler");
  prepare_fiber_thread();
  idle_spin_max_ = runtime.idle_spin();
  driver_ = std::make_unique<PollDriver>(inbox_);
  thread_ = pthread_self();
  // Worker threads block asynchronous signals; the debug signal must reach them.
  sigset_t debug_set;
  sigemptyset(&debug_set);
  sigaddset(&debug_set, debug_signal());
  pthread_sigmask(SIG_UNBLOCK, &debug_set, nullptr);
  tl_scheduler = this;
}

Scheduler::~Scheduler() {
  unbind();
}

void Scheduler::unbind() noexcept {
  if (tl_scheduler == this) tl_scheduler = nullptr;
}

void Scheduler::prepare(Fiber* f, Stack stack, std::string name, skein::SourceLocation where) noexcept {
  f->stack = stack;
  f->scheduler = this;
  Scheduler* spawner = tl_scheduler;
#if SKEIN_DEBUG_RECORDS
  const Fiber* parent = spawner ? spawner->running_ : nullptr;
  f->parent_id = parent ? parent->id : 0;
  f->spawn_site = where;
#else
  (void)where;
#endif
  // Ids are small and unique in the runtime without a shared counter (RuntimeCore::id_stride):
  // worker k hands out k + 1, k + 1 + stride, ... for the fibers its own fibers spawn.
  if (spawner && spawner->runtime_ == runtime_)
    f->id = spawner->spawned_++ * runtime_->id_stride() + spawner->index_ + 1;
  else
    f->id = runtime_->next_outside_id();
  f->name = std::move(name);
  prepare_context(*f, f, &Scheduler::fiber_entry);
}

void Scheduler::start_local(Fiber* f) noexcept {
  f->next_live = live_;
  if (live_) live_->prev_live = f;
  live_ = f;
  // The runtime counts workers with live fibers, not fibers: a spawn costs no shared write.
  if (live_count_++ == 0) runtime_->retain();
#if SKEIN_DEBUG_RECORDS
  ++counters_.spawns;
#endif
  if (running_)
    next_.insert(f);
  else
    ready_.push(f);
}

void Scheduler::fiber_entry(Transfer t) noexcept {
  auto& f = static_cast<Fiber&>(enter_context(t));
  if (f.cancel_requested.load(std::memory_order_relaxed))
    f.skip_body();
  else
    f.run_body();
  f.state = FiberState::done;
  exit_context(f, *f.scheduler->home_);
}

void Scheduler::loop() {
  home_ = &running_context();
  spin_ = runtime_->spin_before_sleep();
  std::size_t due = 0;  // timer fibers at the front of ready_: they run before next_
  // The turn whose timer check was made. A turn ends only when a fiber is resumed, so one that
  // found none (the round ended) would otherwise check again at the top of every later pass
  // until one ran; the round's end looks at the timers anyway (and after a sleep, which may
  // have let some fall due, the check is made again).
  std::uint64_t timers_checked_turn = 0;
  for (;;) {
    if (spin_.count() > 0 && !(ready_.empty() && next_.empty())) busy_until_ = Clock::now() + spin_;
    // One round: the fibers ready now. Those they make ready run next round, after timers,
    // messages and I/O have had their turn, so a busy fiber cannot starve a sleeping one. The
    // exceptions, each capped at one round's worth so the round ends:
    // - a fiber the running one spawns (or a joiner its end wakes) runs next, from next_, ahead of
    //   the ready queue: fork-join trees run depth-first, with few stacks live at once;
    // - a timer that falls due mid-round does not wait for the round's end: every
    //   timer_check_interval resumptions its fiber is moved to the front and runs before anything
    //   else. Sleepers that keep falling due would otherwise extend the round for ever and starve
    //   what waits for the next one (a fiber that yielded, timers, messages, I/O).
    std::size_t n = ready_.size();
#if SKEIN_DEBUG_RECORDS
    if (n > counters_.run_queue_high_water) counters_.run_queue_high_water = n;
#endif
    std::size_t next_budget = n > next_per_round ? n : next_per_round;
    std::size_t may_join = n + next_budget;
    for (;;) {
      // The turn of the fiber about to be resumed (see heartbeat()), stored only when one is:
      // the count of resumptions, from which stats() derives the yields. Relaxed, and this
      // thread is its only writer: a plain load and store, as the countdown it replaced was.
      const std::uint64_t turn = own_heartbeat() + 1;
      if (turn % timer_check_interval == 0 && turn != timers_checked_turn) {
        timers_checked_turn = turn;
#if SKEIN_DEBUG_RECORDS
        coarse_now_ = 0;
#endif
        if (may_join > 0 && !timers_.empty()) {
          const std::size_t joined = serve_due_timers();
          n += joined;
          due += joined;
          may_join -= joined < may_join ? joined : may_join;
        }
      }
      Fiber* f;
      if (due == 0 && !next_.empty() && next_budget > 0) {
        --next_budget;
        f = next_.pop();
      } else if (n > 0) {
        --n;
        due -= due > 0;  // due fibers are the first n
        f = ready_.pop();
      } else {
        break;
      }
      // With thousands of fibers their records and saved frames are cold (each lives on its own
      // stack). Start loading the next two while this one runs: the next one's saved frame (its
      // record was prefetched a turn ago) and the record of the one after it.
      if (Fiber* next = next_.empty() ? ready_.front() : next_.front()) {
        __builtin_prefetch(next->resume_at->sp);
        __builtin_prefetch(static_cast<char*>(next->resume_at->sp) + 64);
        if (Fiber* after = next->next_ready) {
          __builtin_prefetch(after);
          __builtin_prefetch(reinterpret_cast<char*>(after) + 64);
        }
      }
      next_.new_batch();
      set_heartbeat(turn);
      resume(f);
    }
    if (inbox_.pending()) drain_inbox();
    if (stop_) break;
    // Timers due now run first in the next round (they are late already).
    due = timers_.empty() ? 0 : serve_due_timers();
    if (!ready_.empty() || !next_.empty()) {
      if (driver_->waiters() > 0) driver_->poll();
      continue;
    }
    idle();
    timers_checked_turn = 0;
  }
  answer_debug(true);
  {
    // This thread may end now: no more debug signals to it.
    std::lock_guard g(capture_mutex_);
    capture_open_ = false;
  }
}

// Nothing is ready: spin a little if messages have been arriving, then sleep until the next
// timer, I/O or a message: on the inbox's futex while no fiber waits on I/O, in the driver while
// one does.
void Scheduler::idle() {
#if SKEIN_DEBUG_RECORDS
  // Marked idle for the watchdog meanwhile; the turn is the same after (no fiber ran).
  const std::uint64_t beat = own_heartbeat();
  set_heartbeat(beat | idle_beat);
  idle_step();
  set_heartbeat(beat);
#else
  idle_step();
#endif
}

void Scheduler::idle_step() {
  if (timers_.empty() && driver_->waiters() == 0 && foreign_waits_ == 0 && live_count_ > 0 &&
      runtime_->detects_deadlock() && !inbox_.pending()) {
    recover_deadlock();
    return;
  }
  if (spin_.count() > 0 && Clock::now() < busy_until_) {
    // Still within spin_before_sleep of the last round that ran fibers: look again at once.
    driver_->poll();
    return;
  }
  const TimePoint next_timer = timers_.empty() ? no_deadline : timers_.top()->deadline;
  if (idle_spin_.count() > 0 && spin_for_message(next_timer)) return;
#if SKEIN_DEBUG_RECORDS
  // The sleep's length in the coarse clock (4.5 ns a read, steady_clock 30 ns on the AMD EPYC: an
  // I/O wait that finds its completions ready costs little more than the two reads). Each sleep
  // is then off by up to a tick, but the sum over many is right on average.
  const std::int64_t sleep_start = coarse_clock_ns();
#endif
  const TimePoint slept = idle_spin_max_.count() > 0 ? Clock::now() : TimePoint{};
  if (driver_->waiters() > 0) {
    if (!inbox_.prepare_sleep(Inbox::in_driver)) return;
    driver_->wait_until(next_timer);
    inbox_.end_sleep();
  } else {
    inbox_.sleep_until(next_timer);
  }
#if SKEIN_DEBUG_RECORDS
  ++counters_.idle_sleeps;
  coarse_now_ = coarse_clock_ns();  // also what the next park records: it would read it anyway
  counters_.slept += std::chrono::nanoseconds(coarse_now_ - sleep_start);
#endif
  // Woken by a message that came soon after this worker fell asleep (within the longest spin
  // allowed; the time counts the wake-up too): another worker talks to this one, and a spin a
  // little longer than that sleep might have caught it without either side entering the kernel.
  // Try one, unless such tries have been failing lately (see spin_for_message).
  if (idle_spin_max_.count() > 0 && idle_spin_.count() == 0 && inbox_.pending()) {
    const auto slept_for = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - slept);
    if (slept_for < idle_spin_max_) {
      if (spin_tries_skipped_ > 0) {
        --spin_tries_skipped_;
      } else {
        idle_spin_ = std::min(idle_spin_max_, slept_for + slept_for / 2);
      }
    }
  }
}

bool Scheduler::spin_for_message(TimePoint next_timer) noexcept {
  TimePoint now = Clock::now();
  const TimePoint until = next_timer < now + idle_spin_ ? next_timer : now + idle_spin_;
  // A clock read costs about as much as a few pauses: look at the clock every 16th of them.
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (inbox_.pending()) {
        // Paid off: a sleep and a wake-up saved. Spin as long next time, and longer.
        idle_spin_ = std::min(idle_spin_max_, idle_spin_ * 2);
        spin_backoff_ = 0;
        return true;
      }
      cpu_pause();
    }
    const TimePoint before = now;
    now = Clock::now();
    if (now >= next_timer) return true;  // the timer is due: not the spin's fault
    if (now - before > preempted_gap) {
      // Sixteen pauses took far longer than they do: the kernel gave this CPU to another thread
      // meanwhile. More threads want the CPUs than there are, and the one that would post may be
      // among them: spinning takes its CPU, while a sleep and a wake-up let the kernel run it
      // now. (Yielding instead parks this thread behind the others' whole time slices.)
      stop_spinning();
      return false;
    }
    if (now >= until) break;
  }
  // Found nothing: the partner is slower than a spin, or shares this CPU. Stop until a message
  // again comes soon after a sleep.
  stop_spinning();
  return false;
}

void Scheduler::stop_spinning() noexcept {
  // Spinning stopped paying: the next tries (after a message came soon after a sleep) wait for
  // 0, 1, 3, 7, ... up to 63 such messages, so a pair of workers that share one CPU (each one's spin
  // keeps the other off it) wastes a spin on at most one message in 64.
  idle_spin_ = idle_spin_.zero();
  spin_tries_skipped_ = (1u << spin_backoff_) - 1;
  if (spin_backoff_ < 6) ++spin_backoff_;
}

void Scheduler::drain_inbox() noexcept {
  if (inbox_.take_driver_flag()) driver_->take_remote();
  for (RemoteNode* n = inbox_.take(); n;) {
    RemoteNode* next = n->next;  // handling may free the node (a cancel's last reference)
    Fiber* f = n->fiber;
    switch (n->kind) {
      case RemoteNode::Kind::start:
        start_local(f);
        runtime_->release();  // the count the message held
#if SKEIN_DEBUG_RECORDS
        ++counters_.remote_spawns;
#endif
        break;
      case RemoteNode::Kind::deliver:
        make_ready(f, Wake::notified);
#if SKEIN_DEBUG_RECORDS
        ++counters_.remote_wakeups;
#endif
        break;
      case RemoteNode::Kind::cancel:
        if (f->state != FiberState::done) cancel(f);
        release(f);
        runtime_->release();
        break;
      case RemoteNode::Kind::stop:
        stop_ = true;
        break;
      case RemoteNode::Kind::debug:
        answer_debug(false);
        break;
    }
    n = next;
  }
}

void Scheduler::finish(Fiber* f) noexcept {
  SKEIN_ASSERT_STATE(f, FiberState::done, "finish");
  (f->prev_live ? f->prev_live->next_live : live_) = f->next_live;
  if (f->next_live) f->next_live->prev_live = f->prev_live;
  {
    SpinGuard lock(f->joiners.lock);
    f->finished.store(true, std::memory_order_release);
    while (WaitNode* n = f->joiners.pop_front()) {
      if (!claim(n)) continue;  // leaving on its deadline or a cancel
      if (n->wants_result && !f->result_taken) f->result_taken = n->took_result = true;
      // A joiner on this worker continues next, as if the child had returned to it.
      if (n->fiber && n->fiber->scheduler == this)
        make_ready(n->fiber, Wake::notified, true);
      else
        deliver(wakeup_of(n));
    }
  }
  release(f);
  if (--live_count_ == 0) runtime_->release();
}

void Scheduler::interrupt(Fiber* f, Wake why) noexcept {
  if (f->state != FiberState::parked) return;
  if (f->claimed.exchange(true, std::memory_order_acquire)) {
    // A waker on another thread won this wake-up; its message will make the fiber ready. The
    // deadline is moot.
    if (f->timer_slot != Fiber::no_timer) timers_.erase(f);
    return;
  }
  make_ready(f, why);
}

void Scheduler::make_ready(Fiber* f, Wake why, bool next) noexcept {
  SKEIN_ASSERT_STATE(f, FiberState::parked, "make_ready");
  if (f->timer_slot != Fiber::no_timer) timers_.erase(f);
  if (why != Wake::notified && f->unlink) f->unlink(f, f->unlink_arg);
  f->wake = why;
  f->state = FiberState::ready;
  if (next)
    next_.insert(f);
  else
    ready_.push(f);
}

void Scheduler::cancel(Fiber* f) noexcept {
  f->cancel_requested.store(true, std::memory_order_relaxed);
  if (!f->shielded) interrupt(f, Wake::cancelled);
}

void Scheduler::fire_timers(TimePoint now) noexcept {
  while (!timers_.empty() && timers_.top()->deadline <= now) {
    interrupt(timers_.top(), Wake::timed_out);
#if SKEIN_DEBUG_RECORDS
    ++counters_.timers_fired;
#endif
  }
}

namespace {

// How far CLOCK_MONOTONIC_COARSE may lag the precise clock: two of its ticks, to be safe.
std::int64_t coarse_lag_ns() noexcept {
  static const std::int64_t lag = [] {
    timespec res{};
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) != 0) return std::int64_t{1'000'000'000};
    return 2 * (std::int64_t{res.tv_sec} * 1'000'000'000 + res.tv_nsec);
  }();
  return lag;
}

}  // namespace

std::size_t Scheduler::serve_due_timers() noexcept {
  // Called every round: most find the first timer far off, which the coarse clock (a few ns,
  // never ahead of steady_clock, at most a tick behind) tells without the precise read, which
  // the kv_server profile found at 4 % of its CPU on the paravirtual AMD EPYC (docs/io_uring.md).
  const std::int64_t first =
      std::chrono::duration_cast<std::chrono::nanoseconds>(timers_.top()->deadline.time_since_epoch())
          .count();
  if (coarse_clock_ns() + coarse_lag_ns() < first) return 0;
  const TimePoint now = Clock::now();
  if (timers_.top()->deadline > now) return 0;
  Fiber* mark = ready_.back();
  const std::size_t before = ready_.size();
  fire_timers(now);
  ready_.move_to_front_after(mark);
  return ready_.size() - before;
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

// ---- skein::debug ---------------------------------------------------------------------------

bool Scheduler::ask(DebugRequest* request, std::size_t slot) noexcept {
  std::lock_guard g(debug_mutex_);
  if (!debug_open_) return false;
  try {
    debug_asked_.push_back({request, slot});
  } catch (...) {
    return false;  // out of memory: the worker goes unreported rather than the caller failing
  }
  // One node per worker, in the inbox at most once: it asks the worker to look at the list. The
  // scheduler outlives this post: ~RuntimeCore leaves the registry the caller holds first.
  if (!debug_posted_) {
    debug_posted_ = true;
    inbox_.post(&debug_node_);
  }
  return true;
}

void Scheduler::answer_debug(bool closing) noexcept {
  // Copying many records takes a while, between fibers: not a fiber's time.
  const std::uint64_t beat = own_heartbeat();
  set_heartbeat(beat | idle_beat);
  std::vector<Asked> asked;
  {
    std::lock_guard g(debug_mutex_);
    if (closing) debug_open_ = false;
    if (!closing) debug_posted_ = false;  // the node has left the inbox: it may be posted again
    asked.swap(debug_asked_);
  }
  for (const Asked& a : asked) {
    DebugRequest::Slot& slot = a.request->slots[a.slot];
    try {
      copy_records(a.request->want_fibers ? &slot.fibers : nullptr, &slot.stats, a.request->want_backtraces);
    } catch (...) {
      // Out of memory while copying: the slot keeps what was copied.
    }
    a.request->pending.add(-1);  // never below zero: the requester added one for this slot
  }
  if (!closing) set_heartbeat(beat);  // an ended loop stays idle
}

// ---- the detail API -----------------------------------------------------------------------

Fiber* current_fiber() noexcept {
  return tl_scheduler ? tl_scheduler->running() : nullptr;
}

Wake park(TimePoint deadline, Unlink unlink, void* arg, bool unlink_on_wake) noexcept {
  return tl_scheduler->park_running(deadline, unlink, arg, unlink_on_wake);
}

Wake park(WaitFor why, TimePoint deadline, Unlink unlink, void* arg, bool unlink_on_wake) noexcept {
  return tl_scheduler->park_running(deadline, unlink, arg, unlink_on_wake, why);
}

namespace {
// Posts `n` to `s` from this thread; see RuntimeCore::post_from_outside for threads that are not
// the runtime's workers. (Its workers are joined before the schedulers are freed.)
void post_to(Scheduler& s, RemoteNode* n) noexcept {
  if (tl_scheduler && &tl_scheduler->runtime() == &s.runtime())
    s.post(n);
  else
    s.runtime().post_from_outside(s, n);
}
}  // namespace

bool unpark(Fiber* fiber) noexcept {
  if (fiber->claimed.exchange(true, std::memory_order_acq_rel)) return false;
  deliver(Wakeup{fiber, nullptr});
  return true;
}

void cancel(Fiber* fiber) noexcept {
  // A finished fiber's scheduler may be gone (a Task kept past skein::run).
  if (fiber->finished.load(std::memory_order_acquire)) return;
  Scheduler* s = fiber->scheduler;
  if (s == tl_scheduler) {
    s->cancel(fiber);
    return;
  }
  // Another thread's fiber: flag it now (its next wait sees it at once), and send one message to
  // end a wait it is parked in. The message keeps the record and the runtime alive until handled.
  fiber->cancel_requested.store(true, std::memory_order_seq_cst);
  if (fiber->cancel_posted.exchange(true, std::memory_order_acq_rel)) return;
  if (!s->runtime().try_retain()) return;  // the runtime has ended: the fiber is done
  fiber->refs.fetch_add(1, std::memory_order_relaxed);
  post_to(*s, &fiber->cancel_node);
}

void unlink_wait_node(Fiber*, void* node) noexcept {
  auto* n = static_cast<WaitNode*>(node);
  SpinGuard lock(n->owner->lock);
  if (n->linked) n->owner->remove(n);
}

bool claim(const WaitNode* node) noexcept {
  std::atomic<bool>& claimed = node->fiber ? node->fiber->claimed : node->thread->claimed;
  return !claimed.exchange(true, std::memory_order_acq_rel);
}

void deliver(Wakeup w) noexcept {
  if (Fiber* f = w.fiber) {
    Scheduler* s = f->scheduler;
    if (s == tl_scheduler) {
      s->make_ready(f, Wake::notified);
    } else {
      // The fiber is parked, so its worker has a live fiber and its runtime a count.
      f->post_node.kind = RemoteNode::Kind::deliver;
      post_to(*s, &f->post_node);
    }
  } else if (w.thread) {
    w.thread->delivered.release();
  }
}

bool notify_node(WaitNode* node) noexcept {
  if (!claim(node)) return false;
  deliver(wakeup_of(node));
  return true;
}

void SpinLock::yield_thread() noexcept {
  std::this_thread::yield();
}

void throw_if_interrupted(Wake w) {
  if (w == Wake::cancelled)
    throw std::system_error(std::make_error_code(std::errc::operation_canceled), "skein: fiber cancelled");
  if (w == Wake::timed_out)
    throw std::system_error(std::make_error_code(std::errc::timed_out), "skein: deadline passed");
  if (w == Wake::expired)
    throw std::system_error(std::make_error_code(std::errc::timed_out), "skein: timeout scope expired");
}

void release(Fiber* fiber) noexcept {
  if (fiber->refs.fetch_sub(1, std::memory_order_acq_rel) > 1) return;
  // The last of the body, the handle (and a cancel in flight) to let go: an exception that no
  // join rethrew is reported now.
  report_unobserved(*fiber);
  const Stack stack = fiber->stack;
  discard_context(*fiber);
  fiber->~Fiber();
  release_stack(stack);
}

void release_handle(Fiber* fiber) noexcept {
  release(fiber);
}

Scheduler& scheduler_for(const char* what) {
  // Bound means a fiber is running or the loop has yet to start: the runtime cannot have ended.
  if (!tl_scheduler)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            std::string(what) + ": no scheduler on this thread (call it inside skein::run)");
  return *tl_scheduler;
}

void start_fiber(Scheduler& scheduler, Fiber* fiber, Stack stack, std::string name,
                 skein::SourceLocation where) noexcept {
  scheduler.prepare(fiber, stack, std::move(name), where);
  scheduler.start_local(fiber);
}

namespace {
// wait_done() and join_done(): `node` is the caller's; true if the fiber finished, false on the
// deadline. A join's claim on the result is settled under the lock (or by finish()).
bool wait_finished(Fiber* fiber, TimePoint deadline, WaitNode& node, ThreadWaiter& thread) {
  Fiber* self = current_fiber();
  if (self == fiber)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein::Task: a fiber cannot wait for itself");
  node.fiber = self;
  node.thread = self ? nullptr : &thread;
  {
    SpinGuard lock(fiber->joiners.lock);
    if (fiber->finished.load(std::memory_order_relaxed)) {
      if (node.wants_result && !fiber->result_taken) fiber->result_taken = node.took_result = true;
      return true;
    }
    fiber->joiners.push_back(&node);
  }
  Wake w;
  if (self) {
    const Scheduler::ForeignWait foreign(*self->scheduler, *fiber->scheduler);
    w = park(WaitFor{debug::WaitReason::join, static_cast<std::uintptr_t>(fiber->id)}, deadline,
             &unlink_wait_node, &node);
  } else {
    w = block_thread(thread, deadline, &unlink_wait_node, &node);
  }
  if (w == Wake::notified) return true;
  if (w == Wake::timed_out) return false;
  throw_if_interrupted(w);
  return false;
}
}  // namespace

bool wait_done(Fiber* fiber, TimePoint deadline) {
  if (fiber->finished.load(std::memory_order_acquire)) return true;
  ThreadWaiter thread;
  WaitNode node;
  return wait_finished(fiber, deadline, node, thread);
}

Joined join_done(Fiber* fiber, TimePoint deadline) {
  ThreadWaiter thread;
  WaitNode node;
  node.wants_result = true;
  if (!wait_finished(fiber, deadline, node, thread)) return Joined::timed_out;
  return node.took_result ? Joined::took : Joined::refused;
}

Wake block_thread(ThreadWaiter& thread, TimePoint deadline, Unlink unlink, void* arg) noexcept {
  const TimePoint scope = tl_thread_scope;
  const TimePoint until = scope < deadline ? scope : deadline;
  if (until == no_deadline) {
    thread.delivered.acquire();
    return Wake::notified;
  }
  if (thread.delivered.try_acquire_until(until)) return Wake::notified;
  if (thread.claimed.exchange(true, std::memory_order_acq_rel)) {
    // A waker won the wake-up just as the deadline passed; its release is on its way.
    thread.delivered.acquire();
    return Wake::notified;
  }
  if (unlink) unlink(nullptr, arg);
  return until < deadline ? Wake::expired : Wake::timed_out;
}

Wake block(WaitFor why, WaitNode& node, TimePoint deadline, Unlink unlink, void* arg,
           bool unlink_on_wake) noexcept {
  if (!node.fiber) return block_thread(*node.thread, deadline, unlink, arg);
  // The party that will wake it may be any thread, in this runtime or not: not a deadlock.
  const Scheduler::ForeignWait foreign(*node.fiber->scheduler);
  return park(why, deadline, unlink, arg, unlink_on_wake);
}

TimePoint scope_deadline() noexcept {
  return scope_slot();
}

TimePoint set_scope_deadline(TimePoint deadline) noexcept {
  return std::exchange(scope_slot(), deadline);
}

void wait_done_shielded(Fiber* fiber) noexcept {
  Fiber* self = current_fiber();
  if (fiber->finished.load(std::memory_order_acquire) || !self || self == fiber) return;
  // Shielded, the wait ends only when the fiber finishes: wait_finished cannot throw here.
  const ShieldGuard shield;
  ThreadWaiter unused;
  WaitNode node;
  wait_finished(fiber, no_deadline, node, unused);
}

}  // namespace skein::detail

namespace skein {

void yield() {
  detail::Scheduler* s = detail::Scheduler::current();
  if (!s || !s->running()) return;
  s->yield_running();
  if (s->running()->cancel_requested.load(std::memory_order_relaxed))
    detail::throw_if_interrupted(detail::Wake::cancelled);
}

void sleep_until(TimePoint deadline) {
  detail::Scheduler* s = detail::Scheduler::current();
  if (!s || !s->running()) {
    const TimePoint scope = detail::scope_deadline();
    std::this_thread::sleep_until(scope < deadline ? scope : deadline);
    if (scope < deadline) detail::throw_if_interrupted(detail::Wake::expired);
    return;
  }
  // Waking at the deadline is the point of a sleep, not an error; a TimeoutScope's passing is.
  const detail::Wake w = s->park_running(deadline, nullptr, nullptr, false, {debug::WaitReason::sleep, 0});
  if (w != detail::Wake::timed_out) detail::throw_if_interrupted(w);
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
