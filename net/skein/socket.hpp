// Fiber-aware sockets: TCP (IPv4, IPv6) and Unix-domain streams and listeners, UDP sockets.
//
// Every call that can block parks only the calling fiber, never the thread, and takes a Deadline
// (a time point or a duration from now; default: none). Outside a fiber the same calls block the
// thread (in poll(2)), so tests and tools can use them from plain threads too.
//
// Errors (docs/errors.md): std::system_error carrying the errno (errc::connection_reset,
// errc::broken_pipe, errc::connection_refused, ...), errc::timed_out when the deadline passes,
// errc::operation_canceled when the fiber is cancelled, net_errc::closed when another fiber closes
// the socket meanwhile. read() returns 0 at end of stream. No call raises SIGPIPE.
//
// A timeout or cancel leaves the socket open and consistent: a read consumed nothing, a write
// may have sent a prefix of its bytes (so a stream whose write_all failed is best closed).
//
// Argument order, everywhere: the data or buffer, then the address (in or out), then the Deadline,
// always last. Buffers are char, std::byte or unsigned char alike.
//
// A socket is waited on through the I/O core of the worker that first waits on it; keep it on
// that worker.
#pragma once

#include <skein/address.hpp>
#include <skein/byte_stream.hpp>
#include <skein/net_error.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <span>
#include <string_view>

namespace skein {

namespace detail {
struct SocketAccess;
}  // namespace detail

// An owned, non-blocking socket descriptor. Move-only; the destructor closes it.
class Socket {
 public:
  Socket() noexcept = default;
  // Adopts `fd` (any socket) and switches it to non-blocking mode. If that fails it throws and
  // `fd` stays the caller's to close.
  explicit Socket(int fd);
  Socket(Socket&& other) noexcept;
  Socket& operator=(Socket&& other) noexcept;
  ~Socket() { close(); }

  int fd() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return is_open(); }

  // Closes the descriptor; fibers parked on it wake with net_errc::closed. Idempotent.
  void close() noexcept;
  // Gives up ownership and returns the descriptor (still non-blocking), or -1.
  int release() noexcept;
  // The address the socket is bound to (getsockname).
  Address local_address() const;

 protected:
  friend struct detail::SocketAccess;
  int fd_ = -1;
  // The worker's I/O core whose slot for fd_ this socket owns (set at its first I/O call on a
  // worker): a core's slot for the same number left behind by an earlier socket is reset rather
  // than trusted. Opaque here.
  void* driver_ = nullptr;
};

enum class Shutdown { read = SHUT_RD, write = SHUT_WR, both = SHUT_RDWR };

// A connected stream: TCP or Unix-domain.
class Stream : public Socket, public ByteReadsWrites<Stream> {
 public:
  using Socket::Socket;

  // Reads at least one and up to buf.size() bytes; returns 0 at end of stream or for an empty buf.
  std::size_t read(std::span<char> buf, Deadline deadline = {});
  // Reads exactly buf.size() bytes; throws net_errc::end_of_stream if the stream ends first.
  void read_exact(std::span<char> buf, Deadline deadline = {});
  // Writes at least one and up to data.size() bytes; returns how many (0 only for empty data).
  std::size_t write(std::string_view data, Deadline deadline = {});
  // Writes all of `data`.
  void write_all(std::string_view data, Deadline deadline = {});
  // Writes all of each buffer in turn, gathering them into as few system calls as it can.
  void write_all(std::span<const std::string_view> parts, Deadline deadline = {});

  // The same calls on byte buffers (<skein/byte_stream.hpp>).
  using ByteReads<Stream>::read;
  using ByteReads<Stream>::read_exact;
  using ByteWrites<Stream>::write;
  using ByteWrites<Stream>::write_all;
  // Ends one or both directions: the peer's reads see end of stream after a write shutdown.
  void shutdown(Shutdown how = Shutdown::write);

  // The address of the other end (getpeername).
  Address peer_address() const;
  // TCP_NODELAY: send small writes at once (on by default for streams skein connects or accepts).
  void set_nodelay(bool on);
};

// Connects a stream to `address` (TCP or Unix-domain). A Unix socket whose backlog is full
// throws errc::resource_unavailable_try_again at once (Linux does not queue such connects).
Stream connect(const Address& address, Deadline deadline = {});
// Resolves `host` (see resolve()) and tries its addresses in order until one accepts; the
// deadline covers the lookup and every attempt (an address that drops SYNs can use it all up,
// and without a deadline each such attempt lasts as long as the kernel retries, about two
// minutes). Throws the last attempt's error if none connects.
Stream connect(std::string_view host, std::uint16_t port, Deadline deadline = {});

