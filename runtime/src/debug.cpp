// skein::debug: snapshots of every worker's fiber records and counters, and the dump built on
// them. Each worker copies its own records (Scheduler::copy_records) at its next turn, asked
// through its inbox; see docs/observability.md.
#include <skein/debug.hpp>

#include "backtrace.hpp"
#include "runtime_core.hpp"
#include "scheduler.hpp"

#include <signal.h>
#include <ucontext.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace skein::detail {

// ---- the running fiber, through the debug signal ----------------------------------------------

int debug_signal() noexcept {
  return SIGRTMAX - 2;
}

// The debug signal's handler, on the interrupted worker's thread: copies the fiber it runs into
// the requester's RunningCapture. Async-signal-safe: plain copies, unwind_here, atomics.
void on_debug_signal(int, siginfo_t*, void* context) noexcept {
  const int saved_errno = errno;
  Scheduler* s = tl_scheduler;
  std::uint32_t asked = 1;
  if (s && s->capture_state_.compare_exchange_strong(asked, 2, std::memory_order_acquire)) {
    RunningCapture& c = *s->capture_out_;
    c.heartbeat = s->heartbeat();
    // The context on the CPU says whether a fiber runs: the loop's own is the thread's. (A
    // coroutine runs inside the scheduler's running fiber.) Set before each switch's jump.
    const ExecContext* on_cpu = tl_running;
    const Fiber* f = nullptr;
    if (on_cpu && on_cpu->kind == ContextKind::fiber)
      f = static_cast<const Fiber*>(on_cpu);
    else if (on_cpu && on_cpu->kind == ContextKind::coroutine)
      f = s->running_;
    c.found = f != nullptr;
    c.frames = 0;
    if (f) {
      c.id = f->id;
      c.parent = f->parent_id;
      c.spawned_at = f->spawn_site;
      const std::size_t len = std::min(f->name.size(), sizeof c.name - 1);
      std::memcpy(c.name, f->name.data(), len);
      c.name[len] = '\0';
      c.stack = f->stack;
      c.cancel_requested = f->cancel_requested.load(std::memory_order_relaxed);
      c.shielded = f->shielded;
      c.hooked_call = f->hooked_call;
      const std::size_t n = unwind_here(c.pcs, std::size(c.pcs));
      // Leave out the handler and the kernel's signal frame: the walk records the interrupted
      // instruction as its address plus one.
      std::uintptr_t interrupted = 0;
      const auto* uc = static_cast<const ucontext_t*>(context);
#if defined(__x86_64__)
      interrupted = static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]) + 1;
#elif defined(__aarch64__)
      interrupted = static_cast<std::uintptr_t>(uc->uc_mcontext.pc) + 1;
#endif
      std::size_t first = 0;
      while (first < n && c.pcs[first] != interrupted) ++first;
      if (first == n) first = 0;
      for (std::size_t i = first; i < n; ++i) c.pcs[i - first] = c.pcs[i];
      c.frames = n - first;
    }
    s->capture_state_.store(3, std::memory_order_release);
  }
  errno = saved_errno;
}

namespace {

// Installs the handler once; false if the program has a handler of its own for the signal.
bool debug_handler_installed() noexcept {
  static const bool installed = [] {
    struct sigaction old {};
    if (sigaction(debug_signal(), nullptr, &old) != 0) return false;
    if ((old.sa_flags & SA_SIGINFO) ? old.sa_sigaction != nullptr
                                    : old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
      std::fprintf(stderr, "skein: signal %d has a handler already: no backtraces of running fibers\n",
                   debug_signal());
      return false;
    }
    struct sigaction act {};
    act.sa_sigaction = on_debug_signal;
    // The alternate stack (every worker has one, for the overflow report): a fiber interrupted
    // near the end of its stack must not overflow it. Restarted: the fiber's system call goes on.
    act.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    return sigaction(debug_signal(), &act, nullptr) == 0;
  }();
  return installed;
}

}  // namespace

