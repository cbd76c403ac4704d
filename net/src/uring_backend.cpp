// The io_uring backend, readiness mode (docs/io_uring.md): a multishot poll per descriptor
// reports its readiness changes as completions, and one io_uring_enter per scheduler turn both
// submits what the turn queued (polls to arm, polls to remove) and sleeps until the next
// completion, the inbox eventfd or the deadline.
//
// user_data: (generation << 32 | fd) for a descriptor's poll, so a completion that arrives after
// the descriptor was removed (and its number perhaps reused) is recognised and dropped, as the
// core drops stale generations too; two tags no descriptor can produce (fd 0xffffffff and
// 0xfffffffe are never valid) for the inbox's poll and for operations whose completion is ignored.
#include "io_backend.hpp"

#if SKEIN_HAVE_LIBURING

#include "io_core.hpp"
#include "scheduler.hpp"

#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

namespace skein::detail {

namespace {

constexpr std::uint64_t inbox_tag = ~std::uint64_t{0};
constexpr std::uint64_t ignore_tag = ~std::uint64_t{1};
constexpr std::uint64_t wake_tag = ~std::uint64_t{2};  // another worker's MSG_RING wake-up
constexpr unsigned poll_mask = POLLIN | POLLOUT | POLLRDHUP;
constexpr unsigned sq_entries = 256;
// Every watched descriptor can complete between two drains; overflowed completions are kept by
// the kernel (IORING_FEAT_NODROP) and flushed, and a multishot poll it had to end is re-armed,
// so this is a performance bound, not a correctness one.
constexpr unsigned cq_entries = 8192;

std::uint64_t tag(int fd, std::uint32_t generation) noexcept {
  return (std::uint64_t{generation} << 32) | static_cast<std::uint32_t>(fd);
}

// What the kernel allows, found once per process: 0, or the errno and a sentence saying why not.
struct Probe {
  int err = 0;
  const char* why = nullptr;
  bool ops = false;               // the opcodes of completion mode are there (Linux 5.6)
  bool multishot_accept = false;  // IORING_ACCEPT_MULTISHOT (Linux 5.19)
  bool msg_ring = false;          // IORING_OP_MSG_RING (Linux 5.18)
};

int read_io_uring_disabled() noexcept {
  std::FILE* f = std::fopen("/proc/sys/kernel/io_uring_disabled", "re");
  if (!f) return 0;  // older kernels have no such switch
  int v = 0;
  if (std::fscanf(f, "%d", &v) != 1) v = 0;
  std::fclose(f);
  return v;
}

// Multishot accept has no opcode of its own either: a kernel before 5.19 refuses the flag with
// EINVAL. Armed on a listening Unix socket (autobound to an abstract name) with no connection,
// then cancelled: -ECANCELED says it was accepted.
// The raw system calls: with the hooks linked, the probe runs while the core is being installed,
// and a hooked socket() would try to install it again.
bool probe_multishot_accept(io_uring& ring) noexcept {
  const int fd =
      static_cast<int>(syscall(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  bool ok = false;
  if (syscall(SYS_bind, fd, reinterpret_cast<sockaddr*>(&addr), sizeof(sa_family_t)) == 0 &&
      syscall(SYS_listen, fd, 1) == 0) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, 1);
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_cancel64(sqe, 1, 0);
    io_uring_sqe_set_data64(sqe, 2);
    if (io_uring_submit(&ring) >= 0) {
      // The accept's own completion comes in any case (cancelled, or refused); earlier probes'
      // completions may come first.
      for (int seen = 0; seen < 8; ++seen) {
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(&ring, &cqe) != 0) break;
        const bool last = cqe->user_data == 1 && !(cqe->flags & IORING_CQE_F_MORE);
        if (last) ok = cqe->res == -ECANCELED;
        io_uring_cqe_seen(&ring, cqe);
        if (last) break;
      }
    }
  }
  syscall(SYS_close, fd);
  return ok;
}

Probe probe_kernel() noexcept {
  const int disabled = read_io_uring_disabled();
  if (disabled == 2) return {EPERM, "io_uring is disabled by the kernel (kernel.io_uring_disabled=2)"};
  io_uring ring;
  const int r = io_uring_queue_init(4, &ring, 0);
  if (r == -ENOSYS)
    return {ENOSYS, "the kernel has no io_uring, or a seccomp filter refuses io_uring_setup (ENOSYS)"};
  if (r == -EPERM)
    return {EPERM, disabled == 1
                       ? "io_uring is restricted by the kernel (kernel.io_uring_disabled=1) and "
                         "this process is not in kernel.io_uring_group"
                       : "io_uring_setup was refused (EPERM: a seccomp filter or a security module)"};
  if (r < 0) return {-r, "io_uring_setup failed"};
  Probe result;
  if (!(ring.features & IORING_FEAT_EXT_ARG)) {
    // Waiting with a timeout in the same system call as the submission needs Linux 5.11.
    result = {ENOTSUP, "the kernel's io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11 or later is needed)"};
  } else if (io_uring_probe* p = io_uring_get_probe_ring(&ring)) {
    for (const int op : {IORING_OP_POLL_ADD, IORING_OP_POLL_REMOVE})
      if (!io_uring_opcode_supported(p, op))
        result = {ENOTSUP, "the kernel's io_uring lacks poll add/remove"};
    result.ops = true;
    for (const int op :
         {IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_ACCEPT, IORING_OP_ASYNC_CANCEL})
      if (!io_uring_opcode_supported(p, op)) result.ops = false;
    result.msg_ring = io_uring_opcode_supported(p, IORING_OP_MSG_RING);
    io_uring_free_probe(p);
  } else {
    result = {ENOTSUP, "the kernel's io_uring cannot be probed for opcodes (Linux 5.6 or later is needed)"};
  }
  if (result.err == 0) {
    // Multishot poll (Linux 5.13) has no opcode of its own: arm one on a readable eventfd and
    // check that the completion says more will follow.
    const int efd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
      result = {errno, "eventfd failed while probing io_uring"};
    } else {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_poll_multishot(sqe, efd, POLLIN);
      io_uring_cqe* cqe = nullptr;
      const int s = io_uring_submit_and_wait(&ring, 1);
      if (s < 0 || io_uring_peek_cqe(&ring, &cqe) != 0 || cqe->res < 0 || !(cqe->flags & IORING_CQE_F_MORE))
        result = {ENOTSUP, "the kernel's io_uring lacks multishot poll (Linux 5.13 or later is needed)"};
      ::close(efd);
    }
  }
  if (result.err == 0 && result.ops) result.multishot_accept = probe_multishot_accept(ring);
  io_uring_queue_exit(&ring);
  return result;
}

