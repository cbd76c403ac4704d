// Coroutine<In, Out, R>: a two-way coroutine. resume(x) sends x in and returns the next value the
// body yields out; the body may finish with a value of type R (Python's generator with send(),
// Lua's coroutines).
//
//   skein::Coroutine<int, std::string> consumer([](skein::CoYield<int, std::string>& yield, int n) {
//     for (;;) n = yield("200 OK " + std::to_string(n));   // receives the next resume's value
//   });
//   consumer.resume(1);  // starts the body with n = 1; returns "200 OK 1"
//   consumer.resume(2);  // yield returns 2;              returns "200 OK 2"
//
// The first resume's value is the body's second argument; each later one is what the pending
// yield returns. Errors: the body's exception is rethrown by the resume that ran it; destroying or
// close()-ing an unfinished coroutine unwinds its body (destructors run).
#pragma once

#include <skein/detail/coroutine.hpp>
#include <skein/stack.hpp>

#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

namespace skein {

template <class In, class Out, class R>
class Coroutine;

namespace detail {
template <class In, class Out>
struct CoroutineChannel : CoroutineCore {
  In* in = nullptr;    // the value the last resume sent
  Out* out = nullptr;  // the value of the pending yield
};
}  // namespace detail

// The body's side of a Coroutine: `In x = yield(v)` hands v out and suspends until the next
// resume, whose value it returns.
template <class In, class Out>
class CoYield {
 public:
  In operator()(Out value) {
    ch_.out = std::addressof(value);
    detail::coroutine_suspend(ch_);
    return std::move(*ch_.in);
  }

 private:
  template <class, class, class>
  friend class Coroutine;
  explicit CoYield(detail::CoroutineChannel<In, Out>& ch) noexcept : ch_(ch) {}
  detail::CoroutineChannel<In, Out>& ch_;
};

template <class In, class Out, class R = void>
class Coroutine {
  static_assert(!std::is_void_v<In>,
                "skein::Coroutine<void, Out>: with nothing to send in, use skein::Generator<Out>, or "
                "send a placeholder such as std::monostate");
  static_assert(!std::is_void_v<Out>,
                "skein::Coroutine<In, void>: the body must yield values; send a placeholder such as "
                "std::monostate");
  static_assert(!std::is_reference_v<In> && !std::is_reference_v<Out> && !std::is_reference_v<R>,
                "skein::Coroutine: In, Out and R are values; for references use pointers or "
                "std::reference_wrapper");

  using Channel = detail::CoroutineChannel<In, Out>;

  struct Result : Channel {
    std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> result;
  };

  template <class F>
  struct Impl final : Result {
    explicit Impl(F&& f) : fn(std::move(f)) {}
    explicit Impl(const F& f) : fn(f) {}
    void run_body() noexcept override {
      try {
        CoYield<In, Out> yield(*this);
        if constexpr (std::is_void_v<R>) {
          std::invoke(*fn, yield, std::move(*this->in));
          this->result.emplace(true);
        } else {
          this->result.emplace(std::invoke(*fn, yield, std::move(*this->in)));
        }
      } catch (const detail::ForcedUnwind&) {
      } catch (...) {
        this->error = std::current_exception();
      }
      this->out = nullptr;
      fn.reset();
    }
    std::optional<F> fn;
  };

 public:
  // A coroutine whose body is `R f(CoYield<In, Out>&, In first)`, started by the first resume.
  template <class F>
  requires(std::is_invocable_r_v<R, std::decay_t<F>&, CoYield<In, Out>&, In>) explicit Coroutine(
      F&& f, std::size_t stack_size = default_stack_size)
      : core_(detail::make_coroutine<Impl<std::decay_t<F>>>(stack_size, std::forward<F>(f))) {}

  Coroutine(Coroutine&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
  Coroutine& operator=(Coroutine&& other) noexcept {
    if (this != &other) {
      reset();
      core_ = std::exchange(other.core_, nullptr);
    }
    return *this;
  }
  ~Coroutine() { reset(); }

  // True once the body has finished (or the coroutine was moved from or closed).
  bool done() const noexcept { return !core_ || core_->state == detail::CoState::done; }

  // Sends `x` in and runs the body to its next yield: returns the yielded value, or nullopt if the
  // body returned. Rethrows the body's exception; throws invalid_argument once done.
  std::optional<Out> resume(In x) {
    if (done())
      throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                              "skein::Coroutine: resumed after it finished");
    core_->in = std::addressof(x);
    detail::coroutine_resume(*core_);
    if (core_->error) std::rethrow_exception(std::exchange(core_->error, nullptr));
    if (core_->state == detail::CoState::done) return std::nullopt;
    return std::optional<Out>(std::move(*core_->out));
  }

  // The body's return value, once it has returned. Throws invalid_argument before that.
  R result() {
    if (!core_ || core_->state != detail::CoState::done || !core_->result)
      throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                              "skein::Coroutine: no result (the body has not returned)");
    if constexpr (!std::is_void_v<R>) return std::move(*core_->result);
  }

  // Ends the body now: unwinds a suspended body, discards one that never started (Python's
  // close()). No effect once done: the result stays available.
  void close() noexcept {
    if (core_ && core_->state != detail::CoState::done) reset();
  }

 private:
  void reset() noexcept {
    if (core_) detail::coroutine_destroy(std::exchange(core_, nullptr));
  }

  Result* core_;
};

}  // namespace skein
