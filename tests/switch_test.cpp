// The context switch itself, for every backend compiled into this binary: callee-saved state and FP
// control survive, fresh stacks are aligned, data crosses both ways, and the exception state
// travels with each fiber.
#include "switch_probe.hpp"

#include <skein/detail/exec_context.hpp>
#include <skein/skein.hpp>

#include <doctest/doctest.h>

#include <cfenv>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(SKEIN_TEST_BOOST)
#include <boost/context/detail/fcontext.hpp>
#endif
#if defined(__x86_64__)
#include <cpuid.h>
#include <xmmintrin.h>
#endif

namespace {

using skein::detail::ContextEntry;
using skein::detail::Transfer;

struct Backend {
  const char* name;
  JumpFn jump;
  void* (*make)(void*, std::size_t, ContextEntry);
};

std::vector<Backend> backends() {
  std::vector<Backend> all{{"asm", &skein_jump_fcontext, &skein_make_fcontext}};
#if defined(SKEIN_TEST_BOOST)
  // Boost's functions have the fcontext ABI; its transfer_t has Transfer's layout.
  // (Cast through void(*)(): an ABI identity, not a C++ call through the wrong type.)
  using Generic = void (*)();
  all.push_back({"boost",
                 reinterpret_cast<JumpFn>(reinterpret_cast<Generic>(&boost::context::detail::jump_fcontext)),
                 reinterpret_cast<void* (*)(void*, std::size_t, ContextEntry)>(
                     reinterpret_cast<Generic>(&boost::context::detail::make_fcontext))});
#endif
  return all;
}

struct ScopedStack {
  skein::detail::Stack s = skein::detail::acquire_stack(64 * 1024);
  ~ScopedStack() { skein::detail::release_stack(s); }
};

// A C++ entry for the data test: adds one to every value it is sent, forever.
struct Counter {
  JumpFn jump;
};
Counter* g_counter = nullptr;

[[noreturn]] void counter_entry(Transfer t) {
  for (;;) {
    auto v = reinterpret_cast<std::uintptr_t>(t.data);
    t = g_counter->jump(t.ctx, reinterpret_cast<void*>(v + 1));
  }
}

}  // namespace

TEST_SUITE("switch") {
  TEST_CASE("callee-saved registers and FP control state survive a round trip") {
    for (const Backend& b : backends()) {
      CAPTURE(b.name);
      ScopedStack stack;
      void* ctx = b.make(stack.s.hi(), stack.s.size, &skein_probe_clobber_entry);
      for (int round = 0; round < 3; ++round) {  // the first round enters a fresh context
        CAPTURE(round);
        CHECK(skein_probe_callee_saved(&ctx, b.jump) == 0u);
      }
    }
  }

#if defined(__x86_64__)
  TEST_CASE("both ways the x86-64 switch restores FP control state preserve it, and the vendor picks one") {
    // The one the CPU vendor picked at start-up: AMD and Hygon load MXCSR, others compare.
    unsigned max_leaf = 0, ebx = 0, ecx = 0, edx = 0;
    REQUIRE(__get_cpuid(0, &max_leaf, &ebx, &ecx, &edx) != 0);
    const bool amd = ebx == 0x68747541u /* "Auth" */ || ebx == 0x6f677948u /* "Hygo" */;
    const unsigned char picked = skein_switch_fp_mode.mode;
    CHECK(picked == (amd ? skein::detail::switch_fp_load : skein::detail::switch_fp_compare));
    for (unsigned char mode : {skein::detail::switch_fp_compare, skein::detail::switch_fp_load}) {
      CAPTURE(static_cast<int>(mode));
      skein_switch_fp_mode.mode = mode;
      ScopedStack stack;
      void* ctx = skein_make_fcontext(stack.s.hi(), stack.s.size, &skein_probe_clobber_entry);
      for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        CHECK(skein_probe_callee_saved(&ctx, &skein_jump_fcontext) == 0u);
      }
    }
    skein_switch_fp_mode.mode = picked;
  }
#endif

  TEST_CASE("a fresh context starts with a 16-byte aligned stack") {
    for (const Backend& b : backends()) {
      CAPTURE(b.name);
      for (std::size_t offset : {0, 8, 4, 1}) {  // the top is aligned down whatever it was
        CAPTURE(offset);
        ScopedStack stack;
        void* ctx = b.make(stack.s.hi() - offset, stack.s.size - offset, &skein_probe_alignment_entry);
        const Transfer t = b.jump(ctx, reinterpret_cast<void*>(b.jump));
        CHECK(reinterpret_cast<std::uintptr_t>(t.data) == 0u);
      }
    }
  }

  TEST_CASE("one pointer crosses each switch, both ways") {
    for (const Backend& b : backends()) {
      CAPTURE(b.name);
      ScopedStack stack;
      Counter counter{b.jump};
      g_counter = &counter;
      void* ctx = b.make(stack.s.hi(), stack.s.size, &counter_entry);
      std::uintptr_t v = 0;
      for (int i = 0; i < 1000; ++i) {
        const Transfer t = b.jump(ctx, reinterpret_cast<void*>(v));
        ctx = t.ctx;
        v = reinterpret_cast<std::uintptr_t>(t.data);
      }
      CHECK(v == 1000u);
    }
  }
}