const Probe& kernel_probe() noexcept {
  static const Probe p = probe_kernel();
  return p;
}

class UringBackend final : public IoBackend {
 public:
  UringBackend(IoCore& core, Inbox& inbox, bool ops, bool multishot_accept, bool msg_ring) noexcept
      : core_(core),
        inbox_(inbox),
        ops_(ops),
        multishot_accept_(ops && multishot_accept),
        msg_ring_(msg_ring) {}
  UringBackend(const UringBackend&) = delete;
  UringBackend& operator=(const UringBackend&) = delete;
  ~UringBackend() override {
    if (ring_ok_) io_uring_queue_exit(&ring_);
  }

  // 0, or the errno and `why`.
  int init(const char*& why) noexcept {
    io_uring_params p{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = cq_entries;
    // The ring is this worker's alone (SINGLE_ISSUER), and completions need not interrupt it:
    // it collects them at its next io_uring_enter, which every scheduler turn that waits on I/O
    // makes (COOP_TASKRUN, with TASKRUN_FLAG telling poll() when that is due).
    const unsigned extra[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    int r = -EINVAL;
    for (const unsigned flags : extra) {
      io_uring_params q = p;
      q.flags |= flags;
      r = io_uring_queue_init_params(sq_entries, &ring_, &q);
      if (r != -EINVAL) {
        taskrun_flag_ = flags & IORING_SETUP_TASKRUN_FLAG;
        skip_success_ = q.features & IORING_FEAT_CQE_SKIP;
        break;
      }
    }
    if (r < 0) {
      why = "io_uring_setup failed for a worker's ring";
      return -r;
    }
    ring_ok_ = true;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_multishot(sqe, inbox_.fd(), POLLIN);
    io_uring_sqe_set_data64(sqe, inbox_tag);
    r = io_uring_submit(&ring_);
    if (r < 0) {
      why = "io_uring_submit failed arming the inbox's poll";
      return -r;
    }
    return 0;
  }

  BackendKind kind() const noexcept override { return BackendKind::io_uring; }
  bool ops() const noexcept override { return ops_; }
  bool multishot_accept() const noexcept override { return multishot_accept_; }
  int wake_ring() const noexcept override { return msg_ring_ ? ring_.ring_fd : -1; }

  bool post_wake(int ring_fd) noexcept override {
    if (!msg_ring_) return false;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_msg_ring(sqe, ring_fd, 0, wake_tag, 0);
    io_uring_sqe_set_data64(sqe, ignore_tag);
    if (skip_success_) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    // Now: the sleeper waits for it (and this worker may be about to sleep on its futex). Not
    // submitted (the ring busy): the caller writes the eventfd instead; the MSG_RING left queued
    // only wakes the sleeper once more later.
    const int r = io_uring_submit(&ring_);
    return r >= 0 && io_uring_sq_ready(&ring_) == 0;
  }

  int submit(IoOpState& s) noexcept override {
    io_uring_sqe* sqe = get_sqe();
    const IoOp& op = *s.op;
    switch (op.kind) {
      case IoOp::poll:
        io_uring_prep_poll_add(sqe, s.fd, s.dir == Direction::read ? POLLIN | POLLRDHUP : POLLOUT);
        break;
      case IoOp::recv:
        io_uring_prep_recv(sqe, s.fd, op.buf, op.len, op.flags);
        break;
      case IoOp::send:
        io_uring_prep_send(sqe, s.fd, op.buf, op.len, op.flags);
        break;
      case IoOp::sendmsg:
        io_uring_prep_sendmsg(sqe, s.fd, op.msg, static_cast<unsigned>(op.flags));
        break;
      case IoOp::accept:
        io_uring_prep_accept(sqe, s.fd, op.addr, op.addrlen, op.flags);
        break;
      case IoOp::accept_multishot:
        io_uring_prep_multishot_accept(sqe, s.fd, nullptr, nullptr, op.flags);
        break;
    }
    io_uring_sqe_set_data(sqe, &s);
    return 0;
  }

  void cancel(IoOpState& s) noexcept override {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel(sqe, &s, 0);
    io_uring_sqe_set_data64(sqe, ignore_tag);
    if (skip_success_) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    // Now: a cancel at close must release the file before close() returns (the peer's FIN).
    io_uring_submit(&ring_);
  }

  int add(int fd, std::uint32_t generation) noexcept override {
    const auto i = static_cast<std::size_t>(fd);
    if (i >= slots_.size()) {
      try {
        slots_.resize(std::max<std::size_t>(i + 1, slots_.size() * 2));
      } catch (const std::bad_alloc&) {
        return ENOMEM;
      }
    }
    slots_[i] = {generation, true};
    arm(fd, generation);
    return 0;
  }

  void remove(int fd) noexcept override {
    const auto i = static_cast<std::size_t>(fd);
    if (i >= slots_.size() || !slots_[i].watched) return;
    slots_[i].watched = false;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_remove(sqe, tag(fd, slots_[i].generation));
    io_uring_sqe_set_data64(sqe, ignore_tag);
    if (skip_success_) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    // Now, not at the next wait: the poll holds a reference to the file, so until it is removed
    // close() would not release the socket (no FIN for the peer), and this worker may next sleep
    // on its futex rather than in the ring.
    io_uring_submit(&ring_);
  }

  void wait(TimePoint deadline) noexcept override {
    int r;
    if (deadline == no_deadline) {
      r = io_uring_submit_and_wait(&ring_, 1);
    } else {
      const auto left = deadline - Clock::now();
      if (left <= left.zero()) {
        poll();
        return;
      }
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      __kernel_timespec ts{ns / 1'000'000'000, ns % 1'000'000'000};
      io_uring_cqe* cqe = nullptr;
      // One io_uring_enter: submits, then waits for a completion or the timeout (EXT_ARG).
      r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
      backend_fatal("io_uring_enter", -r);
    drain();
  }

  void poll() noexcept override {
    // Completions are posted by task work the kernel runs when this thread enters it; the
    // TASKRUN flag says when some is pending, so a turn with nothing to submit or collect makes
    // no system call.
    const unsigned flags = IO_URING_READ_ONCE(*ring_.sq.kflags);
    if (io_uring_sq_ready(&ring_) > 0 || !taskrun_flag_ ||
        (flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)))
      io_uring_submit_and_get_events(&ring_);
    drain();
  }

 private:
  struct Slot {
    std::uint32_t generation = 0;
    bool watched = false;
  };

  // An SQE, submitting the queued ones first if the submission queue is full.
  io_uring_sqe* get_sqe() noexcept {
    for (;;) {
      if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
      const int r = io_uring_submit(&ring_);
      if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) backend_fatal("io_uring_submit", -r);
      if (r <= 0) io_uring_get_events(&ring_);  // room in the CQ lets the kernel take SQEs again
    }
  }

  void arm(int fd, std::uint32_t generation) noexcept {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_multishot(sqe, fd, poll_mask);
    io_uring_sqe_set_data64(sqe, tag(fd, generation));
  }

  void complete(const io_uring_cqe* cqe) noexcept {
    const std::uint64_t data = cqe->user_data;
    const bool more = cqe->flags & IORING_CQE_F_MORE;
    if (data == ignore_tag || data == wake_tag) return;  // a wake-up needs nothing more
    if (data == inbox_tag) {
      inbox_.clear_fd();  // the scheduler takes the messages itself
      if (!more) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_poll_multishot(sqe, inbox_.fd(), POLLIN);
        io_uring_sqe_set_data64(sqe, inbox_tag);
      }
      return;
    }
    if (ops_) {
      auto* s = reinterpret_cast<IoOpState*>(static_cast<std::uintptr_t>(data));
      const int res = cqe->res;
      if (s->op->kind == IoOp::accept_multishot) {
        core_.accepted(*s, res, more);  // may free s
        return;
      }
      s->result = s->op->kind == IoOp::poll && res >= 0
                      ? static_cast<int>(io_events_of(static_cast<std::uint32_t>(res)))
                      : res;
      s->done = true;
      unpark(s->fiber);
      return;
    }
    const int fd = static_cast<int>(static_cast<std::uint32_t>(data));
    const auto generation = static_cast<std::uint32_t>(data >> 32);
    const auto i = static_cast<std::size_t>(fd);
    if (i >= slots_.size() || !slots_[i].watched || slots_[i].generation != generation) return;  // removed
    if (cqe->res >= 0) {
      core_.deliver(fd, generation, io_events_of(static_cast<std::uint32_t>(cqe->res)));
      // The kernel ended the multishot poll (a full CQ, say): watch again; the new poll reports
      // the readiness of the moment, so no edge is lost in between.
      if (!more) arm(fd, generation);
    } else if (cqe->res == -ECANCELED) {
      arm(fd, generation);
    } else {
      // The poll itself failed: the next call on the descriptor reports why.
      core_.deliver(fd, generation, io_readable | io_writable | io_hup);
      slots_[i].watched = false;
    }
  }

