// Where a call was made, as skein::debug reports a fiber's spawn site: std::source_location's
// interface (current(), file_name, line, function_name), built on the builtins GCC and Clang
// share. Not std::source_location itself: Clang 14 with libstdc++ 12 has none, and the fiber
// record that holds one must have the same layout whichever compiler includes it.
#pragma once

#include <cstdint>

namespace skein {

class SourceLocation {
 public:
  // As a defaulted argument, the location of the call that left it out.
  static constexpr SourceLocation current(const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                                          const char* function = __builtin_FUNCTION()) noexcept {
    SourceLocation where;
    where.file_ = file;
    where.function_ = function;
    where.line_ = static_cast<std::uint_least32_t>(line);
    return where;
  }
  // An unknown location: empty names, line 0.
  constexpr SourceLocation() noexcept = default;

  constexpr const char* file_name() const noexcept { return file_; }
  constexpr const char* function_name() const noexcept { return function_; }
  constexpr std::uint_least32_t line() const noexcept { return line_; }

 private:
  const char* file_ = "";
  const char* function_ = "";
  std::uint_least32_t line_ = 0;
};

}  // namespace skein
