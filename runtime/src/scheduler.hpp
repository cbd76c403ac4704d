// The per-thread scheduler: a FIFO ready queue, a timer heap, an inbox for other threads and an
// idle step that sleeps in the kernel. See docs/architecture.md for the fiber state machine and
// docs/threading.md for what crosses threads.
#pragma once

#include "context.hpp"
#include "driver.hpp"
#include "switch.hpp"

#include <skein/debug.hpp>
#include <skein/detail/fiber.hpp>
#include <skein/sync.hpp>
#include <skein/time.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <vector>

#include <pthread.h>
#include <signal.h>

// Wait reasons, park times and the workers' counters (docs/observability.md). Always on; a build
// with -Ddebug_records=false leaves them out, only to measure what they cost.
#ifndef SKEIN_DEBUG_RECORDS
#define SKEIN_DEBUG_RECORDS 1
#endif
// Measuring only: read the clock at every park instead of using the loop's last reading.
#ifndef SKEIN_DEBUG_PARK_CLOCK
#define SKEIN_DEBUG_PARK_CLOCK 0
#endif

namespace skein::detail {

// Intrusive FIFO of ready fibers (through Fiber::next_ready): no allocation to make a fiber ready.
class ReadyQueue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  void push(Fiber* f) noexcept {
    f->next_ready = nullptr;
    if (tail_)
      tail_->next_ready = f;
    else
      head_ = f;
    tail_ = f;
    ++size_;
  }
  Fiber* front() const noexcept { return head_; }
  Fiber* back() const noexcept { return tail_; }
  // Moves the fibers queued after `mark` (the back before they were pushed; null if the queue was
  // empty then) ahead of the others, keeping their order.
  void move_to_front_after(Fiber* mark) noexcept {
    if (!mark || mark == tail_) return;
    Fiber* first = mark->next_ready;
    mark->next_ready = nullptr;
    tail_->next_ready = head_;
    head_ = first;
    tail_ = mark;
  }
  Fiber* pop() noexcept {
    Fiber* f = head_;
    head_ = f->next_ready;
    if (!head_) tail_ = nullptr;
    --size_;
    return f;
  }

 private:
  Fiber* head_ = nullptr;
  Fiber* tail_ = nullptr;
  std::size_t size_ = 0;
};

// The fibers that run ahead of the ready queue (Go's `runnext`, grown into a list): those the
// running fiber spawns on its own worker, in spawn order, and the joiners a finishing fiber wakes.
// Each resumption's additions go in front of what older ones left (insertion after a cursor that
// resume resets), so a fork-join tree runs depth-first with siblings in spawn order. Linked
// through Fiber::next_ready: a fiber is in this list or the ready queue, never both.
class NextQueue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  Fiber* front() const noexcept { return head_; }
  // Starts a new batch: the next insert goes to the front.
  void new_batch() noexcept { cursor_ = nullptr; }
  // Adds `f` after the current batch's last fiber (at the front for a new batch).
  void insert(Fiber* f) noexcept {
    Fiber*& link = cursor_ ? cursor_->next_ready : head_;
    f->next_ready = link;
    link = f;
    cursor_ = f;
  }
  Fiber* pop() noexcept {
    Fiber* f = head_;
    head_ = f->next_ready;
    if (cursor_ == f) cursor_ = nullptr;
    return f;
  }

 private:
  Fiber* head_ = nullptr;
  Fiber* cursor_ = nullptr;
};

// Binary min-heap of parked fibers by (deadline, arrival), each fiber knowing its slot so a wait
// that ends early leaves the heap in O(log n). Equal deadlines fire in the order they were set.
class TimerHeap {
 public:
  bool empty() const noexcept { return heap_.empty(); }
  std::size_t size() const noexcept { return heap_.size(); }
  Fiber* top() const noexcept { return heap_.front().fiber; }
  void push(Fiber* f);
  void erase(Fiber* f) noexcept;
  Fiber* pop() noexcept;

 private:
  struct Entry {
    TimePoint deadline;
    std::uint64_t seq;
    Fiber* fiber;
    bool operator<(const Entry& o) const noexcept {
      return deadline < o.deadline || (deadline == o.deadline && seq < o.seq);
    }
  };
  void place(std::size_t i, Entry e) noexcept {
    heap_[i] = e;
    e.fiber->timer_slot = i;
  }
  void sift_up(std::size_t i, Entry e) noexcept;
  void sift_down(std::size_t i, Entry e) noexcept;

