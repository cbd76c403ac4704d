// skein's fiber-aware I/O in one include: addresses and resolution, sockets, the buffered
// reader, run_blocking, the connection server, and which I/O backend (epoll, io_uring) runs it.
#pragma once

#include <skein/address.hpp>
#include <skein/blocking.hpp>
#include <skein/buffered_reader.hpp>
#include <skein/net_error.hpp>
#include <skein/runtime.hpp>
#include <skein/server.hpp>
#include <skein/socket.hpp>

namespace skein {

// The I/O backend a runtime asking for `requested` (RuntimeOptions::io_backend) gives its workers:
// SKEIN_IO applied, automatic resolved. Throws std::system_error: invalid_argument naming a bad
// SKEIN_IO, or the reason io_uring is unavailable when it was asked for explicitly.
IoBackendKind resolve_io_backend(IoBackendKind requested = IoBackendKind::automatic);

// The backend of the calling fiber's worker (epoll or io_uring), starting its I/O if it has not
// yet. Throws operation_not_permitted outside a fiber.
IoBackendKind io_backend();

// "auto", "epoll" or "io_uring", as SKEIN_IO spells them.
const char* io_backend_name(IoBackendKind kind) noexcept;

}  // namespace skein
