// Chooses, once at start-up, how the x86-64 switch (switch_x86_64_sysv_elf.S) restores the FP
// control words: the fastest way differs between CPU vendors (docs/architecture.md, "The switch").
// Both ways are correct on every CPU; this only picks the faster.
#include "context.hpp"

#include <cpuid.h>

extern "C" {
// Read on every switch, written only by the constructor below: alone on its cache line, so that
// no write to a neighbour ever takes the line away from a switching thread.
constinit skein::detail::SwitchFpMode skein_switch_fp_mode{skein::detail::switch_fp_compare};
}

namespace {

unsigned char vendor_fp_mode() noexcept {
  unsigned max_leaf = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &max_leaf, &ebx, &ecx, &edx) == 0) return skein::detail::switch_fp_compare;
  // The vendor string's first four bytes are in EBX: "Auth"enticAMD, "Hygo"nGenuine (a Zen core).
  constexpr unsigned kAuth = 0x68747541, kHygo = 0x6f677948;
  return ebx == kAuth || ebx == kHygo ? skein::detail::switch_fp_load : skein::detail::switch_fp_compare;
}

// Runs before main and before any other constructor of this object; a switch made earlier (from
// another library's constructor) takes the compare path, which is correct, only slower on AMD.
[[gnu::constructor]] void select_switch_fp_mode() noexcept {
  skein_switch_fp_mode.mode = vendor_fp_mode();
}

}  // namespace
