// Socket addresses (IPv4, IPv6, Unix-domain paths) and name resolution off the scheduler thread.
//
// Errors: malformed input throws std::system_error(errc::invalid_argument); resolve() throws
// std::system_error in resolve_category() (getaddrinfo's EAI_* codes) or the usual fiber errors.
#pragma once

#include <skein/time.hpp>

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace skein {

class Address {
 public:
  // An empty address (family AF_UNSPEC).
  Address() noexcept;

  // Parses an IPv4 ("127.0.0.1") or IPv6 ("::1", "[::1]", "fe80::1%eth0") literal; no lookup.
  static Address ip(std::string_view literal, std::uint16_t port);
  // 127.0.0.1:port, or [::1]:port when `ipv6`.
  static Address loopback(std::uint16_t port, bool ipv6 = false) noexcept;
  // 0.0.0.0:port, or [::]:port when `ipv6` (which also accepts IPv4 unless the system says not).
  static Address any(std::uint16_t port, bool ipv6 = false) noexcept;
  // A Unix-domain socket path; a leading '@' names an abstract socket. Throws if it is too long.
  static Address unix_path(std::string_view path);
  // Copies a sockaddr of `len` bytes; throws invalid_argument if it does not fit.
  static Address from_sockaddr(const sockaddr* sa, socklen_t len);

  int family() const noexcept { return storage_.ss_family; }
  bool empty() const noexcept { return family() == AF_UNSPEC; }
  // The port of an IP address, 0 otherwise.
  std::uint16_t port() const noexcept;
  // "127.0.0.1:8080", "[::1]:8080", "unix:/tmp/s", "unix:@name", or "" when empty.
  std::string to_string() const;

  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t size() const noexcept { return len_; }

  friend bool operator==(const Address& a, const Address& b) noexcept;

 private:
  sockaddr_storage storage_{};
  socklen_t len_ = 0;
};

// Resolves `host` (a name or a literal) for TCP to `port` with getaddrinfo on the blocking pool,
// so the scheduler keeps running meanwhile. Returns at least one address. On a deadline or a
// cancel the fiber leaves at once and the lookup's result is dropped when it completes.
std::vector<Address> resolve(std::string_view host, std::uint16_t port, Deadline deadline = {});

}  // namespace skein
