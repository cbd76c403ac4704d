// What bench/skynet and bench/token_ring share: each variant runs in a process of its own, so
// that the peak RSS getrusage reports is that variant's alone; the result is one line for people
// and, with --json-line, one JSON object per line for scripts/bench-fibers (bench/skynet.go and
// bench/token_ring.go print the same fields). A watcher thread prints a progress line every few
// seconds while a variant runs, so that a minute-long run is not silent.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fiber_bench {

using Seconds = std::chrono::duration<double>;

// One variant's figures. `work` is what the variant counted (leaves, hops); `answer` is its result
// and `ok` whether the result was right.
struct Outcome {
  std::string bench;    // "skynet", "token_ring"
  std::string variant;  // e.g. "skein-1w"
  std::string label;    // e.g. "skein, 1 worker, spawn + join"
  std::string size;     // JSON fields describing the size, e.g. "\"leaves\": 1000000"
  long long answer = 0;
  bool ok = false;
  double wall_s = 0;      // the measured part
  double per_op_ns = -1;  // wall per unit of work, where that means something (token ring hops)
  double user_s = 0;      // getrusage(RUSAGE_SELF) at the end: the whole process, every thread
  double system_s = 0;
  long maxrss_kib = 0;
};

inline void fill_usage(Outcome& o) {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  o.user_s = static_cast<double>(ru.ru_utime.tv_sec) + static_cast<double>(ru.ru_utime.tv_usec) / 1e6;
  o.system_s = static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) / 1e6;
  o.maxrss_kib = ru.ru_maxrss;  // Linux: KiB
}

inline void print_outcome(const Outcome& o, bool json_line) {
  if (json_line) {
    std::printf(
        "{\"bench\": \"%s\", \"variant\": \"%s\", \"label\": \"%s\", %s, \"answer\": %lld, \"ok\": %s, "
        "\"wall_s\": %.6f, \"per_op_ns\": %.3f, \"user_s\": %.3f, \"system_s\": %.3f, \"maxrss_kib\": %ld}\n",
        o.bench.c_str(), o.variant.c_str(), o.label.c_str(), o.size.c_str(), o.answer,
        o.ok ? "true" : "false", o.wall_s, o.per_op_ns, o.user_s, o.system_s, o.maxrss_kib);
  } else {
    char per_op[48] = "";
    if (o.per_op_ns >= 0) std::snprintf(per_op, sizeof per_op, "  %9.1f ns/hop", o.per_op_ns);
    std::printf("%-46s %s  wall %8.3f s%s  peak RSS %9.1f MiB  user %7.2f s  sys %7.2f s\n", o.label.c_str(),
                o.ok ? "ok   " : "WRONG", o.wall_s, per_op, static_cast<double>(o.maxrss_kib) / 1024,
                o.user_s, o.system_s);
  }
  std::fflush(stdout);
}

// Prints "<program> [<variant>]: <elapsed> s<what()>" to stderr every `every` until destroyed.
class Progress {
 public:
  Progress(const char* program, std::string variant, std::function<std::string()> what,
           std::chrono::seconds every = std::chrono::seconds(5))
      : thread_([this, program, variant = std::move(variant), what = std::move(what), every] {
          const auto t0 = std::chrono::steady_clock::now();
          std::unique_lock lock(mutex_);
          while (!cv_.wait_for(lock, every, [this] { return stop_; })) {
            std::fprintf(stderr, "%s [%s]: %.0f s%s\n", program, variant.c_str(),
                         Seconds(std::chrono::steady_clock::now() - t0).count(), what().c_str());
          }
        }) {}
  ~Progress() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: it starts once the members it uses exist
};

// Runs run(variant) for each variant in a forked child (so each has its own peak RSS), one after
// the other. The child's status is run's return value. Returns 0 if every child exited 0, else 1.
inline int run_each_in_child(const char* program, std::span<const std::string_view> variants,
                             const std::function<int(std::string_view)>& run) {
  int failed = 0;
  for (const std::string_view v : variants) {
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "%s: fork: %s\n", program, std::strerror(errno));
      return 1;
    }
    if (pid == 0) {
      const int status = run(v);
      std::fflush(nullptr);
      _exit(status);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "%s [%.*s]: the run failed (wait status %d)\n", program,
                   static_cast<int>(v.size()), v.data(), status);
      failed = 1;
    }
  }
  return failed;
}

// A non-negative decimal number, or false.
inline bool parse_count(const char* s, long long& out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (errno || end == s || *end || v < 0) return false;
  out = v;
  return true;
}

// Appends `name` to `chosen` if it is one of `known`; otherwise says so on stderr and returns false.
inline bool add_variant(const char* program, std::span<const std::string_view> known, std::string_view name,
                        std::vector<std::string_view>& chosen) {
  for (const std::string_view k : known) {
    if (k == name) {
      chosen.push_back(k);
      return true;
    }
  }
  std::fprintf(stderr, "%s: unknown variant '%.*s' (see --help)\n", program, static_cast<int>(name.size()),
               name.data());
  return false;
}

// The options both programs take besides their sizes: --variant NAME (repeatable), --json-line.
struct CommonArgs {
  std::vector<std::string_view> variants;  // chosen, in the order given; none: all
  bool json_line = false;
};

// Takes argv[i] (stepping i past a value) and returns true if it is -h/--help, --variant NAME or
// --json-line. --help prints usage(argv[0]) and exits 0; an unknown variant exits 2.
inline bool take_common_arg(const char* program, std::span<const std::string_view> known,
                            void (*usage)(const char*), int& i, int argc, char** argv, CommonArgs& args) {
  const std::string_view a = argv[i];
  if (a == "--help" || a == "-h") {
    usage(argv[0]);
    std::exit(0);
  }
  if (a == "--variant" && i + 1 < argc) {
    if (!add_variant(program, known, argv[++i], args.variants)) std::exit(2);
    return true;
  }
  if (a == "--json-line") {
    args.json_line = true;
    return true;
  }
  return false;
}

// Runs the chosen variants, or all of `known` in order when none was chosen: a single one in this
// process, several each in a child of its own (run_each_in_child). Returns the exit status.
inline int run_variants(const char* program, std::span<const std::string_view> known,
                        std::vector<std::string_view> chosen,
                        const std::function<int(std::string_view)>& run) {
  if (chosen.empty()) chosen.assign(known.begin(), known.end());
  if (chosen.size() == 1) return run(chosen[0]);
  return run_each_in_child(program, chosen, run);
}

}  // namespace fiber_bench