struct ListenOptions {
  int backlog = 4096;         // capped by net.core.somaxconn
  bool reuse_address = true;  // SO_REUSEADDR (TCP): rebind at once after a restart
  bool reuse_port = false;    // SO_REUSEPORT (TCP): several listeners share a port
  bool v6_only = false;       // IPV6_V6ONLY for an IPv6 address
};

// A listening stream socket: TCP or Unix-domain.
class Listener : public Socket {
 public:
  using Socket::Socket;

  // Accepts the next connection, as a non-blocking stream with TCP_NODELAY set (TCP); `peer`, if
  // not null, receives the peer's address. EMFILE/ENFILE are thrown (errc::too_many_files_open,
  // errc::too_many_files_open_in_system); the pending connection stays queued.
  Stream accept(Address* peer, Deadline deadline = {});
  // accept(nullptr, deadline).
  Stream accept(Deadline deadline = {}) { return accept(nullptr, deadline); }
  // The 0.2 order; the deadline goes last now, as in every other call.
  [[deprecated("use accept(peer, deadline)")]] Stream accept(Deadline deadline, Address* peer) {
    return accept(peer, deadline);
  }
};

// Binds a listener to `address` (port 0 picks a free one: see local_address()). For a Unix path,
// a stale socket file left by a dead process is not removed: remove it first.
Listener listen(const Address& address, const ListenOptions& options = {});

// A UDP socket.
class UdpSocket : public Socket {
 public:
  using Socket::Socket;

  // An unbound socket for `family` (AF_INET or AF_INET6); the first send binds it.
  static UdpSocket open(int family);
  // A socket bound to `address`.
  static UdpSocket bind(const Address& address);

  // Sends one datagram to `to`; returns its size. Throws errc::message_size if it is too big.
  std::size_t send_to(std::string_view datagram, const Address& to, Deadline deadline = {});
  // Receives one datagram into `buf` (truncated to buf.size()); returns its size in `buf`.
  // `from`, if not null, receives the sender's address.
  std::size_t receive_from(std::span<char> buf, Address* from, Deadline deadline = {});
  // receive_from(buf, nullptr, deadline).
  std::size_t receive_from(std::span<char> buf, Deadline deadline = {}) {
    return receive_from(buf, nullptr, deadline);
  }
  // Sets the default peer (send/receive), and filters datagrams from others.
  void connect(const Address& peer);
  std::size_t send(std::string_view datagram, Deadline deadline = {});
  std::size_t receive(std::span<char> buf, Deadline deadline = {});

  // The same calls on byte buffers.
  std::size_t send_to(std::span<const std::byte> datagram, const Address& to, Deadline deadline = {}) {
    return send_to(detail::as_view(datagram), to, deadline);
  }
  std::size_t send_to(std::span<const unsigned char> datagram, const Address& to, Deadline deadline = {}) {
    return send_to(detail::as_view(datagram), to, deadline);
  }
  std::size_t receive_from(std::span<std::byte> buf, Address* from, Deadline deadline = {}) {
    return receive_from(detail::as_chars(buf), from, deadline);
  }
  std::size_t receive_from(std::span<unsigned char> buf, Address* from, Deadline deadline = {}) {
    return receive_from(detail::as_chars(buf), from, deadline);
  }
  std::size_t receive_from(std::span<std::byte> buf, Deadline deadline = {}) {
    return receive_from(detail::as_chars(buf), nullptr, deadline);
  }
  std::size_t receive_from(std::span<unsigned char> buf, Deadline deadline = {}) {
    return receive_from(detail::as_chars(buf), nullptr, deadline);
  }
  std::size_t send(std::span<const std::byte> datagram, Deadline deadline = {}) {
    return send(detail::as_view(datagram), deadline);
  }
  std::size_t send(std::span<const unsigned char> datagram, Deadline deadline = {}) {
    return send(detail::as_view(datagram), deadline);
  }
  std::size_t receive(std::span<std::byte> buf, Deadline deadline = {}) {
    return receive(detail::as_chars(buf), deadline);
  }
  std::size_t receive(std::span<unsigned char> buf, Deadline deadline = {}) {
    return receive(detail::as_chars(buf), deadline);
  }
};

}  // namespace skein
