// Thread-per-core: a runtime of N worker threads, each with its own scheduler, timers and I/O
// driver. A fiber stays on the worker it started on; spawn_on starts one on another worker, and
// every wait (join, cancel, the sync primitives) works between fibers on different workers.
// See docs/threading.md.
//
// Errors: std::system_error — operation_not_permitted for a spawn outside any runtime or into a
// runtime that has ended, invalid_argument for a worker index out of range, too_many_files_open
// (or what the kernel said) when a worker cannot start.
#pragma once

#include <skein/debug.hpp>
#include <skein/source_location.hpp>
#include <skein/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace skein {

// The kernel interface a worker sleeps in and learns I/O readiness from (docs/io_uring.md).
enum class IoBackendKind : std::uint8_t {
  automatic,  // io_uring (completion mode) where the kernel allows it, else epoll
  epoll,
  io_uring,
};

struct RuntimeOptions {
  std::size_t workers = 0;  // worker threads; 0 means one per core (std::thread::hardware_concurrency)
  // How long a worker that runs out of work keeps polling for I/O and messages (epoll_wait with a
  // zero timeout) before it sleeps in the kernel. A request arriving meanwhile is served without
  // anybody being woken: the sender saves a cross-CPU wake-up, the worker spends CPU while idle.
  // 0 (the default): no such window; only the idle_spin below. See docs/threading.md.
  std::chrono::microseconds spin_before_sleep{0};
  // The longest a worker that runs out of work spins (no system call, I/O unwatched) waiting for a
  // message from another thread before it sleeps. Adaptive: it spins only after a message came
  // soon after one of its sleeps, keeps spinning while spins catch messages, and stops (backing
  // off) when one finds nothing or loses its CPU, so an idle process uses no CPU. 0 never spins;
  // neither does a process confined to one CPU. See docs/threading.md.
  std::chrono::microseconds idle_spin{20};
  // The stack of the fiber skein::run starts for its function ("main"), like FiberOptions's
  // (reserved bytes, committed as touched). Runtime, which has no main fiber, ignores it.
  std::size_t main_stack_size = default_stack_size;
  // Every worker's I/O backend; SKEIN_IO=auto|epoll|io_uring overrides it (docs/io_uring.md).
  IoBackendKind io_backend = IoBackendKind::automatic;
  // A signal (e.g. SIGQUIT or SIGUSR1) on which skein::debug::dump(std::cerr) prints every fiber of
  // every runtime, after which everything goes on; 0 (the default) leaves signals alone. While a
  // runtime asking for it lives, skein owns the signal's disposition (the handler only wakes a
  // thread, which dumps); the last such runtime to end restores the one it found. Runtimes may ask
  // for different signals. Throws invalid_argument for SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE,
  // SIGILL, SIGRTMAX - 2 (skein's own, docs/observability.md) or a number out of range. SIGINT and
  // SIGTERM are accepted, but a Server's serve() takes those through a signalfd, so they stop it.
  int dump_signal = 0;
  // The loop-hog watchdog (docs/observability.md): a monitor thread reports a fiber that keeps its
  // worker from the scheduler for longer than this, with its current backtrace, once per episode,
  // through on_hog (default: skein::debug::print_hog_report, to stderr). 0 (the default): off.
  std::chrono::milliseconds hog_threshold{0};
  std::function<void(const debug::HogReport&)> on_hog = {};
};

namespace detail {
class RuntimeCore;

// The runtime of the calling fiber; throws operation_not_permitted naming `what` outside one.
RuntimeCore& runtime_for(const char* what);
// Starts a constructed fiber on worker `worker` of `core`, from any thread. Throws (and frees the
// fiber) if the runtime has ended or the index is out of range. `where` is the spawn call.
void start_fiber_on(RuntimeCore& core, std::size_t worker, Fiber* fiber, Stack stack, std::string name,
                    skein::SourceLocation where = {});
std::size_t worker_count(const RuntimeCore& core) noexcept;

// Creates a runtime whose worker 0 is the calling thread (the other workers get threads of their
// own) and which ends when its last fiber has finished. ~RunScope joins the worker threads.
class RunScope {
 public:
  explicit RunScope(const RuntimeOptions& options);
  ~RunScope();
  RunScope(const RunScope&) = delete;
  RunScope& operator=(const RunScope&) = delete;
  // Runs worker 0's loop until the runtime ends (see skein::run).
  void loop();

