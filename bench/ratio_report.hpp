// What every Google Benchmark program in bench/ reports after the benchmarks' own table: a table of
// absolute figures, a table of ratios between two figures of the same run (checked against the
// targets, informationally: a MISS never fails the run), and the JSON file with the ratios added
// as "skein_ratios". Also the shared command line: --quick, --help, and --benchmark_out always JSON.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <unistd.h>

namespace skein_bench {

// Nanoseconds per iteration (wall clock, or CPU time of the benchmark thread) or a counter of every
// benchmark that ran, keyed "function[/args]". With repetitions, the median aggregate wins when
// there is one, else the median of the runs.
class Results {
 public:
  void add(const benchmark::BenchmarkReporter::Run& run) {
    if (run.error_occurred) return;
    std::string key = run.run_name.function_name;
    if (!run.run_name.args.empty()) key += "/" + run.run_name.args;
    Entry& e = entries_[key];
    const double to_ns = 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
    Sample s{run.GetAdjustedRealTime() * to_ns, run.GetAdjustedCPUTime() * to_ns, {}};
    for (const auto& [name, counter] : run.counters) s.counters[name] = counter.value;
    if (run.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate) {
      if (run.aggregate_name == "median") e.median = s;
    } else {
      e.runs.push_back(std::move(s));
    }
  }

  std::optional<double> ns(const std::string& key) const { return value(key, nullptr, false); }
  std::optional<double> cpu_ns(const std::string& key) const { return value(key, nullptr, true); }
  std::optional<double> counter(const std::string& key, const char* name) const {
    return value(key, name, false);
  }

 private:
  struct Sample {
    double ns;
    double cpu_ns;
    std::map<std::string, double> counters;
  };
  struct Entry {
    std::vector<Sample> runs;
    std::optional<Sample> median;
  };

  std::optional<double> value(const std::string& key, const char* counter, bool cpu) const {
    const auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    auto pick = [&](const Sample& s) -> std::optional<double> {
      if (!counter) return cpu ? s.cpu_ns : s.ns;
      const auto c = s.counters.find(counter);
      if (c == s.counters.end()) return std::nullopt;
      return c->second;
    };
    if (it->second.median) return pick(*it->second.median);
    std::vector<double> values;
    for (const Sample& s : it->second.runs)
      if (auto v = pick(s)) values.push_back(*v);
    if (values.empty()) return std::nullopt;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  }

