// A runtime: N workers, each a thread with its own scheduler, and the count that decides when the
// runtime ends. See docs/threading.md.
#pragma once

#include "scheduler.hpp"

#include <skein/runtime.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace skein::detail {

// The loop-hog watchdog's monitor thread (runtime/src/debug.cpp).
class HogMonitor;
HogMonitor* start_hog_monitor(RuntimeCore& core, std::chrono::milliseconds threshold,
                              std::function<void(const debug::HogReport&)> on_hog);
void stop_hog_monitor(HogMonitor* monitor) noexcept;

class RuntimeCore {
 public:
  // Starts `workers` workers. With `caller_is_worker` the calling thread is worker 0 (its
  // scheduler is bound here, its loop runs in run_worker0()); otherwise every worker gets a thread
  // and the runtime can be reached from threads outside it. Returns once every worker's scheduler
  // exists. The runtime holds one token until release_token(): it cannot end before that.
  // The two durations are RuntimeOptions::spin_before_sleep and idle_spin, `io_backend` its
  // io_backend.
  RuntimeCore(std::size_t workers, bool caller_is_worker, std::chrono::nanoseconds spin_before_sleep,
              std::chrono::nanoseconds idle_spin, IoBackendKind io_backend);
  // Releases the token if still held, waits for the runtime to end and joins the threads.
  ~RuntimeCore();
  RuntimeCore(const RuntimeCore&) = delete;
  RuntimeCore& operator=(const RuntimeCore&) = delete;

  std::size_t size() const noexcept { return workers_.size(); }
  Scheduler& worker(std::size_t i) const noexcept { return *workers_[i]; }

  // Runs worker 0's loop on the calling thread (caller_is_worker only) until the runtime ends.
  void run_worker0();

  // The runtime ends when this count reaches zero: one per worker with live fibers, one per start
  // or cancel message in flight, and the token.
  void retain() noexcept { pending_.fetch_add(1, std::memory_order_relaxed); }
  // From outside a fiber of this runtime: retains unless the runtime has ended (returns false).
  bool try_retain() noexcept;
  // The last release ends the runtime: every worker leaves its loop.
  void release() noexcept {
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) stop_all();
  }
  void release_token() noexcept;

  // Posts `n` to worker `s` from a thread that is not one of this runtime's workers, which the
  // destructor does not join: it holds a count while inside post() (the message may be handled
  // and the runtime end the moment it is pushed) and is waited for by ~RuntimeCore, since its own
  // release may be the last one, whose stop messages it then sends. The caller knows the runtime
  // has not ended (it holds a count, or wakes a fiber parked in it).
  void post_from_outside(Scheduler& s, RemoteNode* n) noexcept;

  // Fiber ids stay small and unique without a shared counter on the spawn path: the sources of
  // spawns (each worker, and for a Runtime the threads outside it, together) take turns through
  // the numbers, source k of id_stride() handing out k + 1, k + 1 + id_stride(), ...
  std::uint64_t id_stride() const noexcept { return workers_.size() + (caller_is_worker_ ? 0 : 1); }
  // An id for a spawn from a thread outside the runtime: the last source's turn.
  std::uint64_t next_outside_id() noexcept {
    return next_outside_id_.fetch_add(1, std::memory_order_relaxed) * id_stride() + workers_.size() + 1;
  }

  // RuntimeOptions::spin_before_sleep.
  std::chrono::nanoseconds spin_before_sleep() const noexcept { return spin_; }
  // RuntimeOptions::idle_spin, or zero if this process may use only one CPU.
  std::chrono::nanoseconds idle_spin() const noexcept { return idle_spin_; }

  // RuntimeOptions::io_backend: what each worker's I/O core asks make_backend for.
  IoBackendKind io_backend() const noexcept { return io_backend_; }

  // A single-worker runtime that only its own fibers can reach can tell a deadlock from a wait.
  bool detects_deadlock() const noexcept { return workers_.size() == 1 && caller_is_worker_; }

  // Blocks until the runtime has ended and joins the worker threads. Idempotent.
  void join();

  // 1, 2, ... in order of creation in the process (skein::debug::FiberInfo::runtime).
  std::uint64_t serial() const noexcept { return serial_; }

  // RuntimeOptions::dump_signal: holds `sig` (see debug_signal.hpp) until the destructor. Once.
  void hold_dump_signal(int sig);
  // Starts the hog watchdog if options.hog_threshold asks for it; it stops with the runtime.
  void watch_hogs(const RuntimeOptions& options) {
    if (options.hog_threshold.count() > 0)
      hog_monitor_ = start_hog_monitor(*this, options.hog_threshold, options.on_hog);
  }

 private:
  void stop_all() noexcept;
  void worker_main(std::size_t index, std::atomic<std::size_t>* started);

  std::vector<Scheduler*> workers_;  // all set before the constructor returns
  std::vector<std::thread> threads_;
  std::unique_ptr<Scheduler> caller_worker_;          // worker 0 when caller_is_worker
  alignas(64) std::atomic<std::int64_t> pending_{1};  // see retain(); starts with the token
  alignas(64) std::atomic<std::uint64_t> next_outside_id_{0};
  std::atomic<std::size_t> outside_posters_{0};  // threads inside post_from_outside
  bool caller_is_worker_;
  const std::chrono::nanoseconds spin_;
  const std::chrono::nanoseconds idle_spin_;
  const IoBackendKind io_backend_;
  std::atomic<bool> token_held_{true};
  std::mutex join_mutex_;
  std::vector<RemoteNode> stop_nodes_;
  std::uint64_t serial_ = 0;
  int dump_signal_ = 0;  // held, released at the end of the destructor
  HogMonitor* hog_monitor_ = nullptr;
};

// The runtimes alive in the process, for skein::debug: each is listed from the end of its
// constructor to the start of its destructor, so while the caller holds the lock every listed
// runtime's schedulers exist.
struct RuntimeRegistry {
  std::mutex mutex;
  std::vector<RuntimeCore*> runtimes;  // in order of creation
  std::uint64_t created = 0;
};
RuntimeRegistry& runtime_registry() noexcept;

}  // namespace skein::detail