  std::vector<Entry> heap_;
  std::uint64_t seq_ = 0;
};

// Messages from other threads: a lock-free multi-producer, single-consumer stack of RemoteNodes
// (push is a CAS, the consumer takes everything with one exchange and reverses it into arrival
// order), a flag that asks the consumer to call its driver (Driver::take_remote: the driver keeps
// its own queue, e.g. finished blocking jobs), plus the consumer's sleep state, which tells a
// producer how to wake it. One eventfd per worker: the driver's messages wake it the same way.
//
// The sleep protocol, value by value (state_, one 32-bit word that is also the futex):
//   awake      the consumer runs fibers or spins: producers only push (no system call).
//   on_futex   the consumer sleeps, or is about to, in FUTEX_WAIT on state_ itself (no fiber
//              waits on I/O, so nothing else can need it).
//   in_driver  the consumer sleeps, or is about to, in its driver (epoll, ppoll), which watches
//              the eventfd: fibers wait on I/O too.
// The consumer moves awake -> on_futex/in_driver (prepare_sleep, a sequentially consistent
// exchange followed by a sequentially consistent load of the stack's head: if a node is there it
// goes back to awake and does not sleep) and back to awake when it wakes (end_sleep; relaxed:
// nothing is published through it). A producer pushes (a sequentially consistent CAS, or the
// driver flag's sequentially consistent exchange), then
// loads state_ (sequentially consistent): in the single order of those four operations either
// the consumer's load sees the node, or the producer's load sees the sleep. A producer that
// sees a sleep exchanges state_ to awake; only the one that gets the sleeping value back wakes
// the consumer, with one FUTEX_WAKE (on_futex) or one eventfd write (in_driver). A FUTEX_WAIT
// that starts after that exchange returns at once (the word is no longer on_futex), so no
// wake-up is lost between the check and the sleep. A wake-up that arrives late (the consumer
// woke on its timer meanwhile) costs at most one spurious return from a later sleep.
class Inbox {
 public:
  enum State : std::uint32_t { awake = 0, on_futex = 1, in_driver = 2 };

  Inbox();
  ~Inbox();
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  // Any thread: queues `n` and wakes the consumer if it sleeps.
  void post(RemoteNode* n) noexcept;
  // Any thread, after queueing something in the driver's own queue: makes the consumer call
  // Driver::take_remote() on its thread soon, waking it if it sleeps.
  void wake_driver() noexcept;
  // Consumer: true if something is queued (a hint: posts may land right after).
  bool pending() const noexcept {
    return head_.load(std::memory_order_relaxed) != nullptr || driver_flag_.load(std::memory_order_relaxed);
  }
  // Consumer: true (once) if wake_driver() was called since the last time.
  bool take_driver_flag() noexcept {
    return driver_flag_.load(std::memory_order_relaxed) &&
           driver_flag_.exchange(false, std::memory_order_acquire);
  }
  // Consumer: takes every queued node, oldest first.
  RemoteNode* take() noexcept;
  // Consumer, before sleeping in the driver (`how` is in_driver) or on the futex: returns false
  // (and stays awake) if something is queued; otherwise posts from now on wake it that way.
  bool prepare_sleep(State how) noexcept;
  void end_sleep() noexcept { state_.store(awake, std::memory_order_relaxed); }
  // Consumer: sleeps on the futex until a post or `deadline` (no_deadline: until a post); returns
  // at once if something is queued. May return early (a signal, a late wake-up).
  void sleep_until(TimePoint deadline) noexcept;
  // Readable while a wake-up is pending; the driver watches it and calls clear_fd() when it is.
  int fd() const noexcept { return eventfd_; }
  void clear_fd() noexcept;
  // The consumer's driver, when it can be woken through a ring (Driver::wake_ring; -1: no longer):
  // a producer that is a worker with a ring of its own then posts a MSG_RING completion there
  // rather than writing the eventfd.
  void set_wake_ring(int ring_fd) noexcept { wake_ring_.store(ring_fd, std::memory_order_release); }

 private:
  void wake_sleeper() noexcept;

  alignas(64) std::atomic<RemoteNode*> head_{nullptr};
  std::atomic<bool> driver_flag_{false};     // see wake_driver()
  std::atomic<std::uint32_t> state_{awake};  // see the protocol above; the futex word
  int eventfd_ = -1;
  std::atomic<int> wake_ring_{-1};  // see set_wake_ring()
};

