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
#elif defined(__aarch64__)
#include "frame_aarch64_aapcs.h"

namespace skein::detail {
struct SavedFrameAarch64 {
  std::uint64_t fpcr;
  std::uint64_t pad;
  std::uint64_t x19, x20, x21, x22, x23, x24, x25, x26, x27, x28;
  std::uint64_t x29;  // frame pointer
  void* x30;          // link register: where the context resumes
  double d8, d9, d10, d11, d12, d13, d14, d15;
};
static_assert(offsetof(SavedFrameAarch64, fpcr) == SKEIN_FRAME_FPCR);
static_assert(offsetof(SavedFrameAarch64, x19) == SKEIN_FRAME_X19);
static_assert(offsetof(SavedFrameAarch64, x20) == SKEIN_FRAME_X20);
static_assert(offsetof(SavedFrameAarch64, x21) == SKEIN_FRAME_X21);
static_assert(offsetof(SavedFrameAarch64, x22) == SKEIN_FRAME_X22);
static_assert(offsetof(SavedFrameAarch64, x23) == SKEIN_FRAME_X23);
static_assert(offsetof(SavedFrameAarch64, x24) == SKEIN_FRAME_X24);
static_assert(offsetof(SavedFrameAarch64, x25) == SKEIN_FRAME_X25);
static_assert(offsetof(SavedFrameAarch64, x26) == SKEIN_FRAME_X26);
static_assert(offsetof(SavedFrameAarch64, x27) == SKEIN_FRAME_X27);
static_assert(offsetof(SavedFrameAarch64, x28) == SKEIN_FRAME_X28);
static_assert(offsetof(SavedFrameAarch64, x29) == SKEIN_FRAME_X29);
static_assert(offsetof(SavedFrameAarch64, x30) == SKEIN_FRAME_X30);
static_assert(offsetof(SavedFrameAarch64, d8) == SKEIN_FRAME_D8);
static_assert(offsetof(SavedFrameAarch64, d9) == SKEIN_FRAME_D9);
static_assert(offsetof(SavedFrameAarch64, d10) == SKEIN_FRAME_D10);
static_assert(offsetof(SavedFrameAarch64, d11) == SKEIN_FRAME_D11);
static_assert(offsetof(SavedFrameAarch64, d12) == SKEIN_FRAME_D12);
static_assert(offsetof(SavedFrameAarch64, d13) == SKEIN_FRAME_D13);
static_assert(offsetof(SavedFrameAarch64, d14) == SKEIN_FRAME_D14);
static_assert(offsetof(SavedFrameAarch64, d15) == SKEIN_FRAME_D15);
static_assert(sizeof(SavedFrameAarch64) == SKEIN_FRAME_SIZE);
static_assert(SKEIN_FRAME_SIZE % 16 == 0, "a fresh context's stack must stay 16-byte aligned");
static_assert(SKEIN_FRAME_X19 % 16 == 0 && SKEIN_FRAME_X21 % 16 == 0 && SKEIN_FRAME_X23 % 16 == 0 &&
                  SKEIN_FRAME_X25 % 16 == 0 && SKEIN_FRAME_X27 % 16 == 0 && SKEIN_FRAME_X29 % 16 == 0 &&
                  SKEIN_FRAME_D8 % 16 == 0 && SKEIN_FRAME_D10 % 16 == 0 && SKEIN_FRAME_D12 % 16 == 0 &&
                  SKEIN_FRAME_D14 % 16 == 0,
              "every stp/ldp pair is 16-byte aligned, so none straddles a cache line");
}  // namespace skein::detail
#endif
