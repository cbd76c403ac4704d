// Unwinding with libunwind from the registers a switch saved; symbolisation with libdw (why these
// two: docs/observability.md, "Backtraces").
#include "backtrace.hpp"

#include "switch.hpp"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>

#if defined(SKEIN_HAVE_BACKTRACE)
#define UNW_LOCAL_ONLY
#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <libunwind.h>
#include <unistd.h>

#include <cstdlib>

#if defined(SKEIN_CONTEXT_BOOST) && SKEIN_CONTEXT_BOOST
#if defined(__x86_64__)
// Boost.Context's fcontext frame (jump_x86_64_sysv_elf_gas.S, checked against the 1.74 build's
// disassembly): the same as skein's own, MXCSR/x87 CW, R12-R15, RBX, RBP, then the return address.
#define SKEIN_FRAME_R12 0x08
#define SKEIN_FRAME_R13 0x10
#define SKEIN_FRAME_R14 0x18
#define SKEIN_FRAME_R15 0x20
#define SKEIN_FRAME_RBX 0x28
#define SKEIN_FRAME_RBP 0x30
#define SKEIN_FRAME_RIP 0x38
#define SKEIN_FRAME_SIZE 0x40
#elif defined(__aarch64__)
// Boost.Context's fcontext frame (jump_arm64_aapcs_elf_gas.S): D8-D15 first, then X19-X30, then the
// resume address a second time (the one it jumps to).
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
#define SKEIN_FRAME_PC SKEIN_FRAME_X30  // resumes where its saved LR points
#endif
#endif
#endif  // SKEIN_HAVE_BACKTRACE

namespace skein::detail {

#if defined(SKEIN_HAVE_BACKTRACE)

bool backtraces_available() noexcept {
  return true;
}

namespace {

// A saved register. The frame lies on another context's stack, which ASan may hold shadow state
// for from frames that lived there before; the switch wrote it without instrumentation.
[[gnu::no_sanitize("address")]] std::uintptr_t saved(const void* frame, std::size_t offset) noexcept {
  std::uintptr_t v;
  std::memcpy(&v, static_cast<const char*>(frame) + offset, sizeof v);
  return v;
}

// Walks from an initialised cursor: every frame's IP is a return address (libunwind looks up the
// call before it), so all of them are recorded, the first `skip` left out.
std::size_t walk(unw_cursor_t& cursor, const Stack* stack, std::uintptr_t* pcs, std::size_t max,
                 std::size_t skip) noexcept {
  std::size_t n = 0;
  while (n < max) {
    unw_word_t ip = 0;
    if (unw_get_reg(&cursor, UNW_REG_IP, &ip) < 0 || ip == 0) break;
    if (stack && *stack) {
      unw_word_t sp = 0;
      if (unw_get_reg(&cursor, UNW_REG_SP, &sp) < 0) break;
      // The bottom of a stack lies at hi(); a frame outside the stack means the walk went astray.
      if (sp < reinterpret_cast<std::uintptr_t>(stack->lo) || sp > reinterpret_cast<std::uintptr_t>(stack->hi()))
        break;
    }
    if (skip)
      --skip;
    else
      pcs[n++] = ip;
    if (unw_step(&cursor) <= 0) break;
  }
  return n;
}

// libunwind's default cache is global and guarded by a lock that blocks signals around every
// access: two sigprocmask calls per frame, nine tenths of an unwind's time. A cache per thread
// needs neither (and unwinds happen on few threads). Set once, before the first unwind.
void use_thread_cache() noexcept {
  static const bool once = [] {
    unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
    return true;
  }();
  (void)once;
}

}  // namespace

std::size_t unwind_suspended(const void* ctx, const Stack& stack, std::uintptr_t* pcs,
                             std::size_t max) noexcept {
  if (!ctx || max == 0) return 0;
  // The registers as the switch leaves them just after it returns to the context: the callee-saved
  // ones from the frame, the stack pointer above the frame, the program counter at the resume
  // address. unw_init_local takes that address for a return address, as it is.
  unw_context_t uc;
  std::memset(&uc, 0, sizeof uc);
#if defined(__x86_64__)
  auto& r = uc.uc_mcontext.gregs;
  r[REG_R12] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_R12));
  r[REG_R13] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_R13));
  r[REG_R14] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_R14));
  r[REG_R15] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_R15));
  r[REG_RBX] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_RBX));
  r[REG_RBP] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_RBP));
  r[REG_RIP] = static_cast<greg_t>(saved(ctx, SKEIN_FRAME_RIP));
  r[REG_RSP] = static_cast<greg_t>(reinterpret_cast<std::uintptr_t>(ctx) + SKEIN_FRAME_SIZE);
