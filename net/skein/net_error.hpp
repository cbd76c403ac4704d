// The errors skein's I/O reports that POSIX has no errno for. Everything else is a
// std::system_error carrying the errno (std::generic_category / std::errc), see docs/errors.md.
#pragma once

#include <string>
#include <system_error>
#include <type_traits>

namespace skein {

enum class net_errc {
  end_of_stream = 1,  // the peer closed the stream before the bytes asked for arrived
  too_long,           // a line or message exceeded the caller's maximum length
  closed,             // the socket was closed while the caller waited on it
};

// The category of net_errc values ("skein.net").
const std::error_category& net_category() noexcept;

inline std::error_code make_error_code(net_errc e) noexcept {
  return {static_cast<int>(e), net_category()};
}

// The category of getaddrinfo's EAI_* codes ("skein.resolve"); message() is gai_strerror's.
const std::error_category& resolve_category() noexcept;

}  // namespace skein

template <>
struct std::is_error_code_enum<skein::net_errc> : std::true_type {};
