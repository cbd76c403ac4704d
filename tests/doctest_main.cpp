// doctest's main, plus skips Meson understands: a run whose every test case called
// skein_test::skip() exits 77 (tests/skip.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include "skip.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdio>
#include <string_view>

namespace {

// Atomic: a case may skip from inside a fiber on another worker.
std::atomic<int> skips_in_case{0};
int cases_run = 0;
int cases_skipped = 0;

struct SkipCounter : doctest::IReporter {
  explicit SkipCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {
    ++cases_run;
    skips_in_case = 0;
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    if (skips_in_case > 0) ++cases_skipped;
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

REGISTER_LISTENER("skein_skips", 1, SkipCounter);

}  // namespace

void skein_test::skip(std::string_view why) {
  std::printf("SKIP: %.*s\n", static_cast<int>(why.size()), why.data());
  std::fflush(stdout);
  ++skips_in_case;
}

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int result = context.run();
  if (context.shouldExit() || result != 0) return result;
  if (cases_run > 0 && cases_skipped == cases_run) return 77;
  if (cases_skipped > 0)
    std::printf("%d of %d test cases skipped (run them alone to see Meson report the skip)\n", cases_skipped,
                cases_run);
  return result;
}
