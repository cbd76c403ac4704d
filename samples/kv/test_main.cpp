// The doctest main of the kv unit tests (resp_test, store_test, kv_session_test), and the counting
// operator new they share (alloc_count.hpp).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "alloc_count.hpp"

#include <cstddef>
#include <cstdlib>
#include <new>

namespace {
std::size_t g_allocations = 0;
std::size_t g_allocated_bytes = 0;
}  // namespace

namespace skein_samples::kv::test {
std::size_t allocations() noexcept {
  return g_allocations;
}
std::size_t allocated_bytes() noexcept {
  return g_allocated_bytes;
}
}  // namespace skein_samples::kv::test

void* operator new(std::size_t size) {
  ++g_allocations;
  g_allocated_bytes += size;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC matches the free() below against the new-expressions it inlines it into, not against the
// operator new above, and calls that a mismatch.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
