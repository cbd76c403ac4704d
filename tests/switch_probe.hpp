// Assembly probes for the switch tests, one .S per architecture (switch_probe_<arch>_<abi>_elf.S).
// Each takes the jump function to test, so both backends run through the same probes.
#pragma once

#include "context.hpp"

#include <cstdint>

using JumpFn = skein::detail::Transfer (*)(void*, void*) noexcept;

extern "C" {
// Loads known values into every callee-saved register and known FP control state (x86-64:
// RBX RBP R12-R15, MXCSR, x87 CW; aarch64: X19-X29, D8-D15, FPCR), jumps with `jump` into
// *clobber_ctx (a context started at skein_probe_clobber_entry), and checks them after it jumps
// back. Stores the clobber context's new handle in *clobber_ctx. Returns a bitmask of what did not
// survive (0: all preserved); bit 31 is the FP control state.
std::uint32_t skein_probe_callee_saved(void** clobber_ctx, JumpFn jump);

// Entry of a context that, each time it runs, overwrites every callee-saved register and the FP
// control state with other values, then jumps back (with the jump function it received as data).
void skein_probe_clobber_entry(skein::detail::Transfer t);

// Entry of a context that jumps straight back with data = the stack misalignment the ABI forbids
// at function entry (x86-64: (RSP + 8) mod 16; aarch64: SP mod 16), so 0 when correct.
void skein_probe_alignment_entry(skein::detail::Transfer t);
}