 private:
  std::unique_ptr<RuntimeCore> core_;
};

template <class F>
auto spawn_into(RuntimeCore& core, std::size_t worker, FiberOptions options, F&& f,
                skein::SourceLocation where) {
  auto [fiber, stack] = make_fiber(options.stack_size, std::forward<F>(f));
  start_fiber_on(core, worker, fiber, stack, std::move(options.name), where);
  return TaskAccess::adopt<fiber_result_t<F>>(fiber);
}
}  // namespace detail

// Runs `f` as the first fiber of a new runtime with options.workers workers, on worker 0, which is
// the calling thread. Returns `f`'s value (or rethrows its exception) once every fiber on every
// worker has finished, and the worker threads have been joined.
template <class F>
auto run(RuntimeOptions options, F&& f, skein::SourceLocation where = skein::SourceLocation::current())
    -> std::invoke_result_t<std::decay_t<F>&> {
  detail::RunScope scope(options);
  auto main = spawn(FiberOptions{"main", options.main_stack_size}, std::forward<F>(f), where);
  scope.loop();
  return main.join();
}

// this_worker()'s answer on a thread that is no runtime's worker: no worker has this index.
inline constexpr std::size_t no_worker = static_cast<std::size_t>(-1);

// The calling fiber's worker index, 0 .. worker_count() - 1; no_worker outside a runtime.
std::size_t this_worker() noexcept;

// How many workers the calling fiber's runtime has; 1 outside a runtime.
std::size_t worker_count() noexcept;

// Starts `f` on worker `worker` of the calling fiber's runtime; it runs there for its whole life.
// The handle can be joined or cancelled from any worker.
// `where` (defaulted) is the spawn call, which skein::debug reports.
template <class F>
auto spawn_on(std::size_t worker, FiberOptions options, F&& f,
              skein::SourceLocation where = skein::SourceLocation::current()) {
  return detail::spawn_into(detail::runtime_for("skein::spawn_on"), worker, std::move(options),
                            std::forward<F>(f), where);
}

template <class F>
auto spawn_on(std::size_t worker, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
  return spawn_on(worker, FiberOptions{}, std::forward<F>(f), where);
}

// A runtime whose workers are all threads of their own, for programs whose main thread does
// something else: any thread may spawn fibers into it and join or cancel them (a thread that
// joins blocks until the fiber is done). It lives until destroyed: ~Runtime waits for every fiber
// to finish, then stops and joins the worker threads.
class Runtime {
 public:
  explicit Runtime(RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // How many workers it has (RuntimeOptions::workers, 0 resolved to the number of cores).
  std::size_t worker_count() const noexcept;

  // Starts `f` on worker `worker`. Any thread, fiber or not.
  template <class F>
  auto spawn_on(std::size_t worker, FiberOptions options, F&& f,
                skein::SourceLocation where = skein::SourceLocation::current()) {
    return detail::spawn_into(*core_, worker, std::move(options), std::forward<F>(f), where);
  }
  template <class F>
  auto spawn_on(std::size_t worker, F&& f, skein::SourceLocation where = skein::SourceLocation::current()) {
    return spawn_on(worker, FiberOptions{}, std::forward<F>(f), where);
  }

  // Waits until every fiber has finished, then stops and joins the workers; later spawns throw
  // operation_not_permitted. Idempotent; called by the destructor. From one of its own fibers it
  // throws resource_deadlock_would_occur (the destructor then aborts).
  void shutdown();

 private:
  std::unique_ptr<detail::RuntimeCore> core_;
};

}  // namespace skein
