// How many fibers fit at once, and what each one costs: N fibers spawned on one thread, all alive
// together (each sleeps until a common deadline), then woken and finished. Reports spawn time, RSS,
// page tables and memory mappings per fiber, and wake+finish time.
//
// Churn: C short-lived fibers (each yields once and ends) with at most A alive at a time; reports
// the cost per fiber and the RSS when A were alive against the RSS at the end (stacks are reused,
// and the idle ones are given back, so the end must not exceed the peak).
//
// The kernel's share: in the same run, what touching a fresh stack page costs (no design avoids
// it: every live fiber has its top page resident), and what one mapping per stack cost the design
// skein had before slabs (mmap + guard + first touch, munmap at the end).
//
// The baseline, in the same run, is the same program with mprotect guard pages (two mappings per
// stack, so vm.max_map_count caps it near 32k stacks), run in a forked child at an N that fits, so
// that its RSS and mapping counts are its own; skein's defaults are also run at that N, so the
// two differ only in guard mode.
//
//   fiber_scale [--fibers N] [--baseline-fibers M] [--churn C] [--churn-alive A] [--trim MODE]
//               [--json PATH]     (--help for details)

#include <skein/run.hpp>
#include <skein/stack.hpp>
#include <skein/task.hpp>
#include <skein/time.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using Seconds = std::chrono::duration<double>;

constexpr const char* kDefaultJson = "out/bench/fiber_scale.json";
constexpr long kDefaultFibers = 1'000'000;
constexpr long kDefaultBaselineFibers = 25'000;
constexpr long kDefaultChurn = 10'000'000;
constexpr long kDefaultChurnAlive = 100'000;
constexpr long kProgressEvery = 100'000;
constexpr long kChurnProgressEvery = 1'000'000;
// Pages touched to measure what a fresh page costs, and stacks mapped for the per-stack baseline.
constexpr long kDefaultKernelSamples = 20'000;
// Linux 6.13+ (not in glibc 2.36's headers).
constexpr int kMadvGuardInstall = 102;

// Mappings left free for everything that is not a fiber stack (libraries, heap growth, the
// kernel's own splitting), when sizing the mprotect run under vm.max_map_count.
constexpr long kMapHeadroom = 2'000;

// ---- /proc readings ------------------------------------------------------------------------

long read_long_file(const char* path, long fallback) {
  std::ifstream in(path);
  long v = 0;
  return (in >> v) ? v : fallback;
}

long max_map_count() {
  return read_long_file("/proc/sys/vm/max_map_count", 65530);
}

long count_mappings() {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return -1;
  long lines = 0;
  char buf[4096];  // small: this runs on a fiber's 64 KiB stack
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) lines += std::count(buf, buf + n, '\n');
  std::fclose(f);
  return lines;
}

// A "Vm...:  <n> kB" line of /proc/self/status, in bytes.
long status_bytes(std::string_view field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size(), field) == 0 && line.size() > field.size() && line[field.size()] == ':')
      return std::strtol(line.c_str() + field.size() + 1, nullptr, 10) * 1024;
  }
  return -1;
}

struct Memory {
  long rss = 0;          // bytes resident
  long page_tables = 0;  // bytes of page tables (VmPTE)
  long mappings = 0;     // lines of /proc/self/maps
  long slabs = 0;        // skein's stack slabs (skein::stack_stats)

  static Memory now() {
    return {status_bytes("VmRSS"), status_bytes("VmPTE"), count_mappings(),
            static_cast<long>(skein::stack_stats().slabs)};
  }
};

