// The sockets' system calls, each made through the I/O core's one retry loop (IoCore::run, in
// io_core.hpp; stream transfers and accepts through IoCore::transfer, which a completion backend
// may perform itself), whose error codes become std::system_error here, at the public edge.
#include "io_core.hpp"

#include <skein/socket.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <system_error>
#include <utility>

namespace skein {

using detail::Direction;
using detail::IoCore;
using detail::IoHandle;
using detail::IoTransfer;

namespace detail {
// Adopts descriptors that are known to be non-blocking already, without the fcntl calls.
struct SocketAccess {
  static void*& core(Socket& s) noexcept { return s.driver_; }
  template <class S>
  static S adopt(int fd) noexcept {
    S s;
    static_cast<Socket&>(s).fd_ = fd;
    // A slot left registered by a descriptor closed on another thread (or behind skein's back)
    // must not be mistaken for this one's: a fresh number starts from a clean slot.
    if (IoCore* c = IoCore::installed()) c->forget(fd);
    return s;
  }
};
}  // namespace detail

namespace {

[[noreturn]] void throw_errno(int err, const char* what) {
  throw std::system_error(err, std::generic_category(), what);
}

// The exception for an error the core reported for `call` (minus it, as run() returns it).
[[noreturn]] void throw_io(ssize_t result, Direction dir, const char* call) {
  const int err = static_cast<int>(-result);
  throw std::system_error(detail::io_error_code(err), detail::io_error_message(err, dir, call));
}

void require_open(int fd, const char* what) {
  if (fd < 0) throw std::system_error(std::make_error_code(std::errc::bad_file_descriptor), what);
}

// The handle for one call on `s`: on this worker's core inside a fiber (the first time a socket
// is used on a worker, that worker's slot for its number may still hold an earlier socket's
// registration, one closed on another worker whose core could not be told: it is reset, not
// trusted), thread-side outside.
IoHandle io_handle(Socket& s) noexcept {
  return IoCore::handle(IoCore::current(), s.fd(), detail::SocketAccess::core(s));
}

void set_nodelay(int fd) noexcept {
  const int one = 1;
  // Best effort: only fails for a socket that is not TCP, which callers have checked.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool is_ip(int family) noexcept {
  return family == AF_INET || family == AF_INET6;
}

int open_socket(int family, int type) {
  const int fd = ::socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_errno(errno, "skein: socket");
  return fd;
}

}  // namespace

// ---- Socket -------------------------------------------------------------------------------

Socket::Socket(int fd) : fd_(fd) {
  if (fd < 0) throw std::system_error(std::make_error_code(std::errc::bad_file_descriptor), "skein::Socket");
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)) {
    fd_ = -1;
    throw_errno(errno, "skein::Socket: fcntl(O_NONBLOCK)");
  }
  // A descriptor from elsewhere may reuse the number of one the core still remembers (closed
  // behind skein's back): start from a clean slot.
  if (IoCore* c = IoCore::installed()) c->forget(fd);
}

Socket::Socket(Socket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), driver_(std::exchange(other.driver_, nullptr)) {}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    driver_ = std::exchange(other.driver_, nullptr);
  }
  return *this;
}

// Only this thread's core can be told (another worker's is not ours to touch): a registration
// left there is reset when its next socket with this number is first used on it.
void Socket::close() noexcept {
  if (fd_ < 0) return;
  if (IoCore* c = IoCore::installed()) c->forget(fd_);
  driver_ = nullptr;
  // Linux releases the descriptor even when close() reports EINTR or EIO: never retry.
  ::close(std::exchange(fd_, -1));
}

int Socket::release() noexcept {
  if (fd_ >= 0)
    if (IoCore* c = IoCore::installed()) c->forget(fd_);
  driver_ = nullptr;
  return std::exchange(fd_, -1);
}

Address Socket::local_address() const {
  require_open(fd_, "skein::Socket::local_address");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) < 0) throw_errno(errno, "skein: getsockname");
  return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

// ---- Stream -------------------------------------------------------------------------------