TEST_SUITE("switch") {
  TEST_CASE("each fiber keeps its own FP rounding mode across switches") {
    const int saved = std::fegetround();
    skein::run([] {
      auto up = skein::spawn([] {
        std::fesetround(FE_UPWARD);
        for (int i = 0; i < 3; ++i) {
          skein::yield();
          CHECK(std::fegetround() == FE_UPWARD);
#if defined(__x86_64__)
          CHECK((_mm_getcsr() & 0x6000u) == 0x4000u);  // SSE rounds up too
#endif
        }
        std::fesetround(FE_TONEAREST);
      });
      auto nearest = skein::spawn([] {
        for (int i = 0; i < 3; ++i) {
          CHECK(std::fegetround() == FE_TONEAREST);
#if defined(__x86_64__)
          CHECK((_mm_getcsr() & 0x6000u) == 0u);
#endif
          skein::yield();
        }
      });
      up.join();
      nearest.join();
    });
    CHECK(std::fegetround() == saved);
  }

  TEST_CASE("exceptions thrown and caught inside a fiber stay inside it") {
    int caught = skein::run([] {
      auto t = skein::spawn([] {
        int n = 0;
        for (int i = 0; i < 10; ++i) {
          try {
            skein::yield();
            throw std::runtime_error("inside");
          } catch (const std::runtime_error&) {
            ++n;
          }
        }
        return n;
      });
      auto other = skein::spawn([] {
        for (int i = 0; i < 10; ++i) skein::yield();
      });
      other.join();
      return t.join();
    });
    CHECK(caught == 10);
  }

  TEST_CASE("a fiber parked inside a catch block finds its own exception when it resumes") {
    // libstdc++ keeps caught exceptions per thread; without saving them per fiber, interleaved
    // catch blocks see each other's exceptions and the ends of the catches corrupt the list.
    constexpr int kFibers = 8;
    int ok = skein::run([] {
      std::vector<skein::Task<bool>> tasks;
      for (int i = 0; i < kFibers; ++i) {
        tasks.push_back(skein::spawn([i] {
          bool good = true;
          for (int round = 0; round < 5; ++round) {
            try {
              throw std::runtime_error("fiber " + std::to_string(i));
            } catch (const std::runtime_error& outer) {
              skein::yield();  // others throw and catch meanwhile
              try {
                throw std::logic_error("nested " + std::to_string(i));
              } catch (const std::logic_error&) {
                skein::yield();
                try {
                  std::rethrow_exception(std::current_exception());
                } catch (const std::logic_error& again) {
                  good = good && std::string(again.what()) == "nested " + std::to_string(i);
                }
              }
              skein::yield();
              try {
                std::rethrow_exception(std::current_exception());
              } catch (const std::runtime_error& again) {
                good = good && std::string(again.what()) == "fiber " + std::to_string(i);
              }
              good = good && std::string(outer.what()) == "fiber " + std::to_string(i);
              good = good && std::uncaught_exceptions() == 0;
            }
          }
          good = good && !std::current_exception();
          return good;
        }));
      }
      int n = 0;
      for (auto& t : tasks) n += t.join() ? 1 : 0;
      return n;
    });
    CHECK(ok == kFibers);
    CHECK(!std::current_exception());
  }

  TEST_CASE("uncaught_exceptions is per fiber while destructors park during unwinding") {
    struct ParksWhileUnwinding {
      int* seen;
      ~ParksWhileUnwinding() {
        int before = std::uncaught_exceptions();
        skein::yield();  // another fiber unwinds meanwhile
        if (before == 1 && std::uncaught_exceptions() == 1) ++*seen;
      }
    };
    int seen = 0;
    skein::run([&seen] {
      std::vector<skein::Task<void>> tasks;
      for (int i = 0; i < 4; ++i) {
        tasks.push_back(skein::spawn([&seen] {
          try {
            ParksWhileUnwinding p{&seen};
            throw std::runtime_error("unwind");
          } catch (const std::runtime_error&) {
          }
        }));
      }
      for (auto& t : tasks) t.join();
    });
    CHECK(seen == 4);
    CHECK(std::uncaught_exceptions() == 0);
  }
}
