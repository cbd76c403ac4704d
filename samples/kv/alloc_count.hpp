// What the kv unit tests' replacement operator new (kv/test_main.cpp) has counted so far: for the
// tests that a claimed length allocates nothing and that a warm session allocates nothing per
// command.
#pragma once

#include <cstddef>

namespace skein_samples::kv::test {

// Calls to operator new.
std::size_t allocations() noexcept;
// Bytes asked of operator new.
std::size_t allocated_bytes() noexcept;

}  // namespace skein_samples::kv::test
