// run_blocking: runs a call that would block the thread (a library call, a file read, CPU-heavy
// work) on a small shared thread pool, and parks only the calling fiber until it returns.
//
// Errors: rethrows whatever `f` threw. In an already-cancelled fiber it throws
// errc::operation_canceled without running `f`. A cancel that arrives while `f` runs cannot stop
// it (f may use the caller's stack); it takes effect once `f` returns, as operation_canceled.
//
// fork(): a child forked while skein runs should exec; it gets a fresh pool, but shares the
// parent's epoll set, and calls in flight in the parent never complete in the child.
#pragma once

#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

namespace skein {

namespace detail {
// A unit of work for the pool. run() is called once, on a pool thread.
struct BlockingJob {
  virtual void run() noexcept = 0;

 protected:
  ~BlockingJob() = default;
};

// Runs `job` on the pool and parks the calling fiber until it is done (shielded from cancels,
// which are rethrown after). Outside a fiber it runs `job` on the calling thread.
void run_blocking_job(BlockingJob& job);
}  // namespace detail

// Calls `f()` on a pool thread and returns its value (or rethrows its exception) to the fiber.
// The pool starts threads on demand, up to max(4, 2 x cores), and blocks every signal in them.
template <class F>
auto run_blocking(F&& f) -> std::invoke_result_t<F&> {
  using R = std::invoke_result_t<F&>;
  struct Job final : detail::BlockingJob {
    explicit Job(F& fn) : f(fn) {}
    void run() noexcept override {
      try {
        if constexpr (std::is_void_v<R>)
          std::invoke(f);
        else
          value.emplace(std::invoke(f));
      } catch (...) {
        error = std::current_exception();
      }
    }
    F& f;
    std::optional<std::conditional_t<std::is_void_v<R>, char, R>> value;
    std::exception_ptr error;
  };
  Job job(f);
  detail::run_blocking_job(job);
  if (job.error) std::rethrow_exception(job.error);
  if constexpr (!std::is_void_v<R>) return std::move(*job.value);
}

}  // namespace skein
