// A minimal C++20 stackless generator (std::coroutine_handle), the baseline switch_bench measures
// skein::Generator against: the same interface as skein::Generator<T>::next() (the next value, or
// nullopt at the end; the body's exception rethrown), the frame allocated by the compiler's
// coroutine machinery instead of a stack. It cannot yield from nested calls: that is what a
// stackful generator buys.
#pragma once

#include <coroutine>
#include <exception>
#include <optional>
#include <utility>

namespace skein_bench {

template <class T>
class StacklessGenerator {
 public:
  struct promise_type {
    const T* current = nullptr;  // the value of the pending co_yield, in the coroutine frame
    std::exception_ptr error;

    StacklessGenerator get_return_object() noexcept {
      return StacklessGenerator(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    std::suspend_always yield_value(const T& value) noexcept {
      current = &value;
      return {};
    }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
  };

  StacklessGenerator(StacklessGenerator&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
  StacklessGenerator& operator=(StacklessGenerator&&) = delete;
  ~StacklessGenerator() {
    if (h_) h_.destroy();
  }

  // Runs the body to its next co_yield and returns that value, or nullopt once it has returned.
  std::optional<T> next() {
    if (h_.done()) return std::nullopt;
    h_.resume();
    if (h_.promise().error) std::rethrow_exception(std::exchange(h_.promise().error, nullptr));
    if (h_.done()) return std::nullopt;
    return *h_.promise().current;
  }

 private:
  explicit StacklessGenerator(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

}  // namespace skein_bench
