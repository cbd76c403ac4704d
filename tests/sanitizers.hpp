// Which sanitizer a test program runs under, for the cases that size themselves down there (TSan
// pays a fresh shadow for every fiber stack it sees: thousands of fibers take it tens of seconds).
#pragma once

namespace skein_test {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool under_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool under_tsan = true;
#else
inline constexpr bool under_tsan = false;
#endif
#else
inline constexpr bool under_tsan = false;
#endif

}  // namespace skein_test