class Scheduler;
class RuntimeCore;

// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock park times are kept in. About 4.5 ns a read
// through the vDSO on the AMD EPYC (steady_clock: 30 ns), at the kernel tick's resolution (4 ms).
inline std::int64_t coarse_clock_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// A request of skein::debug to every worker (runtime/src/debug.cpp): each copies its records
// and counters into its slot at its next turn, then counts `pending` down.
struct DebugRequest;

// What the debug signal's handler copies on a worker about the fiber it interrupted (the running
// fiber's record and current stack), in fixed-size fields: the handler may not allocate.
struct RunningCapture {
  bool found = false;           // a fiber was running (false: the worker was in its loop)
  std::uint64_t heartbeat = 0;  // the worker's turn when interrupted (Scheduler::heartbeat)
  std::uint64_t id = 0;
  std::uint64_t parent = 0;
  skein::SourceLocation spawned_at;
  char name[64] = {};  // cut to 63 bytes
  Stack stack{};
  bool cancel_requested = false;
  bool shielded = false;
  const char* hooked_call = nullptr;
  std::size_t frames = 0;
  std::uintptr_t pcs[64] = {};
};

// The real-time signal a worker is interrupted with to capture the fiber it runs (the hog
// watchdog's, and snapshots' for the running fibers): SIGRTMAX - 2. Its handler only unwinds.
int debug_signal() noexcept;

// The scheduler bound to this thread, or nullptr.
inline constinit thread_local Scheduler* tl_scheduler = nullptr;

// The TimeoutScope deadline of a thread outside any fiber (a fiber's is in its record).
inline constinit thread_local TimePoint tl_thread_scope = no_deadline;

// The hot paths (resume, yield, park) are inline and flat on purpose: every function return made
// right after a stack switch mispredicts (the return-stack buffer holds the other context's
// calls), so each frame between the switch and the code that continues costs a misprediction.
class Scheduler {
 public:
  // Binds a new scheduler, worker `index` of `runtime`, to this thread. Throws
  // operation_not_permitted if one is bound already.
  Scheduler(RuntimeCore& runtime, std::size_t index);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The scheduler bound to this thread, or nullptr.
  static Scheduler* current() noexcept { return tl_scheduler; }
  // Unbinds it from this thread (its loop has ended; the object lives on for late posters).
  void unbind() noexcept;

  // The fiber on the CPU, or nullptr while the loop itself runs.
  Fiber* running() const noexcept { return running_; }

  RuntimeCore& runtime() const noexcept { return *runtime_; }
  std::size_t index() const noexcept { return index_; }

  // Runs fibers until the runtime ends. On a single-worker runtime that nothing outside can reach,
  // a deadlock (every fiber parked, nothing left to wake them) cancels the newest parked fiber,
  // and again while the deadlock lasts.
  void loop();

  // Fills in what a fiber needs before it can be started here (from any thread: the spawner's);
  // `where` is the spawn call.
  void prepare(Fiber* f, Stack stack, std::string name, skein::SourceLocation where = {}) noexcept;
  // This thread: makes a prepared fiber ready. Spawned by the running fiber, it runs next (as soon
  // as the spawner parks, yields or ends; see NextQueue); otherwise it joins the ready queue.
  void start_local(Fiber* f) noexcept;
  void post(RemoteNode* n) noexcept { inbox_.post(n); }
  const Inbox& inbox() const noexcept { return inbox_; }
  Inbox& inbox() noexcept { return inbox_; }
  // Puts the running fiber at the back of the ready queue and switches to the loop.
  [[gnu::always_inline]] void yield_running() noexcept {
    Fiber* f = running_;
    SKEIN_ASSERT_STATE(f, FiberState::running, "yield");
    f->state = FiberState::ready;
    ready_.push(f);
    ExecContext& here = running_context();
    f->resume_at = &here;
    switch_context(here, *home_);
  }

