// A test case that cannot run here (no IPv6 loopback, a kernel without a feature) calls
// skein_test::skip(why) and returns. Such a case is registered as a Meson test of its own
// (tests/meson.build), and a run in which every case skipped exits 77: Meson reports SKIP, not OK.
#pragma once

#include <string_view>

namespace skein_test {

// Records that the current test case skipped, and prints why ("SKIP: why").
void skip(std::string_view why);

}  // namespace skein_test
