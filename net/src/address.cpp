#include "blocking_pool.hpp"

#include <skein/address.hpp>
#include <skein/net_error.hpp>

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstring>
#include <memory>
#include <string>
#include <system_error>

namespace skein {

namespace {

[[noreturn]] void invalid(const std::string& what) {
  throw std::system_error(std::make_error_code(std::errc::invalid_argument), what);
}

// Fills `ss` with a sockaddr_in for `v4` or, when `ipv6`, a sockaddr_in6 for `v6`, both with
// `port`; returns its length.
socklen_t ip_sockaddr(sockaddr_storage& ss, std::uint16_t port, bool ipv6, in_addr_t v4,
                      const in6_addr& v6) noexcept {
  if (ipv6) {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(port);
    sa->sin6_addr = v6;
    return sizeof(sockaddr_in6);
  }
  auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
  sa->sin_family = AF_INET;
  sa->sin_port = htons(port);
  sa->sin_addr.s_addr = v4;
  return sizeof(sockaddr_in);
}

}  // namespace

Address::Address() noexcept {
  storage_.ss_family = AF_UNSPEC;
}

Address Address::ip(std::string_view literal, std::uint16_t port) {
  std::string text(literal);
  const bool bracketed = text.size() >= 2 && text.front() == '[' && text.back() == ']';
  if (bracketed) text = text.substr(1, text.size() - 2);
  const auto bad = [&] {
    invalid("skein::Address::ip: not an IPv4 or IPv6 address: '" + std::string(literal) + "'");
  };
  if (text.empty() || text.find('\0') != std::string::npos) bad();
  // getaddrinfo with AI_NUMERICHOST parses literals only (no lookup, so no blocking) and, unlike
  // inet_pton, understands IPv6 scope ids ("fe80::1%eth0").
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* list = nullptr;
  if (getaddrinfo(text.c_str(), nullptr, &hints, &list) != 0 || !list) bad();
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(list, &freeaddrinfo);
  // Brackets belong to IPv6 only; and inet_aton's shorthands ("1", "127.1") are not addresses.
  if (bracketed && list->ai_family != AF_INET6) bad();
  if (list->ai_family == AF_INET) {
    in_addr strict{};
    if (inet_pton(AF_INET, text.c_str(), &strict) != 1) bad();
  }
  Address a = from_sockaddr(list->ai_addr, list->ai_addrlen);
  if (a.family() == AF_INET)
    reinterpret_cast<sockaddr_in*>(&a.storage_)->sin_port = htons(port);
  else
    reinterpret_cast<sockaddr_in6*>(&a.storage_)->sin6_port = htons(port);
  return a;
}

Address Address::loopback(std::uint16_t port, bool ipv6) noexcept {
  Address a;
  a.len_ = ip_sockaddr(a.storage_, port, ipv6, htonl(INADDR_LOOPBACK), in6addr_loopback);
  return a;
}

Address Address::any(std::uint16_t port, bool ipv6) noexcept {
  Address a;
  a.len_ = ip_sockaddr(a.storage_, port, ipv6, htonl(INADDR_ANY), in6addr_any);
  return a;
}

Address Address::unix_path(std::string_view path) {
  Address a;
  auto* un = reinterpret_cast<sockaddr_un*>(&a.storage_);
  // A filesystem path needs its terminating NUL inside sun_path; an abstract name does not.
  const bool abstract = !path.empty() && path.front() == '@';
  if (path.empty()) invalid("skein::Address::unix_path: empty path");
  if (path.size() + (abstract ? 0 : 1) > sizeof(un->sun_path))
    invalid("skein::Address::unix_path: longer than " + std::to_string(sizeof(un->sun_path) - 1) +
            " bytes: '" + std::string(path) + "'");
  if (!abstract && path.find('\0') != std::string_view::npos)
    invalid("skein::Address::unix_path: path contains a NUL byte");
  un->sun_family = AF_UNIX;
  std::memcpy(un->sun_path, path.data(), path.size());
  if (abstract) un->sun_path[0] = '\0';
  a.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
  return a;
}

Address Address::from_sockaddr(const sockaddr* sa, socklen_t len) {
  if (!sa || len < static_cast<socklen_t>(sizeof(sa_family_t)) ||
      len > static_cast<socklen_t>(sizeof(sockaddr_storage)))
    invalid("skein::Address::from_sockaddr: bad length " + std::to_string(len));
  Address a;
  std::memcpy(&a.storage_, sa, len);
  a.len_ = len;
  return a;
}

std::uint16_t Address::port() const noexcept {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return 0;
}

std::string Address::to_string() const {
  char text[INET6_ADDRSTRLEN] = {};
  switch (family()) {
    case AF_INET:
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, text, sizeof text);
      return std::string(text) + ":" + std::to_string(port());
    case AF_INET6: {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
      inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
      std::string host(text);
      if (v6->sin6_scope_id != 0) {
        // The interface name when it still exists, else the number: both parse back.
        char name[IF_NAMESIZE] = {};
        host += '%';
        host +=
            if_indextoname(v6->sin6_scope_id, name) ? std::string(name) : std::to_string(v6->sin6_scope_id);
      }
      return "[" + host + "]:" + std::to_string(port());
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&storage_);
      const std::size_t offset = offsetof(sockaddr_un, sun_path);
      if (len_ <= offset) return "unix:";  // unnamed (the client end of a connection)
      std::string path(un->sun_path, len_ - offset);
      if (path.front() == '\0') return "unix:@" + path.substr(1);
      return "unix:" + path.substr(0, path.find('\0'));
    }
    default:
      return "";
  }
}