  // The park protocol (detail::park): see fiber.hpp.
  [[gnu::always_inline]] Wake park_running(TimePoint deadline, Unlink unlink, void* arg,
                                           bool unlink_on_wake = false, WaitFor why = {}) noexcept {
    Fiber* f = running_;
    SKEIN_ASSERT_STATE(f, FiberState::running, "park");
#if SKEIN_DEBUG_RECORDS
    // Written before the cancel check, while `why` is still in registers (later it would be
    // spilled across the calls below); a wait that ends before it starts leaves a stale reason
    // that nothing reads: it is meaningful only while the fiber is parked.
    f->wait_reason = why.reason;
    f->wait_detail = why.detail;
#endif
    if (f->cancel_requested.load(std::memory_order_relaxed) && !f->shielded &&
        !f->claimed.exchange(true, std::memory_order_acquire)) {
      // Cancelled already: the wait ends before it starts, and leaves whatever list the waiter
      // joined before parking, exactly as a cancel during the wait would. (If a waker on another
      // thread won the wake-up first, the fiber parks to receive it.)
      if (unlink) unlink(f, arg);
      f->claimed.store(false, std::memory_order_relaxed);
      return Wake::cancelled;
    }
    f->state = FiberState::parked;
    f->wake = Wake::notified;
#if SKEIN_DEBUG_RECORDS
    // The clock as read at most timer_check_interval resumptions (or one sleep) ago: a clock
    // read per park would cost more than the rest of the record (docs/observability.md). Zero
    // marks the reading stale (the coarse clock counts from boot: never zero).
#if SKEIN_DEBUG_PARK_CLOCK
    f->wait_since = coarse_clock_ns();
#else
    std::int64_t since = coarse_now_;
    if (since == 0) [[unlikely]]
      since = coarse_now_ = coarse_clock_ns();
    f->wait_since = since;
#endif
    ++counters_.parks_by_reason[static_cast<std::size_t>(why.reason)];
#else
    (void)why;
#endif
    f->unlink = unlink;
    f->unlink_arg = arg;
    // A TimeoutScope bounds every wait inside it, but never a shielded one: those protect memory
    // still in use elsewhere (a run_blocking job, a child being reaped) and must see it through.
    const TimePoint scope = f->shielded ? no_deadline : f->scope_deadline;
    const TimePoint until = scope < deadline ? scope : deadline;
    if (until != no_deadline) {
      f->deadline = until;
      timers_.push(f);
    }
    ExecContext& here = running_context();
    f->resume_at = &here;
    switch_context(here, *home_);
    f->unlink = nullptr;
    if (unlink_on_wake && f->wake == Wake::notified) unlink(f, arg);
    f->claimed.store(false, std::memory_order_relaxed);
    if (f->wake == Wake::timed_out && until < deadline) return Wake::expired;
    return f->wake;
  }
  // This thread: interrupts `f`'s wait, ending it with `why` (a deadline or a cancel), if nobody
  // else claimed its wake-up first.
  void interrupt(Fiber* f, Wake why) noexcept;
  // This thread: makes `f`, parked and its wake-up won by the caller, ready with `why`; with
  // `next`, ahead of the ready queue (a joiner its child's end wakes).
  void make_ready(Fiber* f, Wake why, bool next = false) noexcept;
  // This thread.
  void cancel(Fiber* f) noexcept;

  // Marks a wait whose waker belongs to another runtime (or is no fiber at all) for its
  // duration: while one lasts, an idle worker is waiting, not deadlocked.
  class ForeignWait {
   public:
    ForeignWait(Scheduler& waiter, const Scheduler& wakes) noexcept
        : s_(waiter.runtime_ != wakes.runtime_ ? &waiter : nullptr) {
      if (s_) ++s_->foreign_waits_;
    }
    // A wait any thread at all may end (a lock, a channel): never counted as a deadlock.
    explicit ForeignWait(Scheduler& waiter) noexcept : s_(&waiter) { ++s_->foreign_waits_; }
    ~ForeignWait() {
      if (s_) --s_->foreign_waits_;
    }
    ForeignWait(const ForeignWait&) = delete;
    ForeignWait& operator=(const ForeignWait&) = delete;

   private:
    Scheduler* s_;
  };

  // skein::debug (any thread): queues `request` for this worker's next turn and wakes it; false,
  // queueing nothing, if its loop has ended (it has no fibers left to report).
  bool ask(DebugRequest* request, std::size_t slot) noexcept;
  // After its loop has ended or when it never ran (the runtime's destructor, its threads joined):
  // answers what is queued and refuses later requests. Idempotent.
  void close_debug() noexcept {
    answer_debug(true);
    std::lock_guard g(capture_mutex_);
    capture_open_ = false;
  }
  // This thread, between fibers or from one of its own: copies its records and counters; with
  // `backtraces`, each suspended fiber's stack too (and the running one's, when it is the caller).
  void copy_records(std::vector<debug::FiberInfo>* out, debug::WorkerStats* stats,
                    bool backtraces = false) const;

