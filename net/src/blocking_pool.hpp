// The pool behind run_blocking, and its variant for jobs a fiber may stop waiting for.
#pragma once

#include <skein/blocking.hpp>
#include <skein/time.hpp>

#include <memory>

namespace skein::detail {

// Runs `job` on the pool and parks until it is done, `deadline`, or a cancel; on the latter two
// the fiber leaves (throwing timed_out / operation_canceled) and `keep` keeps the job alive until
// it finishes. For jobs that own everything they touch. Outside a fiber: runs it inline.
void run_abandonable(std::shared_ptr<void> keep, BlockingJob& job, TimePoint deadline);

// run_blocking_job without exceptions, for the hooks: 0 once `job` has run; ECANCELED if the fiber
// was cancelled (before: `job` did not run; while it ran: it finished first); or the errno of
// the pool failing to start a thread (`job` did not run). Outside a fiber: runs it inline.
int run_job(BlockingJob& job) noexcept;

}  // namespace skein::detail
