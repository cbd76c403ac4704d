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

}  // namespace skein::detail
