// Unwinding with the compiler's own unwinder (libgcc's _Unwind_Backtrace) from a suspended
// context, through a stub whose call-frame information points at the saved frame; symbolisation
// with libdw. Why these: docs/observability.md, "Backtraces".
#include "backtrace.hpp"

#include "switch.hpp"

#include <skein/detail/coroutine.hpp>

#include <unwind.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(SKEIN_HAVE_LIBDW)
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <unistd.h>
#endif

// The saved frame a context handle points at, from the switch in use.
#if defined(SKEIN_CONTEXT_BOOST) && SKEIN_CONTEXT_BOOST
#if defined(__x86_64__)
// Boost.Context's fcontext (jump_x86_64_sysv_elf_gas.S; checked against the disassembly of the
// 1.74 library): the same layout as skein's own switch.
#define SKEIN_FRAME_R12 0x08
#define SKEIN_FRAME_R13 0x10
#define SKEIN_FRAME_R14 0x18
#define SKEIN_FRAME_R15 0x20
#define SKEIN_FRAME_RBX 0x28
#define SKEIN_FRAME_RBP 0x30
#define SKEIN_FRAME_RIP 0x38
#define SKEIN_FRAME_SIZE 0x40
#elif defined(__aarch64__)
// Boost.Context's fcontext (jump_arm64_aapcs_elf_gas.S): D8-D15 at 0x00, X19-X30 from 0x40, and
// the resume address once more at 0xa0 (the one it returns through).
#define SKEIN_FRAME_X19 0x40
#define SKEIN_FRAME_X29 0x90
#define SKEIN_FRAME_PC 0xa0
#define SKEIN_FRAME_SIZE 0xb0
#endif
#else
#if defined(__x86_64__)
#include "frame_x86_64_sysv.h"
#elif defined(__aarch64__)
#include "frame_aarch64_aapcs.h"
#define SKEIN_FRAME_PC SKEIN_FRAME_X30  // it resumes where its saved LR points
#endif
#endif

#define SKEIN_BT_STR2(x) #x
#define SKEIN_BT_STR(x) SKEIN_BT_STR2(x)

// skein_bt_call_on(ctx, fn, arg) calls fn(arg) on the caller's stack, but its call-frame
// information says that its caller is the suspended context `ctx`: the canonical frame address is
// the stack pointer the context resumes with (handle + frame size, read from the slot where the
// stub keeps the handle), the return address and the callee-saved registers lie in the saved
// frame. An unwinder started inside fn therefore walks fn, the stub, then the parked stack, with
// exactly the registers the switch would restore. Nothing is written to the parked stack.
//
// DW_CFA_def_cfa_expression (0x0f) {DW_OP_breg<sp> 0; DW_OP_deref; DW_OP_plus_uconst SIZE}.
#if defined(__x86_64__) && defined(SKEIN_FRAME_SIZE)
static_assert(SKEIN_FRAME_SIZE < 0x80, "the frame size is written as a one-byte ULEB128 below");
// clang-format off
asm(R"(
        .text
        .p2align 4
        .globl  skein_bt_call_on
        .hidden skein_bt_call_on
        .type   skein_bt_call_on, @function
skein_bt_call_on:                             /* (ctx: rdi, fn: rsi, arg: rdx) */
        .cfi_startproc
        pushq   %rdi                          /* the handle, where the CFA expression reads it */
        .cfi_escape 0x0f, 0x05, 0x77, 0x00, 0x06, 0x23, )" SKEIN_BT_STR(SKEIN_FRAME_SIZE) R"(
        .cfi_offset rip, )" SKEIN_BT_STR(SKEIN_FRAME_RIP - SKEIN_FRAME_SIZE) R"(
        .cfi_offset rbp, )" SKEIN_BT_STR(SKEIN_FRAME_RBP - SKEIN_FRAME_SIZE) R"(
        .cfi_offset rbx, )" SKEIN_BT_STR(SKEIN_FRAME_RBX - SKEIN_FRAME_SIZE) R"(
        .cfi_offset r12, )" SKEIN_BT_STR(SKEIN_FRAME_R12 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset r13, )" SKEIN_BT_STR(SKEIN_FRAME_R13 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset r14, )" SKEIN_BT_STR(SKEIN_FRAME_R14 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset r15, )" SKEIN_BT_STR(SKEIN_FRAME_R15 - SKEIN_FRAME_SIZE) R"(
        movq    %rdx, %rdi
        call    *%rsi
