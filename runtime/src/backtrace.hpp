// Backtraces of suspended contexts (a parked fiber, a suspended coroutine) and of the calling
// thread, and their symbolisation (docs/observability.md, "Backtraces"). The compiler's own
// unwinder (_Unwind_Backtrace) walks a suspended stack from the registers its switch saved; names,
// source lines and inlined calls come from the DWARF debug information through libdw, cached per
// return address.
//
// Without libdw (SKEIN_HAVE_LIBDW undefined: a cross build without the target's package) names
// come from the dynamic symbol table (dladdr), without source lines.
#pragma once

#include <skein/detail/exec_context.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace skein::detail {

// Frames an unwind records at most by default: deeper stacks are cut (the dump says so).
inline constexpr std::size_t backtrace_max_frames = 64;

// Whether this build can unwind: every supported switch (skein's x86-64 and AArch64 assembly,
// Boost.Context's fcontext on both) has the layout of its saved frame described here.
bool backtraces_available() noexcept;

// Unwinds a suspended context: `ctx` is the handle a switch left (ExecContext::sp of a context
// that is not running: Fiber::resume_at->sp of a parked or ready fiber). Writes the return
// addresses of its frames, innermost first (the first is where the context resumes), to `pcs`;
// returns how many (at most `max`). The context must stay suspended during the call. With a
// non-empty `stack`, the walk stops where the stack pointer leaves it. Async-signal-safe.
std::size_t unwind_suspended(const void* ctx, const Stack& stack, std::uintptr_t* pcs,
                             std::size_t max) noexcept;

// The same for a context record: its own handle and stack. `ctx` must not be running.
inline std::size_t unwind_suspended(const ExecContext& ctx, std::uintptr_t* pcs, std::size_t max) noexcept {
  return unwind_suspended(ctx.sp, ctx.stack, pcs, max);
}

// The whole stack of a parked or ready fiber, given the context it resumes (Fiber::resume_at:
// the fiber itself, or a coroutine it parked inside): that context's frames, then, for a
// coroutine, those of the context that resumed it, and so on down to the fiber's own stack. Each
// coroutine's part ends with its entry frame (skein_context_entry). The same conditions as above.
std::size_t unwind_parked(const ExecContext& resume_at, std::uintptr_t* pcs, std::size_t max) noexcept;

// Unwinds the calling thread's stack (a running fiber's, or the thread's own): the return
// addresses of the caller's frames, innermost first, the first `skip` of them left out. Returns
// how many it wrote (at most `max`). Async-signal-safe: a signal handler may call it (the frame
// the signal interrupted is recorded as the interrupted instruction's address plus one).
std::size_t unwind_here(std::uintptr_t* pcs, std::size_t max, std::size_t skip = 0) noexcept;

// One function a return address lies in. Several for one address when calls were inlined: the
// innermost first, each with the source position inside it.
struct SymbolFrame {
  std::string function;  // demangled ("skein::Channel<int>::recv()"), or "??" if unknown
  std::string source;    // "file:line" from the debug information, or empty
  std::string module;    // the executable or library, when `source` is empty ("libc.so.6+0x27b1")
  bool inlined = false;  // inlined into the frame that follows it
};

// The functions the return address `pc` lies in (the call instruction before it, in fact).
// Computed once per address, then served from a cache; the reference stays valid for the life
// of the process. Thread-safe; not async-signal-safe (it allocates and takes a lock).
const std::vector<SymbolFrame>& symbolize(std::uintptr_t pc);

// Symbolises, all at once, those of `pcs` not in the cache yet (from a fiber: on one helper
// thread, for libdw's deep stack), so that symbolize() then serves them all from the cache.
void symbolize_all(const std::uintptr_t* pcs, std::size_t n);

// Bytes of `stack` ever touched, as the kernel knows it: from the lowest committed page to the
// top (mincore). `scratch` is reused between calls. 0 if the kernel does not say.
std::size_t stack_high_water(const Stack& stack, std::vector<unsigned char>& scratch) noexcept;

// The same for many stacks at once, into used[i] for stacks[i]: stacks that lie next to each
// other (the slots of a slab, a guard page apart) share one mincore call, a hundred times
// cheaper than one call each.
void stack_high_waters(const std::vector<Stack>& stacks, std::size_t* used) noexcept;

// Appends one line per frame, numbered from 0, to `out`, each prefixed by `indent`:
//   #3 0x000055d0c0a1b2c3 in my_handler(skein::Stream&) at samples/echo_server.cpp:42
// Inlined calls get a line (and a number) of their own, marked "(inlined)". `pcs` as returned by
// the unwinds above; `truncated` adds a last line saying the stack went deeper.
void format_backtrace(std::string& out, const std::uintptr_t* pcs, std::size_t n, const char* indent = "",
                      bool truncated = false);

}  // namespace skein::detail