  void drain() noexcept {
    for (int pass = 0; pass < 4; ++pass) {
      unsigned head;
      unsigned n = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        complete(cqe);
        ++n;
      }
      io_uring_cq_advance(&ring_, n);
      if (!io_uring_cq_has_overflow(&ring_)) break;
      io_uring_get_events(&ring_);  // moves the overflowed completions into the room just made
    }
  }

  IoCore& core_;
  Inbox& inbox_;
  io_uring ring_{};
  bool ops_;  // completion mode: user_data is an IoOpState
  bool multishot_accept_;
  bool msg_ring_;  // other workers wake this one by MSG_RING (wake_ring)
  bool ring_ok_ = false;
  bool taskrun_flag_ = false;
  bool skip_success_ = false;
  std::vector<Slot> slots_;  // by fd
};

}  // namespace

int uring_unavailable(const char*& why) noexcept {
  if (const char* v = std::getenv("SKEIN_IO_URING_DISABLED"); v && *v && std::strcmp(v, "0") != 0) {
    why = "io_uring is disabled by SKEIN_IO_URING_DISABLED";
    return ENOTSUP;
  }
  const Probe& p = kernel_probe();
  why = p.why;
  if (p.err != 0) return p.err;
  if (const char* v = std::getenv("SKEIN_IO_URING_MODE"); v && *v) {
    if (std::strcmp(v, "completion") != 0 && std::strcmp(v, "readiness") != 0) {
      why = "SKEIN_IO_URING_MODE is not one of completion, readiness";
      return EINVAL;
    }
    if (std::strcmp(v, "completion") == 0 && !p.ops) {
      why =
          "the kernel's io_uring lacks recv, send, sendmsg, accept or async cancel (Linux 5.6 or later is "
          "needed)";
      return ENOTSUP;
    }
  }
  return 0;
}