double now_s() {
  return Seconds(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const char* mode_name(skein::GuardMode m) {
  switch (m) {
    case skein::GuardMode::automatic:
      return "automatic";
    case skein::GuardMode::madvise:
      return "madvise";
    case skein::GuardMode::mprotect:
      return "mprotect";
  }
  return "?";
}

// ---- one phase -----------------------------------------------------------------------------

// Plain data: the baseline's copy crosses a pipe from the child process.
struct PhaseResult {
  char label[32] = "";
  char guard[16] = "";
  char error[160] = "";
  long requested = 0;
  long spawned = 0;           // may fall short of requested if the kernel refused a stack
  long alive_at_measure = 0;  // fibers parked in their sleep when memory was measured
  double spawn_s = 0;         // spawning all of them (none has run yet)
  double first_run_s = 0;     // running each up to its sleep
  double idle_s = 0;          // waiting for the common deadline
  double finish_s = 0;        // from the deadline until all finished and skein::run returned
  double total_s = 0;
  Memory before, after;
  long rss_end = 0;  // every fiber finished and skein::run returned
  bool ok = false;
};

// Errors end up inside JSON strings: keep them free of characters that would need escaping.
void set_error(PhaseResult& r, const char* text) {
  std::snprintf(r.error, sizeof r.error, "%s", text);
  for (char* c = r.error; *c; ++c)
    if (*c == '"' || *c == '\\' || static_cast<unsigned char>(*c) < 0x20) *c = '\'';
}

void progress(const char* label, const char* what, long done, long total) {
  std::fprintf(stderr, "fiber_scale [%s]: %s %ld / %ld\n", label, what, done, total);
}

PhaseResult run_phase(const char* label, skein::GuardMode mode, long n) {
  PhaseResult r;
  std::snprintf(r.label, sizeof r.label, "%s", label);
  skein::set_guard_mode(mode);
  std::snprintf(r.guard, sizeof r.guard, "%s", mode_name(skein::effective_guard_mode()));
  r.requested = n;
  std::fprintf(stderr, "fiber_scale [%s]: spawning %ld fibers (%s guard pages)\n", label, n, r.guard);

  r.before = Memory::now();
  const auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point t_spawned, t_started;
  skein::TimePoint deadline = skein::no_deadline;
  try {
    skein::run([&] {
      long alive = 0;
      long finished = 0;
      for (long i = 0; i < n; ++i) {
        try {
          // Detached: a Task handle per fiber would add its own memory to what is measured.
          skein::spawn([&] {
            ++alive;
            if (alive % kProgressEvery == 0) progress(label, "started", alive, n);
            skein::sleep_until(deadline);
            --alive;
            if (++finished % kProgressEvery == 0) progress(label, "finished", finished, r.spawned);
          }).detach();
        } catch (const std::system_error& e) {
          set_error(r, ("spawn #" + std::to_string(i + 1) + " failed: " + e.what()).c_str());
          std::fprintf(stderr, "fiber_scale [%s]: %s\n", label, r.error);
          break;
        }
        r.spawned = i + 1;
        if (r.spawned % kProgressEvery == 0) progress(label, "spawned", r.spawned, n);
      }
      t_spawned = std::chrono::steady_clock::now();
      // The spawned fibers start over the next scheduler rounds (a round starts a bounded number
      // of new fibers, for fairness), so this fiber yields until every one has run up to its
      // sleep, then measures. The deadline only has to be late enough that they really sleep:
      // starting a fiber costs a fraction of spawning it (no mmap, no page fault), so a quarter
      // of the spawn time is margin enough and keeps the idle wait short.
      deadline = skein::deadline_after(std::max<std::chrono::steady_clock::duration>(
          std::chrono::milliseconds(100), (t_spawned - t0) / 4));
      do {
        skein::yield();
      } while (alive + finished < r.spawned && skein::Clock::now() < deadline);
      t_started = std::chrono::steady_clock::now();
      r.after = Memory::now();
      r.alive_at_measure = alive;
      std::fprintf(stderr, "fiber_scale [%s]: %ld fibers alive; waiting for the deadline\n", label, alive);
      skein::sleep_until(deadline);
    });
    r.ok = true;
  } catch (const std::exception& e) {
    set_error(r, e.what());
  }
  const auto t_end = std::chrono::steady_clock::now();
  r.rss_end = status_bytes("VmRSS");
  const auto woke = std::max(t_started, deadline == skein::no_deadline ? t_started : deadline);
  r.spawn_s = Seconds(t_spawned - t0).count();
  r.first_run_s = Seconds(t_started - t_spawned).count();
  r.idle_s = Seconds(woke - t_started).count();
  r.finish_s = Seconds(t_end - woke).count();
  r.total_s = Seconds(t_end - t0).count();
  return r;
}

// Runs `fn` in a forked child, before the parent has mapped anything, and brings its result (plain
// data) back through a pipe; `failed(status)` makes the result when the child does not deliver.
template <class R, class Fn, class Failed>
R in_child(Fn fn, Failed failed) {
  int fds[2];
  if (pipe(fds) != 0) return failed(-1);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return failed(-1);
  if (pid == 0) {
    close(fds[0]);
    const R child = fn();
    const bool sent = write(fds[1], &child, sizeof child) == static_cast<ssize_t>(sizeof child);
    _exit(sent ? 0 : 1);
  }
  close(fds[1]);
  R r{};
  std::size_t got = 0;
  auto* bytes = reinterpret_cast<char*>(&r);
  while (got < sizeof r) {
    const ssize_t k = read(fds[0], bytes + got, sizeof r - got);
    if (k <= 0) break;
    got += static_cast<std::size_t>(k);
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return got == sizeof r ? r : failed(status);
}

PhaseResult run_phase_in_child(const char* label, skein::GuardMode mode, long n) {
  return in_child<PhaseResult>([&] { return run_phase(label, mode, n); },
                               [&](int status) {
                                 PhaseResult r;
                                 std::snprintf(r.label, sizeof r.label, "%s", label);
                                 std::snprintf(r.error, sizeof r.error,
                                               "child process failed (wait status %d)", status);
                                 return r;
                               });
}

// ---- churn ---------------------------------------------------------------------------------

struct ChurnResult {
  long fibers = 0;
  long max_alive = 0;
  long peak_alive_seen = 0;
  double wall_s = 0;
  long rss_before = 0;
  long rss_at_peak = 0;  // the first time `max_alive` fibers were alive
  double fill_s = 0;     // until then: every stack is fresh (first-touch faults)
  long fill_fibers = 0;
  long rss_end = 0;  // every fiber finished, skein::run returned
  long rss_high_water = 0;
  long mappings_end = 0;
  long slabs = 0;
  long slots_carved = 0;
  long trims = 0;
  bool ok = false;
  char error[160] = "";
};

// One spawner keeps up to `max_alive` fibers alive; each yields once (so fibers of several
// rounds overlap) and ends, its stack going back to the pool for the next spawn.
ChurnResult run_churn(long total, long max_alive) {
  ChurnResult r;
  r.fibers = total;
  r.max_alive = max_alive;
  r.rss_before = status_bytes("VmRSS");
  std::fprintf(stderr, "fiber_scale [churn]: %ld short-lived fibers, at most %ld alive\n", total, max_alive);
  const double t0 = now_s();
  try {
    skein::run([&] {
      long alive = 0;
      for (long i = 0; i < total;) {
        if (alive >= max_alive) {
          if (r.rss_at_peak == 0) {
            r.rss_at_peak = status_bytes("VmRSS");
            r.fill_s = now_s() - t0;
            r.fill_fibers = i;
          }
          skein::yield();
          continue;
        }
        skein::spawn([&alive] {
          skein::yield();
          --alive;
        }).detach();
        ++alive;
        r.peak_alive_seen = std::max(r.peak_alive_seen, alive);
        if (++i % kChurnProgressEvery == 0)
          std::fprintf(stderr, "fiber_scale [churn]: spawned %ld / %ld (%.1f s, RSS %.1f MiB)\n", i, total,
                       now_s() - t0, static_cast<double>(status_bytes("VmRSS")) / (1 << 20));
      }
    });
    r.ok = true;
  } catch (const std::exception& e) {
    std::snprintf(r.error, sizeof r.error, "%s", e.what());
  }
  r.wall_s = now_s() - t0;
  if (r.rss_at_peak == 0) r.rss_at_peak = status_bytes("VmRSS");
  r.rss_end = status_bytes("VmRSS");
  r.rss_high_water = status_bytes("VmHWM");
  r.mappings_end = count_mappings();
  const skein::StackStats st = skein::stack_stats();
  r.slabs = static_cast<long>(st.slabs);
  r.slots_carved = static_cast<long>(st.slots_carved);
  r.trims = static_cast<long>(st.trims);
  return r;
}

// ---- the kernel's share ----------------------------------------------------------------------

struct KernelCosts {
  long samples = 0;
  double fresh_touch_us = 0;      // first write to a page of a reserved region (per page)
  double map_guard_touch_us = 0;  // mmap + guard page + first touch, one mapping per stack
  double unmap_us = 0;            // munmap of such a stack
  bool ok = false;
};

KernelCosts measure_kernel(long n, skein::GuardMode mode) {
  KernelCosts k;
  k.samples = n;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t slot = skein::default_stack_size + page;
  void* region = mmap(nullptr, slot * static_cast<std::size_t>(n), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) return k;
  auto* base = static_cast<volatile char*>(region);
  double t0 = now_s();
  for (long i = 0; i < n; ++i) base[static_cast<std::size_t>(i + 1) * slot - 64] = 1;
  k.fresh_touch_us = (now_s() - t0) * 1e6 / static_cast<double>(n);
  munmap(region, slot * static_cast<std::size_t>(n));

  std::vector<void*> stacks;
  stacks.reserve(static_cast<std::size_t>(n));
  t0 = now_s();
  for (long i = 0; i < n; ++i) {
    void* p = mmap(nullptr, slot, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) break;
    if (mode == skein::GuardMode::madvise)
      madvise(p, page, kMadvGuardInstall);
    else
      mprotect(p, page, PROT_NONE);
    static_cast<volatile char*>(p)[slot - 64] = 1;
    stacks.push_back(p);
  }
  const double mapped = now_s() - t0;
  t0 = now_s();
  for (void* p : stacks) munmap(p, slot);
  const double unmapped = now_s() - t0;
  if (stacks.empty()) return k;
  k.map_guard_touch_us = mapped * 1e6 / static_cast<double>(stacks.size());
  k.unmap_us = unmapped * 1e6 / static_cast<double>(stacks.size());
  k.ok = true;
  return k;
}

// ---- report --------------------------------------------------------------------------------

double per_fiber(long delta, const PhaseResult& r) {
  return r.alive_at_measure > 0 ? static_cast<double>(delta) / static_cast<double>(r.alive_at_measure) : 0;
}

void print_table(const PhaseResult* phases, int count, long page_size, long map_limit) {
  std::printf(
      "\nfiber_scale: N fibers alive at once on one thread, each parked in sleep_until(common deadline)\n");
  std::printf(
      "stack: %zu KiB reserved per fiber, committed when touched; page %ld B; vm.max_map_count %ld\n\n",
      skein::default_stack_size / 1024, page_size, map_limit);
  std::printf("  %-34s", "");
  for (int i = 0; i < count; ++i) std::printf(" %20s", phases[i].label);
  std::printf("\n");
  auto row = [&](const char* name, auto cell) {
    std::printf("  %-34s", name);
    for (int i = 0; i < count; ++i) {
      char buf[64] = "-";
      if (phases[i].spawned > 0) cell(phases[i], buf, sizeof buf);
      std::printf(" %20s", buf);
    }
    std::printf("\n");
  };
  row("guard pages",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%s", r.guard); });
  row("fibers alive at once",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%ld", r.alive_at_measure); });
  row("spawn / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.3f us", r.spawn_s * 1e6 / static_cast<double>(r.spawned));
  });
  row("first run up to sleep / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.3f us", r.first_run_s * 1e6 / static_cast<double>(r.spawned));
  });
  row("wake + finish / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.3f us", r.finish_s * 1e6 / static_cast<double>(r.spawned));
  });
  row("RSS / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.2f KiB", per_fiber(r.after.rss - r.before.rss, r) / 1024);
  });
  row("page tables / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.0f B", per_fiber(r.after.page_tables - r.before.page_tables, r));
  });
  row("mappings / fiber", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.4f", per_fiber(r.after.mappings - r.before.mappings, r));
  });
  row("RSS total (delta)", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.1f MiB", static_cast<double>(r.after.rss - r.before.rss) / (1 << 20));
  });
  row("RSS after all finished (delta)", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%.1f MiB", static_cast<double>(r.rss_end - r.before.rss) / (1 << 20));
  });
  row("mappings total (delta)", [](const PhaseResult& r, char* b, std::size_t n) {
    std::snprintf(b, n, "%ld", r.after.mappings - r.before.mappings);
  });
  row("mappings in /proc/self/maps",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%ld", r.after.mappings); });
  row("stack slabs reserved",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%ld", r.after.slabs); });
  row("fiber cap by vm.max_map_count", [map_limit](const PhaseResult& r, char* b, std::size_t n) {
    const double per = per_fiber(r.after.mappings - r.before.mappings, r);
    if (per < 0.01)
      std::snprintf(b, n, "none");
    else
      std::snprintf(b, n, "~%.0f", static_cast<double>(map_limit) / per);
  });
  row("idle until deadline",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%.3f s", r.idle_s); });
  row("total wall time",
      [](const PhaseResult& r, char* b, std::size_t n) { std::snprintf(b, n, "%.3f s", r.total_s); });
  for (int i = 0; i < count; ++i) {
    const PhaseResult& r = phases[i];
    if (r.error[0]) std::printf("  note [%s]: %s\n", r.label, r.error);
    if (r.spawned > 0 && r.alive_at_measure != r.spawned)
      std::printf("  note [%s]: only %ld of %ld fibers were alive when measured\n", r.label,
                  r.alive_at_measure, r.spawned);
  }
  std::fflush(stdout);
}

void json_phase(std::FILE* f, const PhaseResult& r) {
  auto d = [&](long after, long before) { return per_fiber(after - before, r); };
  const double spawned = r.spawned > 0 ? static_cast<double>(r.spawned) : 1;
  std::fprintf(f,
               "    {\"label\": \"%s\", \"guard_mode\": \"%s\", \"ok\": %s, \"error\": \"%s\",\n"
               "     \"fibers_requested\": %ld, \"fibers_spawned\": %ld, \"fibers_alive_at_measure\": %ld,\n"
               "     \"spawn_s\": %.6f, \"first_run_s\": %.6f, \"idle_s\": %.6f, \"finish_s\": %.6f,"
               " \"total_s\": %.6f,\n"
               "     \"spawn_ns_per_fiber\": %.1f, \"first_run_ns_per_fiber\": %.1f,"
               " \"finish_ns_per_fiber\": %.1f,\n"
               "     \"rss_bytes_before\": %ld, \"rss_bytes_after\": %ld, \"rss_bytes_per_fiber\": %.1f,\n"
               "     \"page_table_bytes_before\": %ld, \"page_table_bytes_after\": %ld,"
               " \"page_table_bytes_per_fiber\": %.1f,\n"
               "     \"mappings_before\": %ld, \"mappings_after\": %ld, \"mappings_per_fiber\": %.4f,"
               " \"stack_slabs\": %ld, \"rss_bytes_end\": %ld}",
               r.label, r.guard, r.ok ? "true" : "false", r.error, r.requested, r.spawned, r.alive_at_measure,
               r.spawn_s, r.first_run_s, r.idle_s, r.finish_s, r.total_s, r.spawn_s * 1e9 / spawned,
               r.first_run_s * 1e9 / spawned, r.finish_s * 1e9 / spawned, r.before.rss, r.after.rss,
               d(r.after.rss, r.before.rss), r.before.page_tables, r.after.page_tables,
               d(r.after.page_tables, r.before.page_tables), r.before.mappings, r.after.mappings,
               d(r.after.mappings, r.before.mappings), r.after.slabs, r.rss_end);
}

bool write_json(const std::string& path, const PhaseResult* phases, int count, long page_size, long map_limit,
                const ChurnResult* churn, const KernelCosts* kernel) {
  if (const auto dir = std::filesystem::path(path).parent_path(); !dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
  }
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  utsname u{};
  uname(&u);
  std::fprintf(f,
               "{\n  \"benchmark\": \"fiber_scale\",\n  \"kernel\": \"%s %s\",\n  \"page_size\": %ld,\n"
               "  \"max_map_count\": %ld,\n  \"stack_reserved_bytes\": %zu,\n  \"phases\": [\n",
               u.sysname, u.release, page_size, map_limit, skein::default_stack_size);
  for (int i = 0; i < count; ++i) {
    json_phase(f, phases[i]);
    std::fprintf(f, i + 1 < count ? ",\n" : "\n");
  }
  std::fprintf(f, "  ]");
  if (churn)
    std::fprintf(
        f,
        ",\n  \"churn\": {\"ok\": %s, \"error\": \"%s\", \"fibers\": %ld, \"max_alive\": %ld,"
        " \"peak_alive_seen\": %ld,\n    \"wall_s\": %.6f, \"ns_per_fiber\": %.1f,"
        " \"fill_s\": %.6f, \"fill_fibers\": %ld, \"rss_bytes_before\": %ld, \"rss_bytes_at_peak\": %ld, "
        "\"rss_bytes_end\": %ld,"
        " \"rss_high_water_bytes\": %ld,\n    \"end_over_peak\": %.4f, \"mappings_end\": %ld,"
        " \"stack_slabs\": %ld, \"slots_carved\": %ld, \"trims\": %ld}",
        churn->ok ? "true" : "false", churn->error, churn->fibers, churn->max_alive, churn->peak_alive_seen,
        churn->wall_s, churn->wall_s * 1e9 / static_cast<double>(churn->fibers), churn->fill_s,
        churn->fill_fibers, churn->rss_before, churn->rss_at_peak, churn->rss_end, churn->rss_high_water,
        churn->rss_at_peak > 0 ? static_cast<double>(churn->rss_end) / static_cast<double>(churn->rss_at_peak)
                               : 0,
        churn->mappings_end, churn->slabs, churn->slots_carved, churn->trims);
  if (kernel)
    std::fprintf(f,
                 ",\n  \"kernel\": {\"ok\": %s, \"samples\": %ld, \"fresh_page_touch_us\": %.3f,"
                 " \"mapping_per_stack_us\": %.3f, \"munmap_per_stack_us\": %.3f}",
                 kernel->ok ? "true" : "false", kernel->samples, kernel->fresh_touch_us,
                 kernel->map_guard_touch_us, kernel->unmap_us);
  std::fprintf(f, "\n}\n");
  return std::fclose(f) == 0;
}

void print_churn(const ChurnResult& c) {
  const double mib = 1 << 20;
  std::printf("\nchurn: %ld short-lived fibers (each yields once), at most %ld alive at a time\n\n", c.fibers,
              c.max_alive);
  std::printf("  %-34s %20.3f us\n", "spawn + run + finish / fiber",
              c.wall_s * 1e6 / static_cast<double>(c.fibers));
  std::printf("  %-34s %20.3f us\n", "  the first A (fresh stacks)",
              c.fill_fibers > 0 ? c.fill_s * 1e6 / static_cast<double>(c.fill_fibers) : 0.0);
  std::printf("  %-34s %20.3f us\n", "  the rest (reused stacks)",
              c.fibers > c.fill_fibers
                  ? (c.wall_s - c.fill_s) * 1e6 / static_cast<double>(c.fibers - c.fill_fibers)
                  : 0.0);
  std::printf("  %-34s %20ld\n", "most fibers alive at once", c.peak_alive_seen);
  std::printf("  %-34s %17.1f MiB\n", "RSS before", static_cast<double>(c.rss_before) / mib);
  std::printf("  %-34s %17.1f MiB\n", "RSS with the most alive", static_cast<double>(c.rss_at_peak) / mib);
  std::printf("  %-34s %17.1f MiB\n", "RSS at the end (all finished)", static_cast<double>(c.rss_end) / mib);
  std::printf("  %-34s %20.3f\n", "end / most-alive RSS (target <= 1.10)",
              c.rss_at_peak > 0 ? static_cast<double>(c.rss_end) / static_cast<double>(c.rss_at_peak) : 0);
  std::printf("  %-34s %17.1f MiB\n", "RSS high-water mark (VmHWM)",
              static_cast<double>(c.rss_high_water) / mib);
  std::printf("  %-34s %20ld\n", "stacks carved (ever)", c.slots_carved);
  std::printf("  %-34s %20ld\n", "stack slabs", c.slabs);
  std::printf("  %-34s %20ld\n", "trim batches", c.trims);
  std::printf("  %-34s %20ld\n", "mappings in /proc/self/maps", c.mappings_end);
  if (c.error[0]) std::printf("  note [churn]: %s\n", c.error);
  std::fflush(stdout);
}

void print_kernel(const KernelCosts& k, const PhaseResult& main_phase) {
  if (!k.ok) return;
  std::printf("\nthe kernel's share, %ld stacks of %zu KiB, same run (per stack)\n\n", k.samples,
              skein::default_stack_size / 1024);
  std::printf("  %-52s %10.3f us\n", "first touch of a fresh page (the floor of any spawn)",
              k.fresh_touch_us);
  std::printf("  %-52s %10.3f us\n", "baseline: mmap + guard + first touch, a mapping each",
              k.map_guard_touch_us);
  std::printf("  %-52s %10.3f us\n", "baseline: munmap of such a stack", k.unmap_us);
  if (main_phase.spawned > 0) {
    const double spawn_us = main_phase.spawn_s * 1e6 / static_cast<double>(main_phase.spawned);
    std::printf("  %-52s %10.3f us\n", "skein spawn at N (main run)", spawn_us);
    std::printf("  %-52s %10.3f us\n", "skein spawn at N less the first-touch floor",
                spawn_us - k.fresh_touch_us);
  }
  std::fflush(stdout);
}

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--fibers N] [--baseline-fibers M] [--churn C] [--churn-alive A]\n"
      "          [--trim dontneed|free] [--kernel-samples K] [--json PATH]\n"
      "\n"
      "Spawns N fibers that stay alive together (each sleeps until a common deadline) and reports\n"
      "spawn time, RSS, page tables and memory mappings per fiber, then wake+finish time.\n"
      "The baseline runs the same with mprotect guard pages at M fibers, next to skein's defaults\n"
      "at M fibers; each in a child process, so memory figures do not mix.\n"
      "Churn spawns C short-lived fibers with at most A alive and compares the RSS at the end with\n"
      "the RSS when A were alive. The kernel's share: what a fresh page's first touch costs, and what\n"
      "a mapping per stack (mmap + guard + touch, then munmap) costs, measured on K stacks.\n"
      "\n"
      "  --fibers N           fibers in the main run (default %ld)\n"
      "  --baseline-fibers M  fibers in the baseline runs (default %ld, lowered to fit under\n"
      "                       vm.max_map_count; 0 skips them)\n"
      "  --churn C            short-lived fibers in the churn run (default %ld; 0 skips it)\n"
      "  --churn-alive A      most fibers alive at once in the churn run (default %ld)\n"
      "  --trim MODE          how idle stacks go back to the kernel: dontneed (default) or free\n"
      "  --kernel-samples K   stacks for the kernel's share (default %ld; 0 skips it)\n"
      "  --json PATH          where to write the results (default %s)\n"
      "  --help               this text\n"
      "\n"
      "Progress goes to stderr, the table to stdout.\n",
      argv0, kDefaultFibers, kDefaultBaselineFibers, kDefaultChurn, kDefaultChurnAlive, kDefaultKernelSamples,
      kDefaultJson);
}