  std::map<std::string, Entry> entries_;
};

// A measured quantity: a benchmark's wall time, or one of its counters.
struct Metric {
  const char* key;
  const char* counter = nullptr;
  std::optional<double> of(const Results& r) const { return counter ? r.counter(key, counter) : r.ns(key); }
  // The CPU time beside it (none for a counter).
  std::optional<double> cpu_of(const Results& r) const { return counter ? std::nullopt : r.cpu_ns(key); }
};

enum class Goal { info, at_most, at_least };

// num / den, from one run.
struct Ratio {
  const char* label;
  Metric num;
  Metric den;
  Goal goal = Goal::info;
  double target = 0;
  // Both sides run on the benchmark's thread alone, so its CPU time is their whole cost: the ratio
  // of CPU times is shown too, as a check that a busy machine (which inflates wall time) hardly
  // moves it. The verdict is on wall time.
  bool cpu_too = false;
};

struct Absolute {
  const char* label;
  Metric metric;
};

struct Verdict {
  std::optional<double> value;
  const char* mark;  // PASS, MISS, or "" for informational rows
};

inline std::optional<double> quotient(std::optional<double> num, std::optional<double> den) {
  if (!num || !den || *den <= 0) return std::nullopt;
  return *num / *den;
}

inline Verdict judge(const Ratio& r, const Results& results) {
  const auto v = quotient(r.num.of(results), r.den.of(results));
  if (!v || r.goal == Goal::info) return {v, ""};
  const bool ok = r.goal == Goal::at_most ? *v <= r.target : *v >= r.target;
  return {v, ok ? "PASS" : "MISS"};
}

// The ratio of CPU times, for the rows that have one (Ratio::cpu_too).
inline std::optional<double> cpu_ratio(const Ratio& r, const Results& results) {
  if (!r.cpu_too) return std::nullopt;
  return quotient(r.num.cpu_of(results), r.den.cpu_of(results));
}

inline const char* goal_op(Goal g) {
  return g == Goal::at_most ? "<=" : ">=";
}

inline std::string format_ns(double ns) {
  char buf[32];
  if (ns >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f ms", ns / 1e6);
  else if (ns >= 1e3)
    std::snprintf(buf, sizeof buf, "%.2f us", ns / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f ns", ns);
  return buf;
}

// The absolute table under `title`, wall and CPU time per row. `own_load` is how many CPUs the run
// itself keeps busy: a load average well above it means other work inflated the wall times.
inline void print_absolutes(const char* title, std::span<const Absolute> rows, const Results& results,
                            double own_load) {
  std::printf("\n%s\n", title);
  std::printf("  %-48s %12s %12s\n", "", "wall", "cpu");
  for (const Absolute& a : rows) {
    const auto v = a.metric.of(results);
    // CPU time is the benchmark thread's own; for two-thread rows it leaves out the partner.
    const auto cpu = a.metric.cpu_of(results);
    std::printf("  %-48s %12s %12s\n", a.label, v ? format_ns(*v).c_str() : "not run",
                cpu ? format_ns(*cpu).c_str() : "");
  }
  double load[1];
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (getloadavg(load, 1) == 1 && load[0] >= own_load + 0.5)
    std::printf(
        "  note: 1-minute load average %.1f on %ld CPUs (this run counts ~%.0f): other work shared\n"
        "        the CPUs, so wall times may be inflated\n",
        load[0], cpus, own_load);
}

// The ratio table under `heading`.
inline void print_ratios(const char* heading, std::span<const Ratio> ratios, const Results& results) {
  std::size_t width = 0;
  for (const Ratio& r : ratios) width = std::max(width, std::strlen(r.label));
  std::printf("\n%s\n", heading);
  for (const Ratio& r : ratios) {
    const Verdict v = judge(r, results);
    char value[32];
    if (v.value)
      std::snprintf(value, sizeof value, "%10.2fx", *v.value);
    else
      std::snprintf(value, sizeof value, "%11s", "n/a");
    char cpu[32] = "";
    if (const auto c = cpu_ratio(r, results)) std::snprintf(cpu, sizeof cpu, "  (cpu %.2fx)", *c);
    const int w = static_cast<int>(width);
    if (r.goal == Goal::info)
      std::printf("  %-*s = %s%s\n", w, r.label, value, cpu);
    else
      std::printf("  %-*s = %s  (target %s %.2f)  %s%s\n", w, r.label, value, goal_op(r.goal), r.target,
                  v.value ? v.mark : "not run", cpu);
  }
  std::fflush(stdout);
}

inline std::string json_number(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << *v;
  return s.str();
}

inline std::string ratios_json(std::span<const Ratio> ratios, const Results& results) {
  std::ostringstream out;
  out << "[";
  bool first = true;
  for (const Ratio& r : ratios) {
    const Verdict v = judge(r, results);
    out << (first ? "\n" : ",\n") << "    {\"name\": \"" << r.label
        << "\", \"value\": " << json_number(v.value) << ", \"numerator\": \"" << r.num.key
        << "\", \"numerator_ns\": " << json_number(r.num.of(results)) << ", \"denominator\": \"" << r.den.key
        << "\", \"denominator_ns\": " << json_number(r.den.of(results))
        << ", \"cpu_value\": " << json_number(cpu_ratio(r, results));
    if (r.goal == Goal::info)
      out << ", \"target\": null, \"pass\": null}";
    else
      out << ", \"target\": \"" << goal_op(r.goal) << " " << r.target
          << "\", \"pass\": " << (v.value ? (*v.mark == 'P' ? "true" : "false") : "null") << "}";
    first = false;
  }
  out << "\n  ]";
  return out.str();
}

// Google Benchmark's JSON file, with the ratio table added as "skein_ratios". It also collects the
// results: the file reporter sees every run and aggregate whatever the display flags say.
class RatioJsonReporter final : public benchmark::JSONReporter {
 public:
  RatioJsonReporter(Results& results, std::span<const Ratio> ratios) : results_(results), ratios_(ratios) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) results_.add(run);
    JSONReporter::ReportRuns(runs);
  }

  // The base class closes the document; its closing text is captured and reopened rather than
  // reproduced, so a change of its layout cannot make the file invalid.
  void Finalize() override {
    std::ostream& out = GetOutputStream();
    std::ostringstream tail;
    SetOutputStream(&tail);
    JSONReporter::Finalize();
    SetOutputStream(&out);
    std::string closing = tail.str();
    const auto brace = closing.rfind('}');
    if (brace == std::string::npos) {
      out << closing;
      return;
    }
    closing.erase(brace);
    while (!closing.empty() && std::isspace(static_cast<unsigned char>(closing.back()))) closing.pop_back();
    out << closing << ",\n  \"skein_ratios\": " << ratios_json(ratios_, results_) << "\n}\n";
  }

 private:
  Results& results_;
  std::span<const Ratio> ratios_;
};

// One benchmark program's identity for run_main().
struct Program {
  const char* name;            // in messages
  const char* default_out;     // --benchmark_out unless given
  const char* quick_min_time;  // --benchmark_min_time under --quick unless given
  void (*usage)(const char* argv0);
  std::span<const Ratio> ratios;
  void (*print_tables)(const Results&);
};

// The shared main: parses --quick/--help around Google Benchmark's flags, runs the benchmarks,
// prints the program's tables and writes the JSON. Returns the exit status.
inline int run_main(int argc, char** argv, const Program& p) {
  auto starts_with = [](std::string_view s, std::string_view prefix) {
    return s.substr(0, prefix.size()) == prefix;
  };
  std::vector<std::string> args{argv[0]};
  bool quick = false, has_out = false, has_min_time = false;
  std::string out_path = p.default_out;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      p.usage(argv[0]);
      benchmark::PrintDefaultHelp();
      return 0;
    }
    if (a == "--quick") {
      quick = true;
      continue;
    }
    if (starts_with(a, "--benchmark_out_format=") && a != "--benchmark_out_format=json") {
      std::fprintf(stderr, "%s: ignoring %s: the output file is always JSON (it carries the ratios)\n",
                   p.name, argv[i]);
      continue;
    }
    if (starts_with(a, "--benchmark_out=")) {
      has_out = true;
      out_path = std::string(a.substr(std::strlen("--benchmark_out=")));
    }
    if (starts_with(a, "--benchmark_min_time=")) has_min_time = true;
    args.emplace_back(a);
  }
  if (!has_out) args.push_back(std::string("--benchmark_out=") + p.default_out);
  if (quick && !has_min_time) args.push_back(std::string("--benchmark_min_time=") + p.quick_min_time);
  if (const auto dir = std::filesystem::path(out_path).parent_path(); !dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
  }

  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargv.data());
  if (benchmark::ReportUnrecognizedArguments(cargc, cargv.data())) return 1;

  Results results;
  RatioJsonReporter file_reporter(results, p.ratios);
  benchmark::RunSpecifiedBenchmarks(nullptr, &file_reporter);
  p.print_tables(results);
  std::printf("\nJSON: %s\n", out_path.c_str());
  benchmark::Shutdown();
  return 0;
}

}  // namespace skein_bench
