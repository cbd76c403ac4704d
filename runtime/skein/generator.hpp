// Generator<T>: a lazy sequence produced by a stackful body (Python's generator, `yield from`
// included: the body may call ordinary functions that yield).
//
//   skein::Generator<int> fib([](skein::Yield<int>& yield) {
//     for (int a = 0, b = 1;; std::tie(a, b) = std::pair(b, a + b)) yield(a);
//   });
//   for (int x : fib) { if (x > 100) break; print(x); }
//
// Errors: the body's exception is rethrown by the next()/operator++ that resumed it. Destroying an
// unfinished generator unwinds its body (destructors run). The body may sleep or wait inside a
// fiber: the fiber that resumed it waits with it.
#pragma once

#include <skein/detail/coroutine.hpp>
#include <skein/stack.hpp>

#include <cstddef>
#include <exception>
#include <functional>
#include <iterator>
#include <optional>
#include <type_traits>
#include <utility>

namespace skein {

template <class T>
class Generator;

namespace detail {
template <class T>
struct GeneratorCore : CoroutineCore {
  T* current = nullptr;  // the value of the pending yield, in the body's frame
};
}  // namespace detail

// The body's way to produce a value: yield(v) hands v to the consumer and suspends until the
// next value is asked for.
template <class T>
class Yield {
 public:
  void operator()(T value) {
    core_.current = std::addressof(value);
    detail::coroutine_suspend(core_);
  }

 private:
  friend class Generator<T>;
  explicit Yield(detail::GeneratorCore<T>& core) noexcept : core_(core) {}
  detail::GeneratorCore<T>& core_;
};

template <class T>
class Generator {
  static_assert(!std::is_reference_v<T>,
                "skein::Generator<T&>: a generator yields values; for references yield pointers or "
                "std::reference_wrapper<T>");
  static_assert(!std::is_void_v<T>, "skein::Generator<void>: a generator must yield values");
  static_assert(std::is_move_constructible_v<T>, "skein::Generator<T>: T must be move-constructible");

  template <class F>
  struct Impl final : detail::GeneratorCore<T> {
    explicit Impl(F&& f) : fn(std::move(f)) {}
    explicit Impl(const F& f) : fn(f) {}
    void run_body() noexcept override {
      try {
        Yield<T> yield(*this);
        std::invoke(*fn, yield);
      } catch (const detail::ForcedUnwind&) {
      } catch (...) {
        this->error = std::current_exception();
      }
      this->current = nullptr;
      fn.reset();
    }
    std::optional<F> fn;
  };

 public:
  using value_type = T;

  // A generator whose body is `f(Yield<T>&)`, run lazily on its own stack of `stack_size` bytes.
  template <class F>
  requires(std::is_invocable_v<std::decay_t<F>&, Yield<T>&>) explicit Generator(
      F&& f, std::size_t stack_size = default_stack_size)
      : core_(detail::make_coroutine<Impl<std::decay_t<F>>>(stack_size, std::forward<F>(f))) {}

  Generator(Generator&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
  Generator& operator=(Generator&& other) noexcept {
    if (this != &other) {
      reset();
      core_ = std::exchange(other.core_, nullptr);
    }
    return *this;
  }
  ~Generator() { reset(); }

  // True once the body has finished (or the generator was moved from).
  bool done() const noexcept { return !core_ || core_->state == detail::CoState::done; }

  // Runs the body to its next yield and returns that value, or nullopt when the body returns.
  // Rethrows the body's exception.
  std::optional<T> next() {
    if (!advance()) return std::nullopt;
    return std::optional<T>(std::move(*core_->current));
  }

  // Ends the body now, unwinding its stack. No effect if it has finished.
  void close() noexcept { reset(); }

  class iterator {
   public:
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    T& operator*() const noexcept { return *gen_->core_->current; }
    T* operator->() const noexcept { return gen_->core_->current; }
    iterator& operator++() {
      gen_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const noexcept { return gen_->done(); }

   private:
    friend class Generator;
    explicit iterator(Generator* g) noexcept : gen_(g) {}
    Generator* gen_;
  };

  // Starts (or continues) the body; iteration yields each value once.
  iterator begin() {
    advance();
    return iterator(this);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  // Resumes the body; true if it yielded a value, false if it finished.
  bool advance() {
    if (done()) return false;
    detail::coroutine_resume(*core_);
    if (core_->error) std::rethrow_exception(std::exchange(core_->error, nullptr));
    return core_->state != detail::CoState::done;
  }

  void reset() noexcept {
    if (core_) detail::coroutine_destroy(std::exchange(core_, nullptr));
  }

  detail::GeneratorCore<T>* core_;
};

}  // namespace skein
