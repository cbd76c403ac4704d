// Looking inside a running process: every fiber of every runtime with what it waits for and since
// when, where it was spawned and by whom, and each worker's counters. See docs/observability.md.
//
//   skein::debug::dump(std::cerr);                 // a table, fibers folded like Go's goroutine dump
//   for (const auto& f : skein::debug::fibers()) ...
//   auto s = skein::debug::stats();                // switches, spawns, parks by reason, sleeps, ...
//
// fibers(), stats() and dump() may be called from any fiber or plain thread (not from a worker's
// own loop outside a fiber). Each worker copies its own records (and unwinds its own suspended
// fibers' stacks) at its next turn between fibers, so no worker is held up longer than that copy;
// a worker busy in a fiber that never waits delays the answer until that fiber yields or parks.
// The fiber a worker runs when the snapshot is asked for is reported as running, with the stack
// it had at that moment: a real-time signal (SIGRTMAX - 2) interrupts the worker to take it.
//
// Errors: fibers(), stats() and dump() throw only std::bad_alloc (and dump() what the stream
// throws).
#pragma once

#include <skein/source_location.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace skein::debug {

// Why a fiber is parked; the word of detail (FiberInfo::detail) says what it waits on.
enum class WaitReason : std::uint8_t {
  none,          // not parked (ready or running)
  sleep,         // skein::sleep_for/sleep_until; detail 0
  fd_read,       // a socket or fd to become readable; detail: the fd
  fd_write,      // ... writable; detail: the fd
  accept,        // Listener::accept; detail: the listening fd
  connect,       // a connect in progress; detail: the fd
  channel_recv,  // Channel::recv and friends; detail: the channel's address
  channel_send,  // Channel::send; detail: the channel's address
  select,        // skein::select; detail: the number of channel cases
  mutex,         // Mutex::lock; detail: the mutex's address
  condvar,       // ConditionVariable::wait; detail: its address
  event,         // Event::wait; detail: its address
  semaphore,     // Semaphore::acquire; detail: its address
  wait_group,    // WaitGroup::wait; detail: its address
  barrier,       // Barrier::arrive_and_wait; detail: its address
  future,        // Future::wait/get; detail: the shared state's address
  join,          // Task::join/wait, TaskGroup reaping; detail: the joined fiber's id
  run_blocking,  // run_blocking or resolve; detail 0
  hooked_call,   // a libc hook's own wait; detail: the call's name (a static const char*)
  other,         // a park that gave no reason
};
inline constexpr std::size_t wait_reason_count = static_cast<std::size_t>(WaitReason::other) + 1;

// "channel recv", "fd read", ...
std::string_view to_string(WaitReason reason) noexcept;

enum class FiberState : std::uint8_t {
  ready,    // queued to run
  running,  // on its worker's CPU now (the caller itself, or a fiber another worker runs)
  parked,   // waiting; see reason
};
std::string_view to_string(FiberState state) noexcept;

// One fiber, copied by its worker at a moment when that worker ran no fiber (or, for the caller's
// own worker, while the caller ran).
struct FiberInfo {
  std::uint64_t id = 0;       // unique within its runtime (the id Task::id() and this_fiber::id() give)
  std::uint64_t runtime = 0;  // the runtime, numbered 1, 2, ... in order of creation in the process
  std::size_t worker = 0;     // its worker's index
  std::string name;
  FiberState state = FiberState::ready;
  WaitReason reason = WaitReason::none;  // none unless parked
  std::uintptr_t detail = 0;             // see WaitReason
  const char* hooked_call = nullptr;     // the libc call a hook runs for it (net/hooks), or null
  std::chrono::nanoseconds waiting{0};   // how long it has been parked (4 ms resolution); 0 unless parked
  std::optional<std::chrono::nanoseconds> deadline;  // time left before its wait's deadline, if any
  std::uint64_t parent = 0;                          // the id of the fiber that spawned it; 0: a plain thread
  skein::SourceLocation spawned_at;                  // the spawn call (empty for spawns that pass none)
  std::size_t stack_size = 0;                        // bytes reserved for its stack
  // Bytes of its stack ever touched: from the lowest page the kernel has committed to its top
  // (mincore at snapshot time). A stack reused from the pool counts what earlier fibers touched
  // until the pool gave its pages back. 0 where unknown.
  std::size_t stack_used = 0;
  bool cancel_requested = false;  // Task::cancel reached it (its next wait throws)
  bool shielded = false;          // in a wait a cancel does not end (ShieldGuard)
  // Its stack when backtraces were asked for: return addresses, innermost first (format_frames
  // names them). Empty otherwise, for a fiber that has not started, or without backtraces_available().
  std::vector<std::uintptr_t> frames;
  bool frames_truncated = false;  // the stack went deeper than the frames kept (64)
};

