// Which backend a worker gets: RuntimeOptions::io_backend, overridden by SKEIN_IO.
#include "io_backend.hpp"

#include "io_core.hpp"
#include "scheduler.hpp"

#include <skein/net.hpp>
#include <skein/runtime.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

namespace skein::detail {

void backend_fatal(const char* what, int err) noexcept {
  std::fprintf(stderr, "skein: %s failed: %s\n", what, std::strerror(err));
  std::abort();
}

namespace {

// SKEIN_IO, if set (and not empty), replaces what the runtime asked for. SKEIN_IO_URING_MODE, if
// set, must name a mode (uring_backend.cpp reads it).
IoBackendKind apply_env(IoBackendKind requested) {
  if (const char* m = std::getenv("SKEIN_IO_URING_MODE");
      m && *m && std::strcmp(m, "completion") != 0 && std::strcmp(m, "readiness") != 0)
    throw std::system_error(
        std::make_error_code(std::errc::invalid_argument),
        std::string("skein: SKEIN_IO_URING_MODE='") + m + "' is not one of completion, readiness");
  const char* v = std::getenv("SKEIN_IO");
  if (!v || !*v) return requested;
  if (std::strcmp(v, "auto") == 0) return IoBackendKind::automatic;
  if (std::strcmp(v, "epoll") == 0) return IoBackendKind::epoll;
  if (std::strcmp(v, "io_uring") == 0) return IoBackendKind::io_uring;
  throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                          std::string("skein: SKEIN_IO='") + v + "' is not one of auto, epoll, io_uring");
}

// What automatic picks: io_uring where the kernel allows it and the mode in force is completion
// (readiness mode saves nothing against epoll, and keeps descriptors closed on another worker
// open), else epoll.
bool automatic_uring() noexcept {
  const char* why = nullptr;
  return uring_unavailable(why) == 0 && uring_completion_mode();
}

[[noreturn]] void unavailable(const char* backend, int err, const char* why) {
  throw std::system_error(
      err, std::generic_category(),
      std::string("skein: the ") + backend + " I/O backend is unavailable: " + (why ? why : "?"));
}

}  // namespace

std::unique_ptr<IoBackend> make_backend(IoCore& core, Inbox& inbox, IoBackendKind requested) {
  const IoBackendKind kind = apply_env(requested);
  int err = 0;
  const char* why = nullptr;
  // Automatic is io_uring in completion mode where the kernel allows it: it costs less CPU per
  // message than epoll, and holds no descriptor once its waits end (docs/io_uring.md).
  if (kind == IoBackendKind::io_uring || (kind == IoBackendKind::automatic && automatic_uring())) {
    if (auto b = make_uring_backend(core, inbox, err, why)) return b;
    if (kind == IoBackendKind::io_uring) unavailable("io_uring", err, why);
  }
  if (auto b = make_epoll_backend(core, inbox, err, why)) return b;
  unavailable("epoll", err, why);
}

}  // namespace skein::detail

namespace skein {

IoBackendKind resolve_io_backend(IoBackendKind requested) {
  const IoBackendKind kind = detail::apply_env(requested);
  if (kind == IoBackendKind::epoll) return IoBackendKind::epoll;
  if (kind == IoBackendKind::automatic)
    return detail::automatic_uring() ? IoBackendKind::io_uring : IoBackendKind::epoll;
  const char* why = nullptr;
  if (const int err = detail::uring_unavailable(why); err != 0) detail::unavailable("io_uring", err, why);
  return IoBackendKind::io_uring;
}

IoBackendKind io_backend() {
  detail::IoCore* core = detail::IoCore::current();
  if (!core)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::io_backend: called outside a fiber");
  return core->backend().kind() == detail::BackendKind::io_uring ? IoBackendKind::io_uring
                                                                 : IoBackendKind::epoll;
}

const char* io_backend_name(IoBackendKind kind) noexcept {
  switch (kind) {
    case IoBackendKind::automatic:
      return "auto";
    case IoBackendKind::epoll:
      return "epoll";
    case IoBackendKind::io_uring:
      return "io_uring";
  }
  return "?";
}

}  // namespace skein