bool operator==(const Address& a, const Address& b) noexcept {
  if (a.family() != b.family()) return false;
  switch (a.family()) {
    case AF_INET: {
      const auto* x = reinterpret_cast<const sockaddr_in*>(&a.storage_);
      const auto* y = reinterpret_cast<const sockaddr_in*>(&b.storage_);
      return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
      // The flow label is per-packet metadata, not part of the endpoint.
      const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.storage_);
      const auto* y = reinterpret_cast<const sockaddr_in6*>(&b.storage_);
      return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
             std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    default:
      return a.len_ == b.len_ && std::memcmp(&a.storage_, &b.storage_, a.len_) == 0;
  }
}

// ---- resolve ------------------------------------------------------------------------------

namespace {

// Owns its inputs and outputs, so a fiber that stops waiting (deadline, cancel) can leave it to
// finish on the pool and be dropped there.
struct ResolveJob final : detail::BlockingJob {
  ResolveJob(std::string_view h, std::uint16_t p) : host(h), port(std::to_string(p)) {}
  void run() noexcept override {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
    addrinfo* list = nullptr;
    status = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
    if (status == EAI_SYSTEM) sys_errno = errno;
    if (status != 0) return;
    try {
      for (const addrinfo* ai = list; ai; ai = ai->ai_next)
        results.push_back(Address::from_sockaddr(ai->ai_addr, ai->ai_addrlen));
    } catch (...) {
      status = EAI_MEMORY;
    }
    freeaddrinfo(list);
  }

  std::string host;
  std::string port;
  int status = 0;
  int sys_errno = 0;
  std::vector<Address> results;
};

}  // namespace

std::vector<Address> resolve(std::string_view host, std::uint16_t port, Deadline deadline) {
  if (host.find('\0') != std::string_view::npos) invalid("skein::resolve: host name contains a NUL byte");
  auto job = std::make_shared<ResolveJob>(host, port);
  detail::run_abandonable(job, *job, deadline.at());
  const std::string what = "skein::resolve: " + std::string(host);
  if (job->status == EAI_SYSTEM) throw std::system_error(job->sys_errno, std::generic_category(), what);
  if (job->status != 0) throw std::system_error(job->status, resolve_category(), what);
  if (job->results.empty()) throw std::system_error(EAI_NONAME, resolve_category(), what);
  return std::move(job->results);
}

}  // namespace skein