skein_bt_call_on_return:                      /* the return address the walk recognises */
        .globl  skein_bt_call_on_return
        .hidden skein_bt_call_on_return
        popq    %rdi
        .cfi_def_cfa rsp, 8
        .cfi_restore rip
        .cfi_restore rbp
        .cfi_restore rbx
        .cfi_restore r12
        .cfi_restore r13
        .cfi_restore r14
        .cfi_restore r15
        ret
        .cfi_endproc
        .size   skein_bt_call_on, .-skein_bt_call_on
)");
// clang-format on
#define SKEIN_BT_STUB 1
#elif defined(__aarch64__) && defined(SKEIN_FRAME_SIZE)
static_assert(SKEIN_FRAME_SIZE >= 0x80 && SKEIN_FRAME_SIZE < 0x4000, "written as a two-byte ULEB128 below");
// clang-format off
asm(R"(
        .text
        .p2align 4
        .globl  skein_bt_call_on
        .hidden skein_bt_call_on
        .type   skein_bt_call_on, %function
skein_bt_call_on:                             /* (ctx: x0, fn: x1, arg: x2) */
        .cfi_startproc
        hint    #34                           /* BTI c */
        stp     x0, x30, [sp, #-16]!          /* the handle at [sp], and our LR */
        .cfi_escape 0x0f, 0x06, 0x8f, 0x00, 0x06, 0x23, ()" SKEIN_BT_STR(SKEIN_FRAME_SIZE) R"( & 0x7f) | 0x80, )" SKEIN_BT_STR(SKEIN_FRAME_SIZE) R"( >> 7
        .cfi_offset x30, )" SKEIN_BT_STR(SKEIN_FRAME_PC - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x29, )" SKEIN_BT_STR(SKEIN_FRAME_X29 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x19, )" SKEIN_BT_STR(SKEIN_FRAME_X19 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x20, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 8 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x21, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 16 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x22, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 24 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x23, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 32 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x24, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 40 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x25, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 48 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x26, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 56 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x27, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 64 - SKEIN_FRAME_SIZE) R"(
        .cfi_offset x28, )" SKEIN_BT_STR(SKEIN_FRAME_X19 + 72 - SKEIN_FRAME_SIZE) R"(
        mov     x0, x2
        blr     x1
skein_bt_call_on_return:                      /* the return address the walk recognises */
        .globl  skein_bt_call_on_return
        .hidden skein_bt_call_on_return
        ldp     x0, x30, [sp], #16
        .cfi_def_cfa sp, 0
        .cfi_restore x30
        .cfi_restore x29
        .cfi_restore x19
        .cfi_restore x20
        .cfi_restore x21
        .cfi_restore x22
        .cfi_restore x23
        .cfi_restore x24
        .cfi_restore x25
        .cfi_restore x26
        .cfi_restore x27
        .cfi_restore x28
        ret
        .cfi_endproc
        .size   skein_bt_call_on, .-skein_bt_call_on
)");
// clang-format on
#define SKEIN_BT_STUB 1
#endif

#if defined(SKEIN_BT_STUB)
extern "C" {
void skein_bt_call_on(const void* ctx, void (*fn)(void*), void* arg);
extern const char skein_bt_call_on_return[];
}
#endif

namespace skein::detail {

namespace {

// What a walk collects. `started`: frames are recorded once the walk has passed its own frames
// (the stub's, for a suspended context; unwind_here's, for the thread's own stack).
struct Walk {
  std::uintptr_t* pcs;
  std::size_t max;
  std::size_t n = 0;
  std::uintptr_t start_after = 0;  // the return address that ends (or, here, starts) the walk's own
  bool started = false;
  std::uintptr_t lo = 0, hi = 0;  // the stack the frames must lie on, when known
};

_Unwind_Reason_Code on_frame(_Unwind_Context* context, void* arg) {
  auto& w = *static_cast<Walk*>(arg);
  int before = 0;
  const std::uintptr_t ip = _Unwind_GetIPInfo(context, &before);
  if (ip == 0) return _URC_END_OF_STACK;
  if (!w.started) {
    w.started = ip == w.start_after;
    return _URC_NO_REASON;
  }
  if (w.hi) {
    // A frame's CFA is its caller's stack pointer; on the context's own stack, or just past its top
    // for the entry trampoline. Anything else is a walk gone astray.
    const std::uintptr_t cfa = _Unwind_GetCFA(context);
    if (cfa < w.lo || cfa > w.hi + 64) return _URC_END_OF_STACK;
  }
  // Every recorded address lies one past the instruction it stands for, as a return address does;
  // the frame a signal interrupted (the watchdog's) has the interrupted instruction's own address.
  w.pcs[w.n++] = before ? ip + 1 : ip;
  return w.n < w.max ? _URC_NO_REASON : _URC_END_OF_STACK;
}

[[gnu::noinline]] void walk_from_stub(void* arg) {
  _Unwind_Backtrace(on_frame, arg);
  asm volatile("" ::: "memory");  // not a tail call: the stub's frame must stay below this one
}

}  // namespace

bool backtraces_available() noexcept {
#if defined(SKEIN_BT_STUB)
  return true;
#else
  return false;
#endif
}

std::size_t unwind_suspended(const void* ctx, const Stack& stack, std::uintptr_t* pcs,
                             std::size_t max) noexcept {
#if defined(SKEIN_BT_STUB)
  if (!ctx || max == 0) return 0;
  Walk w{pcs, max};
  w.start_after = reinterpret_cast<std::uintptr_t>(skein_bt_call_on_return);
  if (stack) {
    w.lo = reinterpret_cast<std::uintptr_t>(stack.lo);
    w.hi = reinterpret_cast<std::uintptr_t>(stack.hi());
  }
  skein_bt_call_on(ctx, walk_from_stub, &w);
  return w.n;
#else
  (void)ctx, (void)stack, (void)pcs, (void)max;
  return 0;
#endif
}

std::size_t unwind_parked(const ExecContext& resume_at, std::uintptr_t* pcs, std::size_t max) noexcept {
  std::size_t n = 0;
  const ExecContext* c = &resume_at;
  // Bounded: a chain of coroutines each resumed by the next is as deep as the program made it.
  for (int depth = 0; c && n < max && depth < 64; ++depth) {
    n += unwind_suspended(*c, pcs + n, max - n);
    if (c->kind != ContextKind::coroutine) break;
    c = static_cast<const CoroutineCore*>(c)->caller;
  }
  return n;
}

namespace {
// The thread's own stack: the walk starts at the frame of unwind_here's caller, recognised by its
// return address (however many frames of its own the unwinder reports first).
_Unwind_Reason_Code on_frame_here(_Unwind_Context* context, void* arg) {
  auto& w = *static_cast<Walk*>(arg);
  if (!w.started) {
    int before = 0;
    if (_Unwind_GetIPInfo(context, &before) != w.start_after) return _URC_NO_REASON;
    w.started = true;
  }
  return on_frame(context, arg);
}
}  // namespace

[[gnu::noinline]] std::size_t unwind_here(std::uintptr_t* pcs, std::size_t max, std::size_t skip) noexcept {
#if defined(SKEIN_BT_STUB)
  if (max == 0) return 0;
  std::uintptr_t scratch[backtrace_max_frames + 16];
  const std::size_t want = max + skip < std::size(scratch) ? max + skip : std::size(scratch);
  Walk w{scratch, want};
  w.start_after = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  _Unwind_Backtrace(on_frame_here, &w);
  asm volatile("" ::: "memory");  // not a tail call
  std::size_t n = 0;
  for (std::size_t i = skip; i < w.n && n < max; ++i) pcs[n++] = scratch[i];
  return n;
#else
  (void)pcs, (void)max, (void)skip;
  return 0;
#endif
}

namespace {

std::string demangle(const char* name) {
  if (!name) return "??";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

std::string file_name(const char* path) {
  return path ? std::filesystem::path(path).filename().string() : std::string("??");
}

#if defined(SKEIN_HAVE_LIBDW)
const char* string_attr(Dwarf_Die* die, unsigned name) {
  Dwarf_Attribute attr;
  return dwarf_formstring(dwarf_attr_integrate(die, name, &attr));
}

// A function's name from its DIE: the linkage name demangled (it has the parameters), else the
// plain name. Both are looked up through abstract origins, as an inlined instance has neither.
// `symbol`, the ELF symbol at the address, comes second: it names a function's split-off cold
// part "f.cold", and is the only full name of an extern "C" function.
std::string die_function_name(Dwarf_Die* die, const char* symbol = nullptr) {
  const char* linkage = string_attr(die, DW_AT_linkage_name);
  if (!linkage) linkage = string_attr(die, DW_AT_MIPS_linkage_name);
  if (linkage) return demangle(linkage);
  if (symbol) return demangle(symbol);
  const char* plain = string_attr(die, DW_AT_name);
  return plain ? std::string(plain) : std::string("??");
}

#endif  // SKEIN_HAVE_LIBDW

// Symbolises return addresses, once each. libdw is not thread-safe, and one Dwfl per process is
// enough: every access holds the lock.
class Symbolizer {
 public:
  Symbolizer() {
    std::error_code ec;
    cwd_ = std::filesystem::current_path(ec).string();
    if (!cwd_.empty() && cwd_.back() != '/') cwd_ += '/';
  }
  ~Symbolizer() {
#if defined(SKEIN_HAVE_LIBDW)
    if (dwfl_) dwfl_end(dwfl_);
#endif
  }
  Symbolizer(const Symbolizer&) = delete;
  Symbolizer& operator=(const Symbolizer&) = delete;

  // Symbolises the addresses not in the cache yet, all at once.
  void prepare(const std::uintptr_t* pcs, std::size_t n) {
    std::lock_guard<std::mutex> hold(lock_);
    std::vector<std::uintptr_t> missing;
    for (std::size_t i = 0; i < n; ++i)
      if (!cache_.contains(pcs[i])) missing.push_back(pcs[i]);
    if (missing.empty()) return;
    std::vector<std::vector<SymbolFrame>> found(missing.size());
    const auto work = [&] {
      for (std::size_t i = 0; i < missing.size(); ++i) found[i] = resolve(missing[i]);
    };
#if defined(SKEIN_HAVE_LIBDW)
    const bool small_stack = running_context().kind != ContextKind::thread;
#else
    const bool small_stack = false;
#endif
    if (!small_stack) {
      work();
    } else {
      // libdw reads a line table with a few hundred KiB of stack; a fiber's is 64 KiB. The
      // thread's own stack is not at hand from here: a thread of the caller's, for as long as it
      // takes (a cache miss costs its creation, about 50 us).
      try {
        std::thread(work).join();
      } catch (const std::system_error&) {
        return;  // no thread to be had: the addresses stay unknown this time
      }
    }
    for (std::size_t i = 0; i < missing.size(); ++i) cache_.try_emplace(missing[i], std::move(found[i]));
  }

  const std::vector<SymbolFrame>& lookup(std::uintptr_t pc) {
    prepare(&pc, 1);
    std::lock_guard<std::mutex> hold(lock_);
    const auto it = cache_.find(pc);
    return it != cache_.end() ? it->second : unknown_;
  }

 private:
#if defined(SKEIN_HAVE_LIBDW)
  // The modules of the process as they are now; again when an address lies in none of them (a
  // library loaded since).
  bool report(bool again) {
    if (!dwfl_) {
      dwfl_ = dwfl_begin(&callbacks_);
      if (!dwfl_) return false;
    } else if (again) {
      dwfl_report_begin_add(dwfl_);
    } else {
      return true;
    }
    const int err = dwfl_linux_proc_report(dwfl_, getpid());
    dwfl_report_end(dwfl_, nullptr, nullptr);
    return err == 0;
  }

  Dwfl_Module* module_of(Dwarf_Addr addr) {
    if (!report(false)) return nullptr;
    if (Dwfl_Module* m = dwfl_addrmodule(dwfl_, addr)) return m;
    if (reports_left_ == 0 || !report(true)) return nullptr;
    --reports_left_;
    return dwfl_addrmodule(dwfl_, addr);
  }

  // "file:line", the file relative to the working directory when it lies under it. Empty for line
  // 0: code the compiler made up, attributed to no line.
  std::string source(Dwarf_Die* cu, const char* file, int line) {
    if (!file || line <= 0) return {};
    std::filesystem::path p(file);
    if (p.is_relative()) {  // relative to the directory it was compiled in
      Dwarf_Attribute attr;
      if (const char* dir = dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &attr))) p = dir / p;
    }
    std::string path = p.lexically_normal().string();
    if (!cwd_.empty() && path.compare(0, cwd_.size(), cwd_) == 0) path.erase(0, cwd_.size());
    return path + ':' + std::to_string(line);
  }

  std::vector<SymbolFrame> resolve(std::uintptr_t pc) {
    std::vector<SymbolFrame> frames;
    // The call instruction that precedes the return address: the address itself may already lie
    // in the next line, or the next function after a call that never returns.
    const Dwarf_Addr addr = pc - 1;
    Dwfl_Module* mod = module_of(addr);
    if (!mod) {
      frames.push_back({"??", {}, {}, false});
      return frames;
    }
    Dwarf_Addr start = 0;
    const char* path = dwfl_module_info(mod, nullptr, &start, nullptr, nullptr, nullptr, nullptr, nullptr);
    const std::string module = file_name(path);

    GElf_Off offset = 0;
    GElf_Sym sym;
    const char* symbol = dwfl_module_addrinfo(mod, addr, &offset, &sym, nullptr, nullptr, nullptr);

    // The innermost position: the line table's entry for the address.
    std::string position;
    if (Dwfl_Line* line = dwfl_module_getsrc(mod, addr)) {
      int lineno = 0;
      const char* file = dwfl_lineinfo(line, nullptr, &lineno, nullptr, nullptr, nullptr);
      position = source(dwfl_linecu(line), file, lineno);
    }

    // The inlined calls around the address, innermost first, each giving the position of the call
    // in the function around it.
    Dwarf_Addr bias = 0;
    if (Dwarf_Die* cu = dwfl_module_addrdie(mod, addr, &bias)) {
      // The innermost scope at the address, then the chain of DIEs that contain it: the concrete
      // inlined instances, each inside the next (dwarf_getscopes alone would follow the abstract
      // definition of the innermost one instead).
      Dwarf_Die* scopes = nullptr;
      int count = dwarf_getscopes(cu, addr - bias, &scopes);
      if (count > 0) {
        Dwarf_Die innermost = scopes[0];
        std::free(scopes);
        scopes = nullptr;
        count = dwarf_getscopes_die(&innermost, &scopes);
      }
      Dwarf_Files* files = nullptr;
      std::size_t nfiles = 0;
      if (dwarf_getsrcfiles(cu, &files, &nfiles) != 0) files = nullptr;
      for (int i = 0; i < count; ++i) {
        Dwarf_Die* die = &scopes[i];
        const int tag = dwarf_tag(die);
        if (tag == DW_TAG_subprogram) {
          frames.push_back({die_function_name(die, symbol), position, {}, false});
          break;
        }
        if (tag != DW_TAG_inlined_subroutine) continue;
        frames.push_back({die_function_name(die), position, {}, true});
        Dwarf_Attribute attr;
        Dwarf_Word file = 0, line = 0;
        position.clear();
        if (files && dwarf_formudata(dwarf_attr(die, DW_AT_call_file, &attr), &file) == 0 &&
            dwarf_formudata(dwarf_attr(die, DW_AT_call_line, &attr), &line) == 0 && file < nfiles)
          position = source(cu, dwarf_filesrc(files, file, nullptr, nullptr), static_cast<int>(line));
      }
      std::free(scopes);
    }
    if (frames.empty() || frames.back().inlined) {
      // No debug information for the function (or none for its outermost scope): the ELF symbol.
      SymbolFrame f{symbol ? demangle(symbol) : std::string("??"), position, {}, false};
      if (position.empty()) {
        char off[32];
        std::snprintf(off, sizeof off, "+0x%" PRIx64, static_cast<std::uint64_t>(pc - start));
        f.module = module + off;
      }
      frames.push_back(std::move(f));
    }
    return frames;
  }
#else
  // Without libdw: the dynamic symbol table, through the dynamic loader. Functions of the
  // executable have names only when it exports them (-rdynamic); there are no source lines.
  std::vector<SymbolFrame> resolve(std::uintptr_t pc) {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(pc - 1), &info) || !info.dli_fname) return {{"??", {}, {}, false}};
    char off[32];
    std::snprintf(off, sizeof off, "+0x%" PRIxPTR, pc - reinterpret_cast<std::uintptr_t>(info.dli_fbase));
    return {{info.dli_sname ? demangle(info.dli_sname) : std::string("??"),
             {},
             file_name(info.dli_fname) + off,
             false}};
  }
#endif

  std::mutex lock_;
  const std::vector<SymbolFrame> unknown_{{"??", {}, {}, false}};
  std::unordered_map<std::uintptr_t, std::vector<SymbolFrame>> cache_;  // nodes: references stay valid
#if defined(SKEIN_HAVE_LIBDW)
  char* debuginfo_path_ = nullptr;
  Dwfl_Callbacks callbacks_{dwfl_linux_proc_find_elf, dwfl_standard_find_debuginfo, nullptr,
                            &debuginfo_path_};
  Dwfl* dwfl_ = nullptr;
  unsigned reports_left_ = 64;  // rescans of /proc/self/maps for unknown addresses
#endif
  std::string cwd_;  // source paths under it are shown relative to it
};

