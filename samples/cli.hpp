// cli.hpp: the command-line helpers the samples share. Set cli::program once at the top of
// main; every error then reads "PROG: MESSAGE\nTry 'PROG --help'." on stderr and exits 2.
//
//   cli::program = "tasks";
//   for (int i = 1; i < argc; ++i) {
//     std::string_view value;
//     if (cli::is_help(argv[i])) {
//       std::fputs(kUsage, stdout);
//       return 0;
//     } else if (cli::option("--tasks", i, argc, argv, value)) {
//       n = cli::number("--tasks", value, 1, 10000);
//     } else {
//       cli::unknown_argument(argv[i]);
//     }
//   }

#pragma once

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace skein_samples::cli {

// The program's name as messages show it; set it once, before parsing.
inline const char* program = "?";

// Prints "PROG: message" and the --help hint to stderr, then exits with status 2.
[[noreturn]] inline void usage_error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\nTry '%s --help'.\n", program, message.c_str(), program);
  std::exit(2);
}

// True if `arg` asks for the usage text: -h or --help.
inline bool is_help(std::string_view arg) {
  return arg == "-h" || arg == "--help";
}

// Rejects `arg` as an argument the program does not know (a usage error).
[[noreturn]] inline void unknown_argument(std::string_view arg) {
  usage_error("unknown argument '" + std::string(arg) + "'");
}

// If argv[i] is `name VALUE` or `name=VALUE`, stores VALUE (stepping i past it) and returns true.
inline bool option(std::string_view name, int& i, int argc, char** argv, std::string_view& value) {
  const std::string_view arg = argv[i];
  if (arg.size() > name.size() && arg.starts_with(name) && arg[name.size()] == '=') {
    value = arg.substr(name.size() + 1);
    return true;
  }
  if (arg != name) return false;
  if (i + 1 >= argc) usage_error(std::string(name) + " needs a value");
  value = argv[++i];
  return true;
}

// The whole of `text` as a T (integer or floating) in [lo, hi], or a usage error naming `name`.
template <class T>
T number(std::string_view name, std::string_view text, T lo, T hi) {
  static_assert(std::is_arithmetic_v<T>);
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end)
    usage_error("invalid value for " + std::string(name) + ": '" + std::string(text) + "'");
  if (!(value >= lo && value <= hi)) {  // also rejects NaN
    std::string range;
    if constexpr (std::is_floating_point_v<T>) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%g and %g", static_cast<double>(lo), static_cast<double>(hi));
      range = buf;
    } else {
      range = std::to_string(lo) + " and " + std::to_string(hi);
    }
    usage_error(std::string(name) + " must be between " + range);
  }
  return value;
}

}  // namespace skein_samples::cli
