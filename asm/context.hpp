// The context switch as C++ sees it: Boost.Context's fcontext interface, served either by skein's
// own assembly (asm/switch_*.S) or by Boost.Context, chosen at build time (meson option `context`).
// Internal to skein; nothing here is a public header.
#pragma once

#include <cstddef>

namespace skein::detail {

// What crosses a switch: the context that was left (to resume it later) and one pointer.
struct Transfer {
  void* ctx;
  void* data;
};

// Entry function of a fresh context. It receives the context that first resumed it and must
// never return: it leaves by jumping to another context.
using ContextEntry = void (*)(Transfer);

}  // namespace skein::detail

namespace skein::detail {

// How the x86-64 assembly switch restores the FP control words (asm/fp_mode_x86_64.cpp picks one
// from the CPU vendor at start-up). Either is correct on every CPU (the ABI makes MXCSR's control
// bits callee-saved and leaves its sticky exception flags unspecified across calls); they differ in
// speed, and in those flags: loading gives each context back its own, comparing lets them carry.
inline constexpr unsigned char switch_fp_compare = 0;  // restore them only when they differ (Intel)
inline constexpr unsigned char switch_fp_load = 1;     // always load MXCSR, compare the x87 word (AMD)

struct alignas(64) SwitchFpMode {
  unsigned char mode;
};

}  // namespace skein::detail

extern "C" {
#if defined(__x86_64__)
// The mode the switch uses; tests and benchmarks may set it while no other thread switches.
[[gnu::visibility("hidden")]] extern skein::detail::SwitchFpMode skein_switch_fp_mode;
#endif
// Suspends the running context and resumes `to`, handing it `data`. Returns when some context
// jumps back here, with that context and the pointer it passed.
skein::detail::Transfer skein_jump_fcontext(void* to, void* data) noexcept;
// Prepares a context on the stack whose highest address is `stack_top` (`size` bytes usable
// below it); its first resumption calls `fn`.
void* skein_make_fcontext(void* stack_top, std::size_t size, skein::detail::ContextEntry fn) noexcept;
}

#if defined(SKEIN_CONTEXT_BOOST) && SKEIN_CONTEXT_BOOST
#include <boost/context/detail/fcontext.hpp>
#endif

namespace skein::detail {

#if defined(SKEIN_CONTEXT_BOOST) && SKEIN_CONTEXT_BOOST
inline constexpr const char* context_backend = "boost";

inline Transfer jump_context(void* to, void* data) noexcept {
  const auto t = boost::context::detail::jump_fcontext(to, data);
  return {t.fctx, t.data};
}

// Boost's entry type takes boost's transfer_t, which has Transfer's layout; the entry is only
// ever called from Boost's assembly, so the cast is an ABI identity, not a C++ call.
inline void* make_context(void* stack_top, std::size_t size, ContextEntry fn) noexcept {
  return boost::context::detail::make_fcontext(
      stack_top, size,
      reinterpret_cast<void (*)(boost::context::detail::transfer_t)>(reinterpret_cast<void (*)()>(fn)));
}
#else
inline constexpr const char* context_backend = "asm";

inline Transfer jump_context(void* to, void* data) noexcept {
  return skein_jump_fcontext(to, data);
}

inline void* make_context(void* stack_top, std::size_t size, ContextEntry fn) noexcept {
  return skein_make_fcontext(stack_top, size, fn);
}
#endif

}  // namespace skein::detail
