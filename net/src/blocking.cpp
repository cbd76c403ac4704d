// The blocking pool: threads started on demand, up to max(4, 2 x cores), each retiring after a
// while without work. Finished jobs are handed back to the waiting fiber's I/O core through its
// mailbox, which wakes the worker through its scheduler's inbox, so the fiber wakes on its own
// thread.
#include "blocking_pool.hpp"
#include "io_core.hpp"

#include <skein/detail/fiber.hpp>

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

namespace skein::detail {

namespace {

struct Item {
  BlockingJob* job;
  std::shared_ptr<void> keep;  // owns `job` when the waiter may leave early
  std::shared_ptr<Completion> completion;
  std::shared_ptr<Mailbox> mailbox;
};

// The threads that run blocking jobs. (Not skein::Pool, which bounds how many fibers run at once.)
class BlockingThreads {
 public:
  // Queues `item`, starting a thread if none is idle and the cap allows. Throws if no thread
  // exists and none can be started (the item is not queued then).
  void submit(Item item) {
    std::unique_lock lock(mutex_);
    queue_.push_back(std::move(item));
    // Idle threads take queued items one each; start another only for what they cannot cover
    // (an idle thread counts as idle until it wakes, so a burst must not all wait for one).
    if (queue_.size() <= idle_) {
      lock.unlock();
      cv_.notify_one();
      return;
    }
    if (threads_ >= max_threads_) return;  // a busy thread takes it when it is done
    ++threads_;
    try {
      start_thread();
    } catch (...) {
      --threads_;
      if (threads_ == 0) {
        queue_.pop_back();
        throw;
      }
    }
  }

 private:
  void start_thread() {
    // These threads never take a signal meant for the process: they block every one, and inherit
    // that mask from here.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
      std::thread([this] { work(); }).detach();
    } catch (...) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void work() noexcept {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (queue_.empty()) {
        ++idle_;
        const bool woke = cv_.wait_for(lock, idle_limit_, [this] { return !queue_.empty(); });
        --idle_;
        if (!woke) {
          --threads_;
          return;
        }
      }
      Item item = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      item.job->run();
      // The waiter may return and destroy `job` as soon as this is posted: nothing touches the
      // job after it.
      item.mailbox->post(std::move(item.completion));
      item = Item{};
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::size_t threads_ = 0;
  std::size_t idle_ = 0;
  const std::size_t max_threads_ = std::max<std::size_t>(4, 2 * std::thread::hardware_concurrency());
  const std::chrono::seconds idle_limit_{30};
};

// Never destroyed: a detached pool thread may still run a job while the process exits.
BlockingThreads* the_threads = nullptr;

BlockingThreads& blocking_threads() {
  static const bool once = [] {
    the_threads = new BlockingThreads;
    // A forked child has none of the parent's threads and perhaps a mutex held by one of them:
    // it starts a pool of its own (the old one is abandoned; jobs queued in it never run).
    pthread_atfork(nullptr, nullptr, [] { the_threads = new BlockingThreads; });
    return true;
  }();
  (void)once;
  return *the_threads;
}

// Parks until the completion is posted, `deadline`, or (unless shielded) a cancel.
Wake await(IoCore& core, Completion& completion, TimePoint deadline) noexcept {
  core.add_remote_waiter();
  Wake w;
  do {
    w = park(WaitFor{skein::debug::WaitReason::run_blocking, 0}, deadline);
  } while (w == Wake::notified && !completion.done);
  core.remove_remote_waiter();
  return w;
}

}  // namespace

namespace {

// Queues `job` on the pool for the running fiber `self`, whose core gets the completion. An
// already-cancelled fiber throws instead: the call is a cancellation point like any wait.
std::shared_ptr<Completion> submit(Fiber* self, IoCore& core, BlockingJob& job, std::shared_ptr<void> keep) {
  if (self->cancel_requested && !self->shielded) throw_if_interrupted(Wake::cancelled);
  auto completion = std::make_shared<Completion>();
  completion->fiber = self;
  blocking_threads().submit(Item{&job, std::move(keep), completion, core.mailbox()});
  return completion;
}

}  // namespace

int run_job(BlockingJob& job) noexcept {
  IoCore* core = IoCore::current();
  if (!core) {
    job.run();
    return 0;
  }
  Fiber* self = current_fiber();
  if (self->cancel_requested && !self->shielded) return ECANCELED;
  std::shared_ptr<Completion> completion;
  try {
    completion = submit(self, *core, job, nullptr);
  } catch (const std::system_error& e) {
    return e.code().category() == std::generic_category() ? e.code().value() : EAGAIN;
  } catch (...) {
    return ENOMEM;
  }
  // `job` may live on this fiber's stack and is in use on the pool: the fiber cannot leave
  // before it is done, so a cancel waits (shielded) and is reported afterwards.
  bool was_shielded;
  {
    const ShieldGuard shield;
    was_shielded = shield.was_shielded();
    await(*core, *completion, no_deadline);
  }
  if (self->cancel_requested && !was_shielded) return ECANCELED;
  return 0;
}

void run_blocking_job(BlockingJob& job) {
  const int err = run_job(job);
  if (err == ECANCELED) throw_if_interrupted(Wake::cancelled);
  if (err != 0) throw std::system_error(err, std::generic_category(), "skein::run_blocking: no pool thread");
}

void run_abandonable(std::shared_ptr<void> keep, BlockingJob& job, TimePoint deadline) {
  IoCore* core = IoCore::current();
  if (!core) {
    job.run();
    return;
  }
  const auto completion = submit(current_fiber(), *core, job, std::move(keep));
  const Wake w = await(*core, *completion, deadline);
  if (w != Wake::notified) {
    completion->fiber = nullptr;  // a late completion must not wake this fiber in another wait
    throw_if_interrupted(w);
  }
}

}  // namespace skein::detail