namespace {
// The most one call moves: Linux's own cap on a read or write (MAX_RW_COUNT, INT_MAX rounded down
// to a page). An io_uring operation carries its length in 32 bits, so a 4 GiB buffer would reach
// the kernel as 0 bytes (a read reporting end of stream, a write sending nothing); capped here,
// the direct call and the operation ask for the same length.
constexpr std::size_t max_transfer = 0x7ffff000;
}  // namespace

std::size_t Stream::read(std::span<char> buf, Deadline deadline) {
  require_open(fd_, "skein::Stream::read");
  if (buf.empty()) return 0;
  buf = buf.first(std::min(buf.size(), max_transfer));
  IoHandle h = io_handle(*this);
  detail::IoOp op{detail::IoOp::recv};
  op.buf = buf.data();
  op.len = buf.size();
  const ssize_t n = IoCore::transfer(h, Direction::read, deadline.at(), IoTransfer::stream(buf.size()), op,
                                     [&] { return ::recv(fd_, buf.data(), buf.size(), 0); });
  if (n < 0) throw_io(n, Direction::read, "skein::Stream::read");
  return static_cast<std::size_t>(n);
}

void Stream::read_exact(std::span<char> buf, Deadline deadline) {
  while (!buf.empty()) {
    const std::size_t n = read(buf, deadline);
    if (n == 0)
      throw std::system_error(make_error_code(net_errc::end_of_stream), "skein::Stream::read_exact");
    buf = buf.subspan(n);
  }
}

std::size_t Stream::write(std::string_view data, Deadline deadline) {
  require_open(fd_, "skein::Stream::write");
  if (data.empty()) return 0;
  data = data.substr(0, max_transfer);
  IoHandle h = io_handle(*this);
  // MSG_NOSIGNAL: a closed peer is EPIPE for this call, not SIGPIPE for the process.
  detail::IoOp op{detail::IoOp::send, MSG_NOSIGNAL};
  op.buf = const_cast<char*>(data.data());
  op.len = data.size();
  const ssize_t n = IoCore::transfer(h, Direction::write, deadline.at(), IoTransfer::stream(data.size()), op,
                                     [&] { return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL); });
  if (n < 0) throw_io(n, Direction::write, "skein::Stream::write");
  return static_cast<std::size_t>(n);
}

void Stream::write_all(std::string_view data, Deadline deadline) {
  while (!data.empty()) data.remove_prefix(write(data, deadline));
}

void Stream::write_all(std::span<const std::string_view> parts, Deadline deadline) {
  require_open(fd_, "skein::Stream::write_all");
  constexpr std::size_t max_iov = 64;
  std::size_t first = 0;   // the first part not fully written
  std::size_t offset = 0;  // bytes of it already written
  IoHandle h = io_handle(*this);
  while (first < parts.size()) {
    iovec iov[max_iov];
    std::size_t count = 0, total = 0;
    for (std::size_t i = first; i < parts.size() && count < max_iov; ++i) {
      const std::size_t skip = i == first ? offset : 0;
      if (parts[i].size() == skip) continue;
      iov[count++] = {const_cast<char*>(parts[i].data()) + skip, parts[i].size() - skip};
      total += parts[i].size() - skip;
    }
    if (count == 0) break;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    detail::IoOp op{detail::IoOp::sendmsg, MSG_NOSIGNAL};
    op.msg = &msg;
    const ssize_t n = IoCore::transfer(h, Direction::write, deadline.at(), IoTransfer::stream(total), op,
                                       [&] { return ::sendmsg(fd_, &msg, MSG_NOSIGNAL); });
    if (n < 0) throw_io(n, Direction::write, "skein::Stream::write_all");
    auto left = static_cast<std::size_t>(n);
    while (left > 0) {
      const std::size_t here = std::min(left, parts[first].size() - offset);
      offset += here;
      left -= here;
      if (offset == parts[first].size()) {
        ++first;
        offset = 0;
      }
    }
  }
}