bool Scheduler::capture_running(RunningCapture& out, std::chrono::milliseconds timeout) noexcept {
  if (!debug_handler_installed()) return false;
  std::lock_guard g(capture_mutex_);
  if (!capture_open_) return false;  // the thread may be gone
  capture_out_ = &out;
  capture_state_.store(1, std::memory_order_seq_cst);
  if (pthread_kill(thread_, debug_signal()) != 0) {
    capture_state_.store(0, std::memory_order_relaxed);
    return false;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (unsigned spins = 0;; ++spins) {
    if (capture_state_.load(std::memory_order_acquire) == 3) break;
    if (spins >= 64) {
      if (std::chrono::steady_clock::now() > deadline) {
        // Withdraw the request; a handler that runs later finds nothing asked. One that is
        // writing already ends in microseconds.
        std::uint32_t asked = 1;
        if (capture_state_.compare_exchange_strong(asked, 0, std::memory_order_acquire)) return false;
        while (capture_state_.load(std::memory_order_acquire) != 3) std::this_thread::yield();
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  capture_state_.store(0, std::memory_order_relaxed);
  return true;
}

void Scheduler::copy_records(std::vector<debug::FiberInfo>* out, debug::WorkerStats* stats,
                             bool backtraces) const {
  const std::uint64_t runtime = runtime_->serial();
  *stats = counters_;
  stats->runtime = runtime;
  stats->worker = index_;
  stats->fibers = live_count_;
  stats->parks = 0;
  for (const std::uint64_t n : counters_.parks_by_reason) stats->parks += n;
#if SKEIN_DEBUG_RECORDS
  // Every resumption ends in a park, a yield or the fiber's end, except the caller's own while it
  // runs: the turns the loop counts anyway (own_heartbeat()) give the switches, and the yields are what
  // the parks and the ends leave of them. (Fibers that ended = started - live.)
  const std::uint64_t resumed = own_heartbeat() & ~idle_beat;
  stats->switches = resumed - (running_ != nullptr && tl_scheduler == this ? 1 : 0);
  stats->yields = stats->switches - stats->parks - (stats->spawns - live_count_);
#endif
  if (!out) return;
  out->reserve(out->size() + live_count_);
  const std::int64_t coarse = coarse_clock_ns();
  const TimePoint now = Clock::now();
  const std::size_t base = out->size();
  std::vector<Stack> stacks;
  stacks.reserve(live_count_);
  std::uintptr_t pcs[backtrace_max_frames];
  backtraces = backtraces && backtraces_available();
  for (const Fiber* f = live_; f; f = f->next_live) {
    debug::FiberInfo& i = out->emplace_back();
    i.id = f->id;
    i.runtime = runtime;
    i.worker = index_;
    i.name = f->name;
    i.parent = f->parent_id;
    i.spawned_at = f->spawn_site;
    i.stack_size = f->stack.size;
    stacks.push_back(f->stack);
    i.cancel_requested = f->cancel_requested.load(std::memory_order_relaxed);
    i.shielded = f->shielded;
    i.hooked_call = f->hooked_call;
    std::size_t frames = 0;
    switch (f->state) {
      case FiberState::ready:
        i.state = debug::FiberState::ready;
        if (backtraces) frames = unwind_parked(*f->resume_at, pcs, std::size(pcs));
        break;
      case FiberState::running:
      case FiberState::done:  // only the caller's own fiber runs while its worker copies
        i.state = debug::FiberState::running;
        if (backtraces && f == running_ && tl_scheduler == this) frames = unwind_here(pcs, std::size(pcs));
        break;
      case FiberState::parked:
        i.state = debug::FiberState::parked;
        i.reason = f->wait_reason;
        i.detail = f->wait_detail;
        i.waiting = std::chrono::nanoseconds(coarse > f->wait_since ? coarse - f->wait_since : 0);
        if (f->timer_slot != Fiber::no_timer)
          i.deadline = std::chrono::duration_cast<std::chrono::nanoseconds>(f->deadline - now);
        if (backtraces) frames = unwind_parked(*f->resume_at, pcs, std::size(pcs));
        break;
    }
    // A fiber that has not started shows only its entry frame: no stack to speak of.
    if (frames > 1) {
      i.frames.assign(pcs, pcs + frames);
      i.frames_truncated = frames == std::size(pcs);
    }
  }
  // All at once: neighbouring stacks share a system call.
  std::vector<std::size_t> used(stacks.size());
  stack_high_waters(stacks, used.data());
  for (std::size_t k = 0; k < used.size(); ++k) (*out)[base + k].stack_used = used[k];
}

}  // namespace skein::detail

namespace skein::debug {

namespace {

using detail::DebugRequest;
using detail::Scheduler;

// Asks every worker of every runtime for its copy and waits for all of them (parked if the caller
// is a fiber, so its own worker keeps answering others meanwhile; blocked if a plain thread).
}  // namespace

// The fiber record a debug-signal capture holds, as of the moment it was taken.
FiberInfo detail_info_of(const detail::RunningCapture& c, std::uint64_t runtime, std::size_t worker) {
  FiberInfo i;
  i.id = c.id;
  i.runtime = runtime;
  i.worker = worker;
  i.name = c.name;
  i.state = FiberState::running;
  i.parent = c.parent;
  i.spawned_at = c.spawned_at;
  i.stack_size = c.stack.size;
  std::vector<unsigned char> scratch;
  i.stack_used = detail::stack_high_water(c.stack, scratch);
  i.cancel_requested = c.cancel_requested;
  i.shielded = c.shielded;
  i.hooked_call = c.hooked_call;
  i.frames.assign(c.pcs, c.pcs + c.frames);
  i.frames_truncated = c.frames == std::size(c.pcs);
  return i;
}

namespace {

// How long a snapshot waits for a busy worker's signal handler before it leaves that worker's
// running fiber out.
constexpr std::chrono::milliseconds capture_timeout{100};

std::vector<DebugRequest::Slot> collect(bool want_fibers, bool want_backtraces = false) {
  DebugRequest request;
  request.want_fibers = want_fibers;
  request.want_backtraces = want_backtraces;
  Scheduler* here = Scheduler::current();
  std::vector<bool> answered;
  std::size_t own = ~std::size_t{0};
  {
    detail::RuntimeRegistry& registry = detail::runtime_registry();
    std::lock_guard lock(registry.mutex);
    std::size_t workers = 0;
    for (const detail::RuntimeCore* core : registry.runtimes) workers += core->size();
    // Sized before the first request: workers write into their slots while the rest are asked.
    request.slots.resize(workers);
    answered.assign(workers, true);
    std::size_t slot = 0;
    for (detail::RuntimeCore* core : registry.runtimes) {
      for (std::size_t w = 0; w < core->size(); ++w, ++slot) {
        Scheduler& s = core->worker(w);
        if (&s == here) {
          own = slot;
          continue;
        }
        // The fiber it runs right now (its heartbeat says whether it may run one), captured before the
        // request is posted: its record is the one it had at this instant. See docs/observability.md.
        if (want_fibers && Scheduler::in_fiber(s.heartbeat())) {
          detail::RunningCapture& c = request.slots[slot].running;
          if (!s.capture_running(c, capture_timeout)) c.found = false;
        }
        request.pending.add(1);
        if (!s.ask(&request, slot)) {
          request.pending.done();
          answered[slot] = false;  // its loop has ended: no fibers, and its runtime is going
        }
      }
    }
  }
  // The caller's own worker: it runs the caller, so its records cannot change meanwhile.
  // Out of memory there, `request` must still outlive the other workers' answers: the error is
  // rethrown only once they have all written theirs.
  std::exception_ptr own_error;
  if (own != ~std::size_t{0}) {
    try {
      here->copy_records(want_fibers ? &request.slots[own].fibers : nullptr, &request.slots[own].stats,
                         want_backtraces);
    } catch (...) {
      own_error = std::current_exception();
    }
  }
  {
    // The workers write into `request` until they have all answered: no cancel or TimeoutScope
    // may end this wait early. Each answers at its next turn.
    const detail::ShieldGuard shield;
    request.pending.wait();
  }
  if (own_error) std::rethrow_exception(own_error);
  std::vector<DebugRequest::Slot> slots;
  slots.reserve(request.slots.size());
  for (std::size_t i = 0; i < request.slots.size(); ++i) {
    if (!answered[i]) continue;
    DebugRequest::Slot& slot = request.slots[i];
    const detail::RunningCapture& c = slot.running;
    if (c.found) {
      // The worker copied its records at its next turn; the fiber it ran when asked shows as
      // running, with the stack it had then (or is added, if it has ended since).
      FiberInfo captured = detail_info_of(c, slot.stats.runtime, slot.stats.worker);
      if (!want_backtraces) captured.frames.clear();
      auto it = std::find_if(slot.fibers.begin(), slot.fibers.end(),
                             [&](const FiberInfo& f) { return f.id == c.id; });
      if (it != slot.fibers.end()) {
        captured.stack_used = std::max(captured.stack_used, it->stack_used);
        *it = std::move(captured);
      } else {
        slot.fibers.push_back(std::move(captured));
      }
    }
    slots.push_back(std::move(slot));
  }
  return slots;
}

void add_to(WorkerStats& total, const WorkerStats& w) {
  total.fibers += w.fibers;
  total.switches += w.switches;
  total.spawns += w.spawns;
  total.yields += w.yields;
  total.parks += w.parks;
  for (std::size_t r = 0; r < wait_reason_count; ++r) total.parks_by_reason[r] += w.parks_by_reason[r];
  total.remote_wakeups += w.remote_wakeups;
  total.remote_spawns += w.remote_spawns;
  total.idle_sleeps += w.idle_sleeps;
  total.slept += w.slept;
  total.timers_fired += w.timers_fired;
  total.run_queue_high_water = std::max(total.run_queue_high_water, w.run_queue_high_water);
}

Stats stats_of(const std::vector<DebugRequest::Slot>& slots) {
  Stats s;
  s.workers.reserve(slots.size());
  for (const auto& slot : slots) {
    s.workers.push_back(slot.stats);
    add_to(s.total, slot.stats);
  }
  return s;
}

// "1.25s", "340ms", "12us": three significant digits at most.
std::string duration_text(std::chrono::nanoseconds d) {
  char buf[32];
  const double ns = static_cast<double>(d.count());
  if (ns >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3gs", ns / 1e9);
  else if (ns >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3gms", ns / 1e6);
  else if (ns >= 1e3)
    std::snprintf(buf, sizeof buf, "%.3gus", ns / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.3gns", ns);
  return buf;
}

std::string site_text(const skein::SourceLocation& where) {
  if (!where.file_name() || !*where.file_name()) return "(unknown)";
  std::string s = where.file_name();
  s += ':';
  s += std::to_string(where.line());
  return s;
}

// What a parked fiber waits on, from its reason and detail: "on fd 7", "on 0x7f...", "on #12".
std::string detail_text(WaitReason reason, std::uintptr_t detail) {
  char buf[64];
  switch (reason) {
    case WaitReason::fd_read:
    case WaitReason::fd_write:
    case WaitReason::accept:
    case WaitReason::connect:
      std::snprintf(buf, sizeof buf, "on fd %" PRIuPTR, detail);
      return buf;
    case WaitReason::join:
      std::snprintf(buf, sizeof buf, "on #%" PRIuPTR, detail);
      return buf;
    case WaitReason::select:
      std::snprintf(buf, sizeof buf, "on %" PRIuPTR " channel(s)", detail);
      return buf;
    case WaitReason::hooked_call:
      return detail ? reinterpret_cast<const char*>(detail) : "";
    case WaitReason::none:
    case WaitReason::sleep:
    case WaitReason::run_blocking:
    case WaitReason::other:
      return "";
    default:
      std::snprintf(buf, sizeof buf, "on %#" PRIxPTR, detail);
      return buf;
  }
}

// What a fiber is doing: "ready", "running", "parked: channel recv on 0x7f... (hooked recv)".
std::string doing_text(const FiberInfo& f, bool with_detail) {
  std::string s(to_string(f.state));
  if (f.state != FiberState::parked) return s;
  s += ": ";
  s += to_string(f.reason);
  if (with_detail) {
    const std::string d = detail_text(f.reason, f.detail);
    if (!d.empty()) s += " " + d;
  }
  if (f.hooked_call) {
    s += " (in ";
    s += f.hooked_call;
    s += ')';
  }
  return s;
}

}  // namespace

std::string_view to_string(WaitReason reason) noexcept {
  static constexpr std::string_view names[] = {
      "none",         "sleep",  "fd read", "fd write",     "accept",      "connect",   "channel recv",
      "channel send", "select", "mutex",   "condvar",      "event",       "semaphore", "wait group",
      "barrier",      "future", "join",    "run_blocking", "hooked call", "other",
  };
  static_assert(std::size(names) == wait_reason_count);
  const auto i = static_cast<std::size_t>(reason);
  return i < wait_reason_count ? names[i] : "?";
}

std::string_view to_string(FiberState state) noexcept {
  switch (state) {
    case FiberState::ready:
      return "ready";
    case FiberState::running:
      return "running";
    case FiberState::parked:
      return "parked";
  }
  return "?";
}

std::vector<FiberInfo> fibers() {
  return fibers(SnapshotOptions{});
}

std::vector<FiberInfo> fibers(const SnapshotOptions& options) {
  std::vector<DebugRequest::Slot> slots = collect(true, options.backtraces);
  std::size_t n = 0;
  for (const auto& s : slots) n += s.fibers.size();
  std::vector<FiberInfo> all;
  all.reserve(n);
  for (auto& s : slots)
    for (auto& f : s.fibers) all.push_back(std::move(f));
  return all;
}

Stats stats() {
  return stats_of(collect(false));
}

bool backtraces_available() noexcept {
  return detail::backtraces_available();
}

std::string format_frames(std::span<const std::uintptr_t> frames, std::string_view indent) {
  std::string out;
  const std::string prefix(indent);
  detail::format_backtrace(out, frames.data(), frames.size(), prefix.c_str());
  return out;
}

std::string describe(const FiberInfo& f) {
  std::string s = "#" + std::to_string(f.id);
  if (!f.name.empty()) s += " \"" + f.name + "\"";
  s += ' ';
  s += doing_text(f, true);
  if (f.state == FiberState::parked) {
    s += " for " + duration_text(f.waiting);
    if (f.deadline) s += ", deadline in " + duration_text(std::max(*f.deadline, std::chrono::nanoseconds(0)));
  }
  s += " (runtime " + std::to_string(f.runtime) + " worker " + std::to_string(f.worker);
  s += ", parent #" + std::to_string(f.parent) + ", spawned at " + site_text(f.spawned_at);
  s += ", stack " + std::to_string(f.stack_size / 1024) + " KiB";
  if (f.stack_used) s += " (" + std::to_string(f.stack_used / 1024) + " KiB used)";
  if (f.cancel_requested) s += ", cancel requested";
  if (f.shielded) s += ", shielded";
  s += ')';
  return s;
}

std::string describe(const HogReport& r) {
  const FiberInfo& f = r.fiber;
  std::string s = "fiber #" + std::to_string(f.id);
  if (!f.name.empty()) s += " \"" + f.name + "\"";
  s += " has run for " + duration_text(r.running_for) + " without returning to its scheduler (threshold " +
       duration_text(r.threshold) + "; runtime " + std::to_string(f.runtime) + " worker " +
       std::to_string(f.worker) + ", parent #" + std::to_string(f.parent) + ", spawned at " +
       site_text(f.spawned_at);
  if (f.spawned_at.function_name() && *f.spawned_at.function_name())
    s += std::string(" in ") + f.spawned_at.function_name();
  s += ')';
  return s;
}

void print_hog_report(const HogReport& r) {
  std::string text = "skein: " + describe(r) + "\n";
  text += format_frames(r.fiber.frames, "    ");
  if (r.fiber.frames_truncated) text += "    ...\n";
  std::fwrite(text.data(), 1, text.size(), stderr);
}

namespace {

std::string kib_text(std::size_t bytes) {
  return std::to_string((bytes + 1023) / 1024) + " KiB";
}

// Fibers that print as one group: the same state, wait reason and stack (Go's goroutine dump);
// where the stack is unknown, the same name and spawn site too.
struct GroupKey {
  int state;
  int reason;
  const char* hooked_call;
  const std::vector<std::uintptr_t>* frames;  // empty: fold by name and spawn site instead
  std::string name;
  std::string site;
  std::string function;
  bool operator==(const GroupKey& o) const {
    return state == o.state && reason == o.reason && hooked_call == o.hooked_call && *frames == *o.frames &&
           name == o.name && site == o.site && function == o.function;
  }
};

struct GroupKeyHash {
  std::size_t operator()(const GroupKey& k) const noexcept {
    std::size_t h = std::hash<int>()(k.state * 64 + k.reason) ^ std::hash<const void*>()(k.hooked_call);
    for (const std::uintptr_t pc : *k.frames) h = h * 1099511628211u ^ pc;
    h ^= std::hash<std::string>()(k.name) * 31 ^ std::hash<std::string>()(k.site);
    return h;
  }
};

}  // namespace

void dump(std::ostream& out, const DumpOptions& options) {
  const bool with_stacks = options.backtraces && detail::backtraces_available();
  const std::vector<DebugRequest::Slot> slots = collect(true, with_stacks);
  std::vector<const FiberInfo*> all;
  for (const auto& s : slots)
    for (const auto& f : s.fibers) all.push_back(&f);

  std::size_t by_state[3] = {};
  std::size_t by_reason[wait_reason_count] = {};
  std::size_t runtimes = 0;
  std::uint64_t last_runtime = 0;
  for (const auto& s : slots)
    if (s.stats.runtime != last_runtime) ++runtimes, last_runtime = s.stats.runtime;
  for (const FiberInfo* f : all) {
    ++by_state[static_cast<std::size_t>(f->state)];
    if (f->state == FiberState::parked) ++by_reason[static_cast<std::size_t>(f->reason)];
  }
  out << "skein: " << all.size() << " fibers in " << runtimes << " runtime(s), " << slots.size()
      << " worker(s): " << by_state[0] << " ready, " << by_state[1] << " running, " << by_state[2]
      << " parked\n";
  if (by_state[2] > 0) {
    out << "  parked in:";
    const char* sep = " ";
    for (std::size_t r = 0; r < wait_reason_count; ++r) {
      if (by_reason[r] == 0) continue;
      out << sep << to_string(static_cast<WaitReason>(r)) << ' ' << by_reason[r];
      sep = ", ";
    }
    out << '\n';
  }

  // Folded like Go's goroutine dump: fibers doing the same thing with the same stack.
  struct Group {
    std::vector<const FiberInfo*> members;
    std::chrono::nanoseconds min_wait = std::chrono::nanoseconds::max();
    std::chrono::nanoseconds max_wait{0};
    std::size_t min_used = ~std::size_t{0};
    std::size_t max_used = 0;
    std::size_t first = 0;  // position of its first member, for a stable order
  };
  std::unordered_map<GroupKey, Group, GroupKeyHash> groups;
  groups.reserve(64);
  const std::string no_text;
  for (std::size_t n = 0; n < all.size(); ++n) {
    const FiberInfo* f = all[n];
    const bool by_stack = !f->frames.empty();
    GroupKey key{static_cast<int>(f->state),
                 static_cast<int>(f->reason),
                 f->hooked_call,
                 &f->frames,
                 by_stack ? no_text : f->name,
                 by_stack ? no_text : site_text(f->spawned_at),
                 by_stack || !f->spawned_at.function_name() ? no_text : f->spawned_at.function_name()};
    auto [it, added] = groups.try_emplace(std::move(key));
    Group& g = it->second;
    if (added) g.first = n;
    g.members.push_back(f);
    g.min_wait = std::min(g.min_wait, f->waiting);
    g.max_wait = std::max(g.max_wait, f->waiting);
    g.min_used = std::min(g.min_used, f->stack_used);
    g.max_used = std::max(g.max_used, f->stack_used);
  }
  std::vector<const Group*> order;
  order.reserve(groups.size());
  for (const auto& g : groups) order.push_back(&g.second);
  std::sort(order.begin(), order.end(), [](const Group* a, const Group* b) {
    return a->members.size() != b->members.size() ? a->members.size() > b->members.size()
                                                  : a->first < b->first;
  });
  if (with_stacks) {
    // Every distinct return address symbolised once, in one batch, before any is printed.
    std::vector<std::uintptr_t> pcs;
    for (const Group* g : order) {
      const auto& frames = g->members.front()->frames;
      pcs.insert(pcs.end(), frames.begin(), frames.end());
    }
    std::sort(pcs.begin(), pcs.end());
    pcs.erase(std::unique(pcs.begin(), pcs.end()), pcs.end());
    detail::symbolize_all(pcs.data(), pcs.size());
  }
  std::string stack_text;
  for (const Group* gp : order) {
    const Group& g = *gp;
    const FiberInfo& first = *g.members.front();
    out << '\n';
    if (g.members.size() == 1) {
      out << "fiber " << describe(first) << '\n';
    } else {
      // The detail is shown when all members wait on the same thing (one channel, one mutex);
      // the name and spawn site when all members share them.
      const auto same = [&](auto field) {
        return std::all_of(g.members.begin(), g.members.end(),
                           [&](const FiberInfo* f) { return field(*f) == field(first); });
      };
      const bool same_detail = same([](const FiberInfo& f) { return f.detail; });
      const bool same_name = same([](const FiberInfo& f) { return f.name; });
      const bool same_site = same([](const FiberInfo& f) { return site_text(f.spawned_at); });
      out << g.members.size() << " fibers";
      if (!same_name)
        out << " (names differ)";
      else if (!first.name.empty())
        out << " \"" << first.name << '"';
      out << ' ' << doing_text(first, same_detail);
      if (first.state == FiberState::parked) {
        out << " for " << duration_text(g.min_wait);
        if (g.max_wait != g.min_wait) out << "-" << duration_text(g.max_wait);
      }
      if (same_site) {
        out << "\n    spawned at " << site_text(first.spawned_at);
        if (first.spawned_at.function_name() && *first.spawned_at.function_name())
          out << " in " << first.spawned_at.function_name();
      } else {
        out << "\n    spawned at several places, first " << site_text(first.spawned_at);
      }
      out << "\n    stack " << kib_text(first.stack_size) << ", used " << kib_text(g.min_used);
      if (g.max_used != g.min_used) out << "-" << kib_text(g.max_used);
      out << "\n    ids:";
      const std::size_t shown = std::min(g.members.size(), options.ids_per_group);
      for (std::size_t i = 0; i < shown; ++i) out << " #" << g.members[i]->id;
      if (shown < g.members.size()) out << " ... (" << g.members.size() - shown << " more)";
      out << '\n';
    }
    if (with_stacks && !first.frames.empty()) {
      stack_text.clear();
      detail::format_backtrace(stack_text, first.frames.data(), first.frames.size(), "    ",
                               first.frames_truncated);
      out << stack_text;
    }
  }

  if (options.tree) {
    // Children under their parents, per runtime; a parent that has finished leaves its children
    // at the top level.
    out << "\nspawn tree:\n";
    std::map<std::pair<std::uint64_t, std::uint64_t>, std::vector<const FiberInfo*>> children;
    std::map<std::pair<std::uint64_t, std::uint64_t>, const FiberInfo*> by_id;
    for (const FiberInfo* f : all) by_id[{f->runtime, f->id}] = f;
    std::vector<const FiberInfo*> roots;
    for (const FiberInfo* f : all) {
      if (f->parent != 0 && by_id.count({f->runtime, f->parent}))
        children[{f->runtime, f->parent}].push_back(f);
      else
        roots.push_back(f);
    }
    auto by_age = [](const FiberInfo* a, const FiberInfo* b) {
      return std::tie(a->runtime, a->id) < std::tie(b->runtime, b->id);
    };
    std::sort(roots.begin(), roots.end(), by_age);
    for (auto& [k, v] : children) std::sort(v.begin(), v.end(), by_age);
    // Iterative, so a deep tree cannot overflow the caller's (perhaps small fiber) stack. Runs of
    // siblings doing the same thing, spawned at the same place, print as one line with a count.
    struct Item {
      const std::vector<const FiberInfo*>* list;
      std::size_t next;
    };
    std::vector<Item> stack{{&roots, 0}};
    while (!stack.empty()) {
      Item& top = stack.back();
      if (top.next >= top.list->size()) {
        stack.pop_back();
        continue;
      }
      const std::vector<const FiberInfo*>& list = *top.list;
      const FiberInfo& f = *list[top.next];
      std::size_t run = 1;
      auto kids = children.find({f.runtime, f.id});
      if (kids == children.end()) {
        while (top.next + run < list.size()) {
          const FiberInfo& g = *list[top.next + run];
          if (children.count({g.runtime, g.id}) || g.state != f.state || g.reason != f.reason ||
              g.name != f.name || site_text(g.spawned_at) != site_text(f.spawned_at))
            break;
          ++run;
        }
      }
      top.next += run;
      const std::size_t depth = stack.size();
      out << std::string(2 * depth, ' ');
      if (run == 1) {
        out << '#' << f.id;
        if (!f.name.empty()) out << " \"" << f.name << '"';
      } else {
        out << run << " x #" << f.id << "..";
        if (!f.name.empty()) out << " \"" << f.name << '"';
      }
      out << ' ' << doing_text(f, run == 1) << ", spawned at " << site_text(f.spawned_at) << '\n';
      if (kids != children.end()) stack.push_back({&kids->second, 0});
    }
  }

  if (options.stats) {
    const Stats s = stats_of(slots);
    const WorkerStats& t = s.total;
    out << "\ncounters (all workers): " << t.switches << " switches, " << t.spawns << " spawns ("
        << t.remote_spawns << " from other threads), " << t.yields << " yields, " << t.parks << " parks, "
        << t.remote_wakeups << " wake-ups from other threads, " << t.timers_fired << " timers fired, "
        << t.idle_sleeps << " idle sleeps (" << duration_text(t.slept) << "), run queue high-water "
        << t.run_queue_high_water << '\n';
    if (t.parks > 0) {
      out << "  parks by reason:";
      const char* sep = " ";
      for (std::size_t r = 0; r < wait_reason_count; ++r) {
        if (t.parks_by_reason[r] == 0) continue;
        out << sep << to_string(static_cast<WaitReason>(r)) << ' ' << t.parks_by_reason[r];
        sep = ", ";
      }
      out << '\n';
    }
  }
}

}  // namespace skein::debug

// ---- the loop-hog watchdog ------------------------------------------------------------------

namespace skein::detail {

// One thread per runtime that asked for it: every quarter of the threshold it reads each worker's
// heartbeat (its turn counter, bumped before every resumption, marked while idle); a turn that has not
// changed for the threshold means one fiber has kept its worker from the scheduler that long.
// The debug signal then takes that fiber's record and current stack on its own thread; the report
// goes out once per turn (episode), when the signal confirms the same turn is still on.
class HogMonitor {
 public:
  HogMonitor(RuntimeCore& core, std::chrono::milliseconds threshold,
             std::function<void(const debug::HogReport&)> on_hog)
      : core_(core), threshold_(threshold), on_hog_(std::move(on_hog)) {
    if (!on_hog_) on_hog_ = debug::print_hog_report;
    thread_ = std::thread([this] { run(); });
  }
  ~HogMonitor() {
    {
      std::lock_guard g(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  HogMonitor(const HogMonitor&) = delete;
  HogMonitor& operator=(const HogMonitor&) = delete;

 private:
  struct Seen {
    std::uint64_t heartbeat = 0;
    std::chrono::steady_clock::time_point since{};
    bool reported = false;
  };

  void run() {
    // The monitor must not take the process's signals (nor the debug signal) from other threads.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    const std::chrono::milliseconds interval =
        std::clamp(threshold_ / 4, std::chrono::milliseconds(1), std::chrono::milliseconds(50));
    std::vector<Seen> seen(core_.size());
    std::unique_lock lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, interval);
      if (stop_) break;
      lock.unlock();
      check(seen);
      lock.lock();
    }
  }

  void check(std::vector<Seen>& seen) {
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t w = 0; w < seen.size(); ++w) {
      Scheduler& s = core_.worker(w);
      const std::uint64_t beat = s.heartbeat();
      Seen& last = seen[w];
      if (!Scheduler::in_fiber(beat) || beat != last.heartbeat) {
        last = {beat, now, false};
        continue;
      }
      if (last.reported || now - last.since < threshold_) continue;
      last.reported = true;  // one report per episode, whatever the capture finds
      RunningCapture c;
      if (!s.capture_running(c, std::chrono::milliseconds(100)) || !c.found || c.heartbeat != beat) continue;
      debug::HogReport report;
      report.fiber = debug::detail_info_of(c, core_.serial(), w);
      // First seen at `since`, at most one interval after it was resumed.
      report.running_for = std::chrono::steady_clock::now() - last.since;
      report.threshold = threshold_;
      try {
        on_hog_(report);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "skein: the hog watchdog's callback threw: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "skein: the hog watchdog's callback threw\n");
      }
    }
  }

  RuntimeCore& core_;
  const std::chrono::milliseconds threshold_;
  std::function<void(const debug::HogReport&)> on_hog_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is set
};

HogMonitor* start_hog_monitor(RuntimeCore& core, std::chrono::milliseconds threshold,
                              std::function<void(const debug::HogReport&)> on_hog) {
  return new HogMonitor(core, threshold, std::move(on_hog));
}

void stop_hog_monitor(HogMonitor* monitor) noexcept {
  delete monitor;
}

}  // namespace skein::detail
