// Ties the assembly's frame offsets (frame_*.h, included by the .S) to a C++ description of the
// same frame, so the two cannot drift apart silently.
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include "frame_x86_64_sysv.h"

namespace skein::detail {
struct SavedFrameX86_64 {
  std::uint32_t mxcsr;
  std::uint16_t x87_cw;
  std::uint16_t pad;
  std::uint64_t r12, r13, r14, r15, rbx, rbp;
  void* rip;
};
static_assert(offsetof(SavedFrameX86_64, mxcsr) == SKEIN_FRAME_MXCSR);
static_assert(offsetof(SavedFrameX86_64, x87_cw) == SKEIN_FRAME_X87CW);
static_assert(offsetof(SavedFrameX86_64, r12) == SKEIN_FRAME_R12);
static_assert(offsetof(SavedFrameX86_64, r13) == SKEIN_FRAME_R13);
static_assert(offsetof(SavedFrameX86_64, r14) == SKEIN_FRAME_R14);
static_assert(offsetof(SavedFrameX86_64, r15) == SKEIN_FRAME_R15);
static_assert(offsetof(SavedFrameX86_64, rbx) == SKEIN_FRAME_RBX);
static_assert(offsetof(SavedFrameX86_64, rbp) == SKEIN_FRAME_RBP);
static_assert(offsetof(SavedFrameX86_64, rip) == SKEIN_FRAME_RIP);
static_assert(sizeof(SavedFrameX86_64) == SKEIN_FRAME_SIZE);
static_assert(SKEIN_FRAME_SIZE % 16 == 0, "a fresh context's stack must stay 16-byte aligned");
}  // namespace skein::detail
#endif