  // The worker's turn: a counter the loop bumps before every fiber it resumes (the count of
  // resumptions), with idle_beat set while the loop is idle or answering skein::debug (0 before
  // the first fiber). Any thread (the hog watchdog reads it; relaxed: a hint, which the debug signal
  // confirms). It stays the same only while one fiber runs without returning to the loop, or the
  // loop is idle. Always 0 in a build without the records.
  static constexpr std::uint64_t idle_beat = std::uint64_t{1} << 63;
  std::uint64_t heartbeat() const noexcept {
    if (!SKEIN_DEBUG_RECORDS) return 0;
    return own_heartbeat();
  }
  // Whether a heartbeat says a fiber may be running.
  static bool in_fiber(std::uint64_t beat) noexcept {
    return beat != 0 && !(beat & idle_beat);
  }
  // Any thread but this worker's: interrupts the worker with the debug signal, whose handler
  // copies the fiber it runs (record and current stack) into `out`. False if the worker's loop has
  // ended, or no answer came within `timeout` (a thread that keeps the signal blocked); true
  // otherwise, `out.found` saying whether a fiber was running. Runtime/src/debug.cpp.
  bool capture_running(RunningCapture& out, std::chrono::milliseconds timeout) noexcept;

  // Replaces the idle-time driver (the I/O layer installs its own).
  void set_driver(std::unique_ptr<Driver> driver) noexcept {
    driver_ = std::move(driver);
  }
  Driver& driver() noexcept {
    return *driver_;
  }

 private:
  [[gnu::always_inline]] void resume(Fiber* f) noexcept {
    SKEIN_ASSERT_STATE(f, FiberState::ready, "resume");
    running_ = f;
    f->state = FiberState::running;
    switch_context(*home_, *f->resume_at);
    running_ = nullptr;
    if (f->state == FiberState::done) finish(f);
  }
  void finish(Fiber* f) noexcept;
  void fire_timers(TimePoint now) noexcept;
  // Fires the timers that are due and moves their fibers to the front of the ready queue (they
  // are late already); returns how many it made ready.
  std::size_t serve_due_timers() noexcept;
  void drain_inbox() noexcept;
  void idle();
  void idle_step();  // idle() without the watchdog's idle mark
  // Spins (no system call) for up to idle_spin_, or until the next timer, watching the inbox;
  // true if a message came or the timer fell due. Adapts idle_spin_ to what it found.
  bool spin_for_message(TimePoint next_timer) noexcept;
  void stop_spinning() noexcept;
  void recover_deadlock() noexcept;
  // Answers the debug requests queued by ask(); with `closing`, answers them and refuses more.
  void answer_debug(bool closing) noexcept;
  [[noreturn]] static void fiber_entry(Transfer t) noexcept;