struct SnapshotOptions {
  bool backtraces = false;  // fill in FiberInfo::frames (a few microseconds per fiber)
};

// Every fiber of every runtime in the process, by runtime, worker and age (newest first within a
// worker). A fiber spawned onto another worker appears once that worker has taken it in.
std::vector<FiberInfo> fibers();
std::vector<FiberInfo> fibers(const SnapshotOptions& options);

// Whether this build can unwind fibers' stacks (skein's assembly switch or Boost.Context's, on
// x86-64 or AArch64).
bool backtraces_available() noexcept;

// One line per frame of `frames` (as in FiberInfo::frames), each starting with `indent`:
//   #3 0x000055d0c0a1b2c3 in handler(skein::Stream&) at samples/echo_server.cpp:42
// with inlined calls on lines of their own. Names come from the debug information (libdw),
// looked up once per address and cached. Not async-signal-safe.
std::string format_frames(std::span<const std::uintptr_t> frames, std::string_view indent = "");

// One worker's counters since it started. Each is written by its worker alone.
struct WorkerStats {
  std::uint64_t runtime = 0;   // as FiberInfo::runtime (0 in Stats::total)
  std::size_t worker = 0;      // its index
  std::uint64_t fibers = 0;    // live now
  std::uint64_t switches = 0;  // fiber resumptions: parks + yields + fibers that ended
  std::uint64_t spawns = 0;    // fibers started on this worker
  std::uint64_t yields = 0;    // skein::yield calls that gave way
  std::uint64_t parks = 0;     // waits that parked (the sum of parks_by_reason)
  std::uint64_t parks_by_reason[wait_reason_count] = {};
  std::uint64_t remote_wakeups = 0;        // wake-ups of its fibers sent by other threads
  std::uint64_t remote_spawns = 0;         // fibers other threads started on it (spawn_on)
  std::uint64_t idle_sleeps = 0;           // times it slept in the kernel with nothing to run
  std::chrono::nanoseconds slept{0};       // the time those sleeps took (at the coarse clock's tick)
  std::uint64_t timers_fired = 0;          // waits ended by their deadline
  std::uint64_t run_queue_high_water = 0;  // the most fibers ready at the start of a round
};

struct Stats {
  std::vector<WorkerStats> workers;  // by runtime, then worker index
  WorkerStats total;                 // sums (the high-water mark: the largest)
};

// The counters of every worker of every runtime in the process.
Stats stats();

struct DumpOptions {
  bool tree = false;              // also print the spawn tree (who spawned whom), fibers in groups
  bool stats = true;              // end with the totals of stats()
  bool backtraces = true;         // each group's stack, symbolised (where backtraces_available())
  std::size_t ids_per_group = 8;  // ids listed for a folded group
};

// Prints fibers() as a readable table: a header with the totals per state and per wait reason,
// then fibers folded like Go's goroutine dump, largest groups first, each with its count, the
// range of waiting times, a few ids and its symbolised stack. Fibers fold when they share state,
// wait reason and stack; without a stack (backtraces off, a fiber not started yet), name and
// spawn site instead.
void dump(std::ostream& out, const DumpOptions& options = {});

// One line describing `f`: "#12 "name" parked: channel recv on 0x... for 1.2s (worker 0, ...)".
std::string describe(const FiberInfo& f);

// What the hog watchdog (RuntimeOptions::hog_threshold) reports: a fiber that has kept its worker
// from its scheduler for longer than the threshold, once per such episode.
struct HogReport {
  FiberInfo fiber;                          // state running; frames: where it was when caught
  std::chrono::nanoseconds running_for{0};  // at least this long since it was resumed
  std::chrono::milliseconds threshold{0};
};

// "fiber #7 "name" has run for 104ms without returning to its scheduler (runtime 1 worker 0, ...)".
std::string describe(const HogReport& report);

// The watchdog's default callback: describe(report) and the symbolised stack, to stderr.
void print_hog_report(const HogReport& report);

}  // namespace skein::debug