bool parse_count(const char* s, long& out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (errno || end == s || *end || v < 0) return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long fibers = kDefaultFibers;
  long baseline = kDefaultBaselineFibers;
  long churn = kDefaultChurn;
  long churn_alive = kDefaultChurnAlive;
  long kernel_samples = kDefaultKernelSamples;
  std::string json = kDefaultJson;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--help" || a == "-h") {
      usage(argv[0]);
      return 0;
    } else if (a == "--fibers" && has_value && parse_count(argv[i + 1], fibers)) {
      ++i;
    } else if (a == "--baseline-fibers" && has_value && parse_count(argv[i + 1], baseline)) {
      ++i;
    } else if (a == "--churn" && has_value && parse_count(argv[i + 1], churn)) {
      ++i;
    } else if (a == "--churn-alive" && has_value && parse_count(argv[i + 1], churn_alive) &&
               churn_alive > 0) {
      ++i;
    } else if (a == "--kernel-samples" && has_value && parse_count(argv[i + 1], kernel_samples)) {
      ++i;
    } else if (a == "--trim" && has_value &&
               (std::string_view(argv[i + 1]) == "dontneed" || std::string_view(argv[i + 1]) == "free")) {
      skein::set_stack_trim(std::string_view(argv[++i]) == "free" ? skein::StackTrim::free
                                                                  : skein::StackTrim::dontneed);
    } else if (a == "--json" && has_value) {
      json = argv[++i];
    } else {
      std::fprintf(stderr, "fiber_scale: bad argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }

  const long page_size = sysconf(_SC_PAGESIZE);
  const long map_limit = max_map_count();
  PhaseResult phases[3];
  int count = 0;

  // The main run: skein's defaults. Where the kernel cannot put guard pages in the page tables,
  // skein falls back to mprotect and N must fit under vm.max_map_count like the baseline.
  const bool mappings_cap_main = skein::effective_guard_mode() == skein::GuardMode::mprotect;
  const long map_fit = std::max(0L, (map_limit - count_mappings() - kMapHeadroom) / 2);
  long main_n = fibers;
  if (mappings_cap_main && main_n > map_fit) {
    std::fprintf(stderr,
                 "fiber_scale: this kernel has no MADV_GUARD_INSTALL, so skein uses mprotect guard pages;"
                 " lowering --fibers from %ld to %ld to fit under vm.max_map_count %ld\n",
                 main_n, map_fit, map_limit);
    main_n = map_fit;
  }
  const long base_n = std::min(baseline, map_fit);
  if (baseline > 0 && base_n < baseline)
    std::fprintf(stderr,
                 "fiber_scale: lowering --baseline-fibers from %ld to %ld to fit vm.max_map_count %ld\n",
                 baseline, base_n, map_limit);

  // Children first, forked while this process is still small. The defaults at the baseline's N
  // separate what the guard mode costs from what the number of fibers costs.
  phases[count++] = PhaseResult{};  // the main run's slot, filled last
  if (baseline > 0) {
    phases[count++] = run_phase_in_child("default, baseline N", skein::GuardMode::automatic, base_n);
    phases[count++] = run_phase_in_child("baseline (mprotect)", skein::GuardMode::mprotect, base_n);
  }
  ChurnResult churn_result;
  if (churn > 0)
    churn_result = in_child<ChurnResult>([&] { return run_churn(churn, churn_alive); },
                                         [](int status) {
                                           ChurnResult r;
                                           std::snprintf(r.error, sizeof r.error,
                                                         "child process failed (wait status %d)", status);
                                           return r;
                                         });
  KernelCosts kernel;
  if (kernel_samples > 0) {
    const skein::GuardMode mode = skein::effective_guard_mode();
    kernel = in_child<KernelCosts>([&] { return measure_kernel(kernel_samples, mode); },
                                   [](int) { return KernelCosts{}; });
  }
  phases[0] = run_phase("skein default", skein::GuardMode::automatic, main_n);

  print_table(phases, count, page_size, map_limit);
  if (churn > 0) print_churn(churn_result);
  print_kernel(kernel, phases[0]);
  if (write_json(json, phases, count, page_size, map_limit, churn > 0 ? &churn_result : nullptr,
                 kernel_samples > 0 ? &kernel : nullptr))
    std::printf("\nJSON: %s\n", json.c_str());
  else
    std::fprintf(stderr, "fiber_scale: cannot write %s: %s\n", json.c_str(), std::strerror(errno));
  return phases[0].ok && (churn == 0 || churn_result.ok) ? 0 : 1;
}
