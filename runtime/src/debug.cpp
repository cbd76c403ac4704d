// skein::debug: snapshots of every worker's fiber records and counters, and the dump built on
// them. Each worker copies its own records (Scheduler::copy_records) at its next turn, asked
// through its inbox; see docs/observability.md.
#include <skein/debug.hpp>

#include "runtime_core.hpp"
#include "scheduler.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace skein::debug {

namespace {

using detail::DebugRequest;
using detail::Scheduler;

// Asks every worker of every runtime for its copy and waits for all of them (parked if the caller
// is a fiber, so its own worker keeps answering others meanwhile; blocked if a plain thread).
std::vector<DebugRequest::Slot> collect(bool want_fibers) {
  DebugRequest request;
  request.want_fibers = want_fibers;
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
      here->copy_records(want_fibers ? &request.slots[own].fibers : nullptr, &request.slots[own].stats);
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
  for (std::size_t i = 0; i < request.slots.size(); ++i)
    if (answered[i]) slots.push_back(std::move(request.slots[i]));
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
  std::vector<DebugRequest::Slot> slots = collect(true);
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
  if (f.cancel_requested) s += ", cancel requested";
  if (f.shielded) s += ", shielded";
  s += ')';
  return s;
}

void dump(std::ostream& out, const DumpOptions& options) {
  const std::vector<DebugRequest::Slot> slots = collect(true);
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

  // Folded like Go's goroutine dump: fibers doing the same thing, spawned at the same place.
  struct Group {
    std::vector<const FiberInfo*> members;
    std::chrono::nanoseconds min_wait = std::chrono::nanoseconds::max();
    std::chrono::nanoseconds max_wait{0};
  };
  using Key = std::tuple<int, int, std::string, std::string, std::string, const char*>;
  std::map<Key, Group> groups;
  for (const FiberInfo* f : all) {
    Key key{static_cast<int>(f->state),
            static_cast<int>(f->reason),
            f->name,
            site_text(f->spawned_at),
            f->spawned_at.function_name() ? f->spawned_at.function_name() : "",
            f->hooked_call};
    Group& g = groups[key];
    g.members.push_back(f);
    g.min_wait = std::min(g.min_wait, f->waiting);
    g.max_wait = std::max(g.max_wait, f->waiting);
  }
  std::vector<const std::pair<const Key, Group>*> order;
  order.reserve(groups.size());
  for (const auto& g : groups) order.push_back(&g);
  std::stable_sort(order.begin(), order.end(),
                   [](auto* a, auto* b) { return a->second.members.size() > b->second.members.size(); });
  for (const auto* entry : order) {
    const Group& g = entry->second;
    const FiberInfo& first = *g.members.front();
    out << '\n';
    if (g.members.size() == 1) {
      out << "fiber " << describe(first) << '\n';
      continue;
    }
    // The detail is shown when all members wait on the same thing (one channel, one mutex).
    const bool same_detail = std::all_of(g.members.begin(), g.members.end(),
                                         [&](const FiberInfo* f) { return f->detail == first.detail; });
    out << g.members.size() << " fibers";
    if (!first.name.empty()) out << " \"" << first.name << '"';
    out << ' ' << doing_text(first, same_detail);
    if (first.state == FiberState::parked) {
      out << " for " << duration_text(g.min_wait);
      if (g.max_wait != g.min_wait) out << "-" << duration_text(g.max_wait);
    }
    out << "\n    spawned at " << site_text(first.spawned_at);
    if (first.spawned_at.function_name() && *first.spawned_at.function_name())
      out << " in " << first.spawned_at.function_name();
    out << "\n    ids:";
    const std::size_t shown = std::min(g.members.size(), options.ids_per_group);
    for (std::size_t i = 0; i < shown; ++i) out << " #" << g.members[i]->id;
    if (shown < g.members.size()) out << " ... (" << g.members.size() - shown << " more)";
    out << '\n';
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