  RuntimeCore* runtime_;
  std::size_t index_;
  bool stop_ = false;            // the runtime ended: leave the loop
  ExecContext* home_ = nullptr;  // the context running loop(): fibers switch back to it
  Fiber* running_ = nullptr;
  // See heartbeat(). Also the loop's turn count, whose every timer_check_interval-th turn looks
  // at the timers: the watchdog's heartbeat is the counter the loop keeps anyway, no extra store.
  // Every access goes through an atomic_ref, as C++20 asks of an object that one refers to:
  // written by the worker (set_heartbeat), read by it (own_heartbeat) and by other threads
  // (heartbeat()). Relaxed, so each is the plain load or store it was. (close_debug() reads it
  // from the destroying thread, after the worker was joined.)
  alignas(std::atomic_ref<std::uint64_t>::required_alignment) std::uint64_t heartbeat_ = 0;
  void set_heartbeat(std::uint64_t beat) noexcept {
    std::atomic_ref<std::uint64_t>(heartbeat_).store(beat, std::memory_order_relaxed);
  }
  std::uint64_t own_heartbeat() const noexcept {
    return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(heartbeat_))
        .load(std::memory_order_relaxed);
  }
  ReadyQueue ready_;
  NextQueue next_;
  // A round runs at most max(its ready fibers, this) fibers from next_, so a fiber that spawns or
  // joins in a loop (each child run next, each joiner handed back next) cannot keep the ready
  // queue, timers, messages and I/O waiting: see docs/architecture.md, "Children run next".
  static constexpr std::size_t next_per_round = 64;
  TimerHeap timers_;
  // A round of the ready queue looks at the clock every this many resumptions while timers are
  // pending, so a due timer waits for at most that many other fibers, not for the whole round
  // (docs/architecture.md, "Timer lateness"). A clock read costs about two switches: every 16th
  // resumption keeps it under 1 ns of a switch's cost. Counted by heartbeat_ (a power of two).
  static constexpr unsigned timer_check_interval = 16;
  static_assert((timer_check_interval & (timer_check_interval - 1)) == 0);
  Fiber* live_ = nullptr;  // every started, unfinished fiber (through prev_live/next_live)
  std::size_t live_count_ = 0;
  std::uint64_t spawned_ = 0;         // fibers spawned from this worker (for their ids)
  std::size_t foreign_waits_ = 0;     // see ForeignWait
  std::chrono::nanoseconds spin_{0};  // RuntimeOptions::spin_before_sleep
  // The adaptive spin of an idle worker (see idle()): how long the next one may last, and its cap
  // (RuntimeOptions::idle_spin; zero on a single CPU, where the poster cannot run meanwhile).
  std::chrono::nanoseconds idle_spin_{0};
  std::chrono::nanoseconds idle_spin_max_{0};
  unsigned spin_tries_skipped_ = 0;  // messages soon after a sleep to let pass before trying again
  unsigned spin_backoff_ = 0;        // log2 of the next such wait, after spins that failed
  TimePoint busy_until_{};           // poll rather than sleep until then
  Inbox inbox_;                      // before driver_: the driver watches its fd
  std::unique_ptr<Driver> driver_;
  // CLOCK_MONOTONIC_COARSE as last read, or 0 (stale): what parks record as their start. The
  // loop marks it stale every timer_check_interval resumptions and reads it after each sleep; a
  // park that finds it stale reads it again, so loops that only yield never read it.
  std::int64_t coarse_now_ = 0;
  // Written by this worker only; read by this worker when it answers a debug request.
  debug::WorkerStats counters_;
  // Debug requests from other threads (see ask()), under debug_mutex_.
  std::mutex debug_mutex_;
  struct Asked {
    DebugRequest* request;
    std::size_t slot;
  };
  std::vector<Asked> debug_asked_;
  // The running-fiber capture (capture_running, the debug signal's handler in debug.cpp): one
  // requester at a time, and none once the loop has ended (its thread may be gone).
  friend void on_debug_signal(int, siginfo_t*, void*) noexcept;
  pthread_t thread_;  // the thread it is bound to (its constructor's)
  std::mutex capture_mutex_;
  bool capture_open_ = true;                     // under capture_mutex_
  std::atomic<std::uint32_t> capture_state_{0};  // 0 idle, 1 asked, 2 the handler writes, 3 written
  RunningCapture* capture_out_ = nullptr;        // written by the requester before asking
  bool debug_open_ = true;                       // the loop still runs: requests will be answered
  bool debug_posted_ = false;                    // debug_node_ is in the inbox
  RemoteNode debug_node_{nullptr, nullptr, RemoteNode::Kind::debug};
};

// What skein::debug asks every worker for (runtime/src/debug.cpp); one slot per worker, written
// by that worker alone, read by the requester once `pending` reaches zero.
struct DebugRequest {
  struct Slot {
    std::vector<debug::FiberInfo> fibers;
    debug::WorkerStats stats;
    RunningCapture running;  // the fiber the worker ran when asked (running.found), by the signal
  };
  bool want_fibers = true;
  bool want_backtraces = false;
  std::vector<Slot> slots;
  WaitGroup pending;
};

// Where the TimeoutScope deadline in force for the caller lives: its fiber's record, or
// tl_thread_scope outside fibers. Valid for as long as the caller runs. Inline: every coroutine
// resume goes through it.
inline TimePoint& scope_slot() noexcept {
  Fiber* f = tl_scheduler ? tl_scheduler->running() : nullptr;
  return f ? f->scope_deadline : tl_thread_scope;
}

}  // namespace skein::detail