void Stream::shutdown(Shutdown how) {
  require_open(fd_, "skein::Stream::shutdown");
  if (::shutdown(fd_, static_cast<int>(how)) < 0) throw_errno(errno, "skein::Stream::shutdown");
}

Address Stream::peer_address() const {
  require_open(fd_, "skein::Stream::peer_address");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd_, reinterpret_cast<sockaddr*>(&ss), &len) < 0) throw_errno(errno, "skein: getpeername");
  return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

void Stream::set_nodelay(bool on) {
  require_open(fd_, "skein::Stream::set_nodelay");
  const int value = on ? 1 : 0;
  if (setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &value, sizeof value) < 0)
    throw_errno(errno, "skein::Stream::set_nodelay");
}

Stream connect(const Address& address, Deadline deadline) {
  if (address.empty())
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein::connect: empty address");
  auto s = detail::SocketAccess::adopt<Stream>(open_socket(address.family(), SOCK_STREAM));
  if (::connect(s.fd(), address.data(), address.size()) == 0) {
    if (is_ip(address.family())) set_nodelay(s.fd());
    return s;
  }
  if (errno == EAGAIN && address.family() == AF_UNIX)
    throw_errno(EAGAIN, "skein::connect: the Unix socket's backlog is full");
  if (errno != EINPROGRESS) throw_errno(errno, "skein::connect");
  // In progress: the fd turns writable when the handshake ends, either way.
  IoHandle h = io_handle(s);
  if (const int w = IoCore::wait(h, Direction::write, deadline.at(),
                                 IoTransfer::message().reason(skein::debug::WaitReason::connect)))
    throw_io(-w, Direction::write, "skein::connect");
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    throw_errno(errno, "skein::connect: getsockopt");
  if (err != 0) throw_errno(err, "skein::connect");
  if (is_ip(address.family())) set_nodelay(s.fd());
  return s;
}

Stream connect(std::string_view host, std::uint16_t port, Deadline deadline) {
  std::system_error last(std::make_error_code(std::errc::host_unreachable), "skein::connect");
  for (const Address& a : resolve(host, port, deadline)) {
    try {
      return connect(a, deadline);
    } catch (const std::system_error& e) {
      // Out of time, or told to stop: trying the next address would not help.
      if (e.code() == std::errc::timed_out || e.code() == std::errc::operation_canceled) throw;
      last = e;
    }
  }
  throw last;
}

// ---- Listener -----------------------------------------------------------------------------

namespace {

// An error accept reports for one connection, not for the listener: a connection that died in the
// queue, or a network error Linux passes on from the new socket (accept(2)). Take the next one.
bool transient_accept_error(int err) noexcept {
  switch (err) {
    case ECONNABORTED:
    case EPROTO:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case ENETDOWN:
    case ENETUNREACH:
    case EPERM:  // a firewall rule refused it
      return true;
    default:
      return false;
  }
}

}  // namespace

Stream Listener::accept(Address* peer, Deadline deadline) {
  require_open(fd_, "skein::Listener::accept");
  IoHandle h = io_handle(*this);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  detail::IoOp op{detail::IoOp::accept, SOCK_NONBLOCK | SOCK_CLOEXEC};
  op.addr = reinterpret_cast<sockaddr*>(&ss);
  op.addrlen = &len;
  ssize_t fd;
  do {
    len = sizeof ss;
    fd = IoCore::transfer(
        h, Direction::read, deadline.at(), IoTransfer::message().reason(skein::debug::WaitReason::accept), op,
        [&]() -> ssize_t {
          len = sizeof ss;
          return ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        });
  } while (fd < 0 && transient_accept_error(static_cast<int>(-fd)));
  if (fd < 0) throw_io(fd, Direction::read, "skein::Listener::accept");
  auto s = detail::SocketAccess::adopt<Stream>(static_cast<int>(fd));
  if (is_ip(ss.ss_family)) set_nodelay(static_cast<int>(fd));
  if (peer) {
    // A multishot accept (io_uring) reports only the family: the address is asked for.
    if (len <= sizeof(sa_family_t)) {
      len = sizeof ss;
      if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), &len) < 0)
        len = sizeof(sa_family_t);  // the peer is gone already: its family is what is known
    }
    *peer = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  }
  return s;
}