#elif defined(__aarch64__)
  auto& m = uc.uc_mcontext;
  for (int i = 0; i < 11; ++i)  // X19-X29
    m.regs[19 + i] = saved(ctx, SKEIN_FRAME_X19 + 8 * static_cast<std::size_t>(i));
  m.regs[30] = saved(ctx, SKEIN_FRAME_PC);
  m.pc = m.regs[30];
  m.sp = reinterpret_cast<std::uintptr_t>(ctx) + SKEIN_FRAME_SIZE;
#else
#error "skein: no saved-frame layout for this architecture"
#endif
  use_thread_cache();
  unw_cursor_t cursor;
  if (unw_init_local(&cursor, &uc) < 0) return 0;
  return walk(cursor, &stack, pcs, max, 0);
}

// Not inlined: its own frame is the one left out.
[[gnu::noinline]] std::size_t unwind_here(std::uintptr_t* pcs, std::size_t max, std::size_t skip) noexcept {
  if (max == 0) return 0;
  use_thread_cache();
  unw_context_t uc;
  if (unw_getcontext(&uc) < 0) return 0;
  unw_cursor_t cursor;
  if (unw_init_local(&cursor, &uc) < 0) return 0;
  return walk(cursor, nullptr, pcs, max, skip + 1);
}

namespace {

std::string demangle(const char* name) {
  if (!name) return "??";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

const char* string_attr(Dwarf_Die* die, unsigned name) {
  Dwarf_Attribute attr;
  return dwarf_formstring(dwarf_attr_integrate(die, name, &attr));
}

// A function's name from its DIE: the linkage name demangled (it has the parameters), else the
// plain name. Both are looked up through abstract origins, as an inlined instance has neither.
std::string die_function_name(Dwarf_Die* die) {
  const char* linkage = string_attr(die, DW_AT_linkage_name);
  if (!linkage) linkage = string_attr(die, DW_AT_MIPS_linkage_name);
  if (linkage) return demangle(linkage);
  const char* plain = string_attr(die, DW_AT_name);
  return plain ? std::string(plain) : std::string("??");
}

// libdw is not thread-safe, and one Dwfl per process is enough: every access holds the lock.
class Symbolizer {
 public:
  Symbolizer() {
    std::error_code ec;
    cwd_ = std::filesystem::current_path(ec).string();
    if (!cwd_.empty() && cwd_.back() != '/') cwd_ += '/';
  }
  ~Symbolizer() {
    if (dwfl_) dwfl_end(dwfl_);
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
    if (running_context().kind == ContextKind::thread) {
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
    std::string module = path ? std::filesystem::path(path).filename().string() : std::string("??");

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
      Dwarf_Die* scopes = nullptr;
      const int count = dwarf_getscopes(cu, addr - bias, &scopes);
      Dwarf_Files* files = nullptr;
      std::size_t nfiles = 0;
      if (dwarf_getsrcfiles(cu, &files, &nfiles) != 0) files = nullptr;
      for (int i = 0; i < count; ++i) {
        Dwarf_Die* die = &scopes[i];
        const int tag = dwarf_tag(die);
        if (tag == DW_TAG_subprogram) {
          // The outermost: the ELF symbol, when there is one, has the full mangled name.
          frames.push_back({symbol ? demangle(symbol) : die_function_name(die), position, {}, false});
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

  std::mutex lock_;
  const std::vector<SymbolFrame> unknown_{{"??", {}, {}, false}};
  std::unordered_map<std::uintptr_t, std::vector<SymbolFrame>> cache_;  // nodes: references stay valid
  char* debuginfo_path_ = nullptr;
  Dwfl_Callbacks callbacks_{dwfl_linux_proc_find_elf, dwfl_standard_find_debuginfo, nullptr, &debuginfo_path_};
  Dwfl* dwfl_ = nullptr;
  unsigned reports_left_ = 64;  // rescans of /proc/self/maps for unknown addresses
  std::string cwd_;             // source paths under it are shown relative to it
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

namespace {
void prepare_symbols(const std::uintptr_t* pcs, std::size_t n) {
  symbolizer().prepare(pcs, n);
}
}  // namespace

#else  // !SKEIN_HAVE_BACKTRACE

bool backtraces_available() noexcept {
  return false;
}

std::size_t unwind_suspended(const void*, const Stack&, std::uintptr_t*, std::size_t) noexcept {
  return 0;
}

std::size_t unwind_here(std::uintptr_t*, std::size_t, std::size_t) noexcept {
  return 0;
}

namespace {
void prepare_symbols(const std::uintptr_t*, std::size_t) {}
}  // namespace

const std::vector<SymbolFrame>& symbolize(std::uintptr_t) {
  static const std::vector<SymbolFrame> unknown{{"??", {}, {}, false}};
  return unknown;
}

#endif  // SKEIN_HAVE_BACKTRACE

void format_backtrace(std::string& out, const std::uintptr_t* pcs, std::size_t n, const char* indent,
                      bool truncated) {
  prepare_symbols(pcs, n);
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
