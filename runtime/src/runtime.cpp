#include "runtime_core.hpp"

#include "debug_signal.hpp"

#include <skein/runtime.hpp>

#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>

namespace skein::detail {

namespace {

std::size_t resolve_workers(std::size_t requested) {
  if (requested > 0) return requested;
  const unsigned cores = std::thread::hardware_concurrency();
  return cores > 0 ? cores : 1;
}

// The CPUs this thread may run on (its affinity mask, which a container or taskset narrows). On
// one CPU a spinning worker only delays the thread it waits for.
std::size_t usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return std::thread::hardware_concurrency();
  return static_cast<std::size_t>(CPU_COUNT(&set));
}

// Worker threads leave the process's asynchronous signals to the thread that started the runtime
// (or to threads of the program's own), as the blocking pool does: a signal-driven shutdown then
// has one place to look. Faults stay deliverable: the guard-page handler needs SIGSEGV.
void block_async_signals() noexcept {
  sigset_t set;
  sigfillset(&set);
  for (const int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&set, sig);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

}  // namespace

RuntimeCore::RuntimeCore(std::size_t workers, bool caller_is_worker,
                         std::chrono::nanoseconds spin_before_sleep, std::chrono::nanoseconds idle_spin,
                         IoBackendKind io_backend)
    : workers_(resolve_workers(workers), nullptr),
      caller_is_worker_(caller_is_worker),
      spin_(spin_before_sleep),
      idle_spin_(usable_cpus() > 1 ? idle_spin : std::chrono::nanoseconds(0)),
      io_backend_(io_backend) {
  stop_nodes_.resize(workers_.size());
  for (auto& n : stop_nodes_) n.kind = RemoteNode::Kind::stop;
  std::size_t first_thread = 0;
  if (caller_is_worker) {
    caller_worker_ = std::make_unique<Scheduler>(*this, 0);
    workers_[0] = caller_worker_.get();
    first_thread = 1;
  }
  // Counts workers that are set up (or failed to): the constructor returns only when every
  // scheduler exists, so a fiber may post to any of them from its first instruction.
  std::atomic<std::size_t> started{first_thread};
  try {
    for (std::size_t i = first_thread; i < workers_.size(); ++i)
      threads_.emplace_back(&RuntimeCore::worker_main, this, i, &started);
  } catch (...) {
    // Out of threads: stop what was started (the loops end on the stop message) and give up.
    for (std::size_t n = started.load(); n < first_thread + threads_.size(); n = started.load())
      started.wait(n);
    for (std::size_t i = 0; i < workers_.size(); ++i)
      if (workers_[i]) workers_[i]->post(&stop_nodes_[i]);
    for (auto& t : threads_) t.join();
    if (caller_worker_) caller_worker_->unbind();
    for (std::size_t i = first_thread; i < workers_.size(); ++i) delete workers_[i];
    throw;
  }
  for (std::size_t n = started.load(); n < workers_.size(); n = started.load()) started.wait(n);
  for (Scheduler* s : workers_) {
    if (s) continue;
    // A worker could not create its scheduler (out of descriptors): end the others and report.
    token_held_.store(false);
    stop_all();
    for (auto& t : threads_) t.join();
    if (caller_worker_) caller_worker_->unbind();
    for (std::size_t i = first_thread; i < workers_.size(); ++i) delete workers_[i];
    throw std::system_error(std::make_error_code(std::errc::too_many_files_open),
                            "skein: could not start a worker's scheduler");
  }
  RuntimeRegistry& registry = runtime_registry();
  std::lock_guard lock(registry.mutex);
  serial_ = ++registry.created;
  try {
    registry.runtimes.push_back(this);
  } catch (...) {
    // Out of memory: the runtime runs, unseen by skein::debug, rather than failing to start.
  }
}

RuntimeCore::~RuntimeCore() {
  stop_hog_monitor(hog_monitor_);
  {
    RuntimeRegistry& registry = runtime_registry();
    std::lock_guard lock(registry.mutex);
    std::erase(registry.runtimes, this);
  }
  release_token();
  join();
  while (outside_posters_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  // A loop that never ran (run() failed before starting it) has not answered skein::debug.
  for (Scheduler* s : workers_) s->close_debug();
  // The schedulers outlive every loop: a thread that posted the last message may still be inside
  // post() when the receiving worker has already left its loop.
  for (std::size_t i = caller_is_worker_ ? 1 : 0; i < workers_.size(); ++i) delete workers_[i];
  release_dump_signal(dump_signal_);
}

void RuntimeCore::hold_dump_signal(int sig) {
  detail::hold_dump_signal(sig);
  dump_signal_ = sig;
}

void RuntimeCore::worker_main(std::size_t index, std::atomic<std::size_t>* started) {
  block_async_signals();
  Scheduler* s = nullptr;
  try {
    s = new Scheduler(*this, index);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "skein: worker %zu: %s\n", index, e.what());
  }
  workers_[index] = s;
  started->fetch_add(1, std::memory_order_release);
  started->notify_all();
  if (!s) return;
  s->loop();
  s->unbind();
}

void RuntimeCore::run_worker0() {
  caller_worker_->loop();
  caller_worker_->unbind();
}

bool RuntimeCore::try_retain() noexcept {
  std::int64_t n = pending_.load(std::memory_order_relaxed);
  do {
    if (n == 0) return false;
  } while (!pending_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

void RuntimeCore::post_from_outside(Scheduler& s, RemoteNode* n) noexcept {
  outside_posters_.fetch_add(1, std::memory_order_acq_rel);
  retain();
  s.post(n);
  release();
  outside_posters_.fetch_sub(1, std::memory_order_release);
}

void RuntimeCore::release_token() noexcept {
  if (token_held_.exchange(false, std::memory_order_acq_rel)) release();
}

void RuntimeCore::stop_all() noexcept {
  for (std::size_t i = 0; i < workers_.size(); ++i)
    if (workers_[i]) workers_[i]->post(&stop_nodes_[i]);  // null: failed to start (constructor)
}

void RuntimeCore::join() {
  std::lock_guard lock(join_mutex_);  // shutdown() may be called from several threads
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

RuntimeRegistry& runtime_registry() noexcept {
  // Never destroyed: a runtime may end during static destruction.
  static RuntimeRegistry* registry = [] {
    auto* r = new RuntimeRegistry;
    r->runtimes.reserve(4);
    return r;
  }();
  return *registry;
}

RuntimeCore& runtime_for(const char* what) {
  return scheduler_for(what).runtime();
}

std::size_t worker_count(const RuntimeCore& core) noexcept {
  return core.size();
}

void start_fiber_on(RuntimeCore& core, std::size_t worker, Fiber* fiber, Stack stack, std::string name,
                    skein::SourceLocation where) {
  auto discard = [&] {
    fiber->~Fiber();
    release_stack(stack);
  };
  if (worker >= core.size()) {
    discard();
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein::spawn_on: worker " + std::to_string(worker) +
                                " out of range (the runtime has " + std::to_string(core.size()) + ")");
  }
  Scheduler* here = Scheduler::current();
  Scheduler& target = core.worker(worker);
  if (&target == here) {
    target.prepare(fiber, stack, std::move(name), where);
    target.start_local(fiber);
    return;
  }
  // The start message holds a count until the target has started the fiber. A fiber of this
  // runtime keeps the runtime alive; anyone else must check it has not ended.
  const bool outsider = !here || &here->runtime() != &core;
  if (!outsider) {
    core.retain();
  } else if (!core.try_retain()) {
    discard();
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::spawn_on: the runtime has ended");
  }
  target.prepare(fiber, stack, std::move(name), where);
  if (outsider)
    core.post_from_outside(target, &fiber->post_node);
  else
    target.post(&fiber->post_node);
}

RunScope::RunScope(const RuntimeOptions& options) {
  if (Scheduler::current())
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::run: this thread already runs a scheduler");
  core_ = std::make_unique<RuntimeCore>(options.workers, true, options.spin_before_sleep, options.idle_spin,
                                        options.io_backend);
  core_->hold_dump_signal(options.dump_signal);
  core_->watch_hogs(options);
}

RunScope::~RunScope() = default;

void RunScope::loop() {
  core_->release_token();
  core_->run_worker0();
}

}  // namespace skein::detail

namespace skein {

Runtime::Runtime(RuntimeOptions options)
    : core_(std::make_unique<detail::RuntimeCore>(options.workers, false, options.spin_before_sleep,
                                                  options.idle_spin, options.io_backend)) {
  core_->hold_dump_signal(options.dump_signal);
  core_->watch_hogs(options);
}

Runtime::~Runtime() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "skein::~Runtime: %s; aborting\n", e.what());
    std::abort();
  }
}

std::size_t Runtime::worker_count() const noexcept {
  return core_->size();
}

void Runtime::shutdown() {
  const detail::Scheduler* here = detail::Scheduler::current();
  if (here && &here->runtime() == core_.get())
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "skein::Runtime::shutdown: called from one of its own fibers");
  core_->release_token();
  core_->join();
}

std::size_t this_worker() noexcept {
  const detail::Scheduler* s = detail::Scheduler::current();
  return s ? s->index() : no_worker;
}

std::size_t worker_count() noexcept {
  const detail::Scheduler* s = detail::Scheduler::current();
  return s ? s->runtime().size() : 1;
}

}  // namespace skein