bool uring_completion_mode() noexcept {
  const char* v = std::getenv("SKEIN_IO_URING_MODE");
  if (v && std::strcmp(v, "readiness") == 0) return false;
  return kernel_probe().ops;
}

bool uring_multishot_accept() noexcept {
  if (const char* v = std::getenv("SKEIN_IO_URING_MULTISHOT_ACCEPT"); v && std::strcmp(v, "0") == 0)
    return false;
  return kernel_probe().multishot_accept;
}

// Whether workers wake each other by MSG_RING rather than the inbox's eventfd: where the kernel
// has it, unless SKEIN_IO_URING_WAKE=eventfd (benchmarks).
static bool uring_msg_ring_wake() noexcept {
  if (const char* v = std::getenv("SKEIN_IO_URING_WAKE"); v && std::strcmp(v, "eventfd") == 0) return false;
  return kernel_probe().msg_ring;
}

std::unique_ptr<IoBackend> make_uring_backend(IoCore& core, Inbox& inbox, int& err, const char*& why) {
  if ((err = uring_unavailable(why)) != 0) return nullptr;
  auto backend = std::make_unique<UringBackend>(core, inbox, uring_completion_mode(),
                                                uring_multishot_accept(), uring_msg_ring_wake());
  if ((err = backend->init(why)) != 0) return nullptr;
  return backend;
}

}  // namespace skein::detail

#else  // built without liburing (a cross build lacking the target's): epoll is the only backend

#include <cerrno>

namespace skein::detail {

int uring_unavailable(const char*& why) noexcept {
  why = "this skein was built without liburing";
  return ENOTSUP;
}

std::unique_ptr<IoBackend> make_uring_backend(IoCore&, Inbox&, int& err, const char*& why) {
  err = uring_unavailable(why);
  return nullptr;
}

bool uring_completion_mode() noexcept {
  return false;
}

bool uring_multishot_accept() noexcept {
  return false;
}

}  // namespace skein::detail

#endif