Listener listen(const Address& address, const ListenOptions& options) {
  if (address.empty())
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein::listen: empty address");
  auto l = detail::SocketAccess::adopt<Listener>(open_socket(address.family(), SOCK_STREAM));
  const int one = 1;
  if (is_ip(address.family())) {
    if (options.reuse_address && setsockopt(l.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
      throw_errno(errno, "skein::listen: SO_REUSEADDR");
    if (options.reuse_port && setsockopt(l.fd(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
      throw_errno(errno, "skein::listen: SO_REUSEPORT");
    if (address.family() == AF_INET6) {
      const int v6_only = options.v6_only ? 1 : 0;
      if (setsockopt(l.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, sizeof v6_only) < 0)
        throw_errno(errno, "skein::listen: IPV6_V6ONLY");
    }
  }
  if (::bind(l.fd(), address.data(), address.size()) < 0)
    throw std::system_error(errno, std::generic_category(), "skein::listen: bind " + address.to_string());
  if (::listen(l.fd(), options.backlog) < 0) throw_errno(errno, "skein::listen");
  return l;
}

// ---- UdpSocket ----------------------------------------------------------------------------

UdpSocket UdpSocket::open(int family) {
  if (!is_ip(family))
    throw std::system_error(std::make_error_code(std::errc::address_family_not_supported),
                            "skein::UdpSocket::open");
  return detail::SocketAccess::adopt<UdpSocket>(open_socket(family, SOCK_DGRAM));
}

UdpSocket UdpSocket::bind(const Address& address) {
  UdpSocket s = open(address.family());
  if (::bind(s.fd(), address.data(), address.size()) < 0)
    throw std::system_error(errno, std::generic_category(), "skein::UdpSocket::bind " + address.to_string());
  return s;
}

namespace {

// Datagram calls: a short datagram says nothing about what else is queued, so only EAGAIN
// clears readiness.
template <class Call>
std::size_t datagram_io(Socket& s, Direction dir, Deadline deadline, const char* what, Call call) {
  require_open(s.fd(), what);
  IoHandle h = io_handle(s);
  const ssize_t n = IoCore::run(h, dir, deadline.at(), IoTransfer::message(), call);
  if (n < 0) throw_io(n, dir, what);
  return static_cast<std::size_t>(n);
}

}  // namespace

std::size_t UdpSocket::send_to(std::string_view datagram, const Address& to, Deadline deadline) {
  return datagram_io(*this, Direction::write, deadline, "skein::UdpSocket::send_to", [&] {
    return ::sendto(fd_, datagram.data(), datagram.size(), MSG_NOSIGNAL, to.data(), to.size());
  });
}

std::size_t UdpSocket::receive_from(std::span<char> buf, Address* from, Deadline deadline) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  const std::size_t n = datagram_io(*this, Direction::read, deadline, "skein::UdpSocket::receive_from", [&] {
    len = sizeof ss;
    return ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&ss), &len);
  });
  if (from) *from = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  return n;
}

void UdpSocket::connect(const Address& peer) {
  require_open(fd_, "skein::UdpSocket::connect");
  if (::connect(fd_, peer.data(), peer.size()) < 0)
    throw std::system_error(errno, std::generic_category(), "skein::UdpSocket::connect " + peer.to_string());
}

std::size_t UdpSocket::send(std::string_view datagram, Deadline deadline) {
  return datagram_io(*this, Direction::write, deadline, "skein::UdpSocket::send",
                     [&] { return ::send(fd_, datagram.data(), datagram.size(), MSG_NOSIGNAL); });
}

std::size_t UdpSocket::receive(std::span<char> buf, Deadline deadline) {
  return datagram_io(*this, Direction::read, deadline, "skein::UdpSocket::receive",
                     [&] { return ::recv(fd_, buf.data(), buf.size(), 0); });
}

}  // namespace skein