Symbolizer& symbolizer() {
  // Never destroyed: a dump may run while static destructors do.
  static Symbolizer* s = new Symbolizer();
  return *s;
}

}  // namespace

const std::vector<SymbolFrame>& symbolize(std::uintptr_t pc) {
  return symbolizer().lookup(pc);
}

void symbolize_all(const std::uintptr_t* pcs, std::size_t n) {
  symbolizer().prepare(pcs, n);
}

std::size_t stack_high_water(const Stack& stack, std::vector<unsigned char>& scratch) noexcept {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (!stack || stack.size % page != 0 || reinterpret_cast<std::uintptr_t>(stack.lo) % page != 0) return 0;
  const std::size_t pages = stack.size / page;
  try {
    if (scratch.size() < pages) scratch.resize(pages);
  } catch (...) {
    return 0;
  }
  if (mincore(stack.lo, stack.size, scratch.data()) != 0) return 0;
  // A stack grows down: the lowest page in core is as deep as it ever went (pages stay committed
  // until the pool trims the stack).
  for (std::size_t i = 0; i < pages; ++i)
    if (scratch[i] & 1) return (pages - i) * page;
  return 0;
}

void stack_high_waters(const std::vector<Stack>& stacks, std::size_t* used) noexcept {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  // Runs of stacks in address order, each run [lo, hi) at most one guard page between neighbours
  // and at most 64 MiB long, one mincore each; a run the kernel refuses (a gap not mapped) falls
  // back to one call per stack.
  constexpr std::size_t max_run = std::size_t{64} << 20;
  std::vector<std::size_t> order;
  std::vector<unsigned char> scratch;
  try {
    order.resize(stacks.size());
  } catch (...) {
    for (std::size_t i = 0; i < stacks.size(); ++i) used[i] = stack_high_water(stacks[i], scratch);
    return;
  }
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return stacks[a].lo < stacks[b].lo; });
  std::size_t first = 0;
  while (first < order.size()) {
    const Stack& head = stacks[order[first]];
    const auto lo = reinterpret_cast<std::uintptr_t>(head.lo);
    std::uintptr_t hi = lo + head.size;
    std::size_t end = first + 1;
    while (end < order.size()) {
      const Stack& s = stacks[order[end]];
      const auto s_lo = reinterpret_cast<std::uintptr_t>(s.lo);
      if (s_lo < hi || s_lo > hi + page || s_lo + s.size - lo > max_run) break;
      hi = s_lo + s.size;
      ++end;
    }
    bool done = false;
    if (lo % page == 0 && hi % page == 0 && lo != 0) {
      const std::size_t pages = (hi - lo) / page;
      try {
        if (scratch.size() < pages) scratch.resize(pages);
        done = mincore(reinterpret_cast<void*>(lo), hi - lo, scratch.data()) == 0;
      } catch (...) {
      }
      if (done) {
        for (std::size_t k = first; k < end; ++k) {
          const Stack& s = stacks[order[k]];
          const std::size_t from = (reinterpret_cast<std::uintptr_t>(s.lo) - lo) / page;
          const std::size_t n = s.size / page;
          std::size_t bytes = 0;
          for (std::size_t p = 0; p < n; ++p)
            if (scratch[from + p] & 1) {
              bytes = (n - p) * page;
              break;
            }
          used[order[k]] = bytes;
        }
      }
    }
    if (!done)
      for (std::size_t k = first; k < end; ++k) used[order[k]] = stack_high_water(stacks[order[k]], scratch);
    first = end;
  }
}

void format_backtrace(std::string& out, const std::uintptr_t* pcs, std::size_t n, const char* indent,
                      bool truncated) {
  symbolizer().prepare(pcs, n);
  std::size_t number = 0;
  char head[64];
  for (std::size_t i = 0; i < n; ++i) {
    for (const SymbolFrame& f : symbolize(pcs[i])) {
      std::snprintf(head, sizeof head, "#%zu 0x%016" PRIxPTR " in ", number++, pcs[i]);
      out += indent;
      out += head;
      out += f.function;
      if (!f.source.empty()) {
        out += " at ";
        out += f.source;
      } else if (!f.module.empty()) {
        out += " (";
        out += f.module;
        out += ')';
      }
      if (f.inlined) out += " (inlined)";
      out += '\n';
    }
  }
  if (truncated) {
    out += indent;
    out += "...\n";
  }
  if (n == 0) {
    out += indent;
    out += backtraces_available() ? "(no frames)\n" : "(backtraces not built in)\n";
  }
}

}  // namespace skein::detail
