// The state behind TlsContext and TlsStream (tls/skein/tls.hpp), shared by the two files.
#pragma once

#include <skein/socket.hpp>
#include <skein/tls.hpp>

#include <openssl/ssl.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace skein::detail {

struct TlsContextImpl {
  SSL_CTX* ctx = nullptr;
  bool server = false;
  bool verify = true;  // client: verify the peer's certificate and name
  // ALPN protocols in wire format (length-prefixed), for both roles.
  std::vector<unsigned char> alpn;
  std::function<std::optional<TlsContext>(std::string_view)> pick;  // server: SNI
  bool cache_sessions = true;                                       // client
  // Client sessions by host name, each holding one reference (SSL_SESSION_free on replacement).
  std::mutex sessions_mutex;
  std::unordered_map<std::string, SSL_SESSION*> sessions;

  ~TlsContextImpl();
  // Client: a copy of the cached session for `host` (the caller frees it), or nullptr.
  SSL_SESSION* take_session(const std::string& host);
  // Client: keeps `session` (whose reference it takes over) for `host`.
  void keep_session(const std::string& host, SSL_SESSION* session);
};

// The reason OpenSSL's error queue gives for the last failure (its first entry: the cause), or
// `fallback` if it is empty. Clears the queue.
std::string openssl_reason(const char* fallback = "unknown OpenSSL error");

// Throws tls_errc::bad_config with `what` and OpenSSL's reason.
[[noreturn]] void throw_config(const char* what);

// The verify callback every context installs: records the first failure's certificate subject
// and depth on the stream (TlsStreamImpl::verify_failure) for the error message.
int record_verify_failure(int ok, X509_STORE_CTX* store) noexcept;

struct TlsStreamImpl {
  Stream stream;
  std::shared_ptr<TlsContextImpl> context;
  SSL* ssl = nullptr;
  std::string host;            // client: SNI, verification name, session key
  std::string verify_failure;  // "subject ..., depth N" of the first certificate that failed

  // Ciphertext received, not yet consumed by OpenSSL: in[in_begin, in_end). Only fill() moves or
  // grows the buffer, and only one fiber fills at a time, so OpenSSL may read from it meanwhile.
  std::vector<char> in;
  std::size_t in_begin = 0;
  std::size_t in_end = 0;
  bool eof = false;  // the socket reported end of stream
  // The last receive was short: the next asks for a little (an idle stream holds little).
  bool small_receives = true;
  // Ciphertext OpenSSL produced: it appends to `out`; flush() swaps it into `sending` and sends
  // that, so a send in flight (io_uring's on this very memory) never sees its buffer move.
  std::vector<char> out;
  std::vector<char> sending;
  std::size_t sent = 0;  // bytes of `sending` sent
  bool flushing = false;

  bool handshake_done = false;
  bool shutdown_sent = false;
  // Nothing more may be sent: a failure, or a call interrupted after OpenSSL sealed records.
  bool broken = false;
  // Nothing more may be read either: the handshake did not complete, or OpenSSL failed for good.
  bool failed = false;

  TlsStreamImpl(Stream s, std::shared_ptr<TlsContextImpl> c, std::string_view h);
  ~TlsStreamImpl();

  void handshake(Deadline deadline);
  std::size_t read(std::span<char> buf, Deadline deadline);
  std::size_t write(std::string_view data, Deadline deadline);
  void shutdown(Deadline deadline);

  // Runs `call` (SSL_do_handshake, SSL_read, ...) until it succeeds (its result), the peer's
  // close_notify ends it (0), or it fails for good (throws the mapped error, marks the stream
  // broken). Parks only in flush() and fill().
  template <class Call>
  int drive(Call call, Deadline deadline, const char* what);
  // Sends everything OpenSSL produced. Another fiber flushing already: it sends this too.
  void flush(Deadline deadline, const char* what);
  // Receives more ciphertext (or the end of stream) into `in`.
  void fill(Deadline deadline);
  [[noreturn]] void fail(int ssl_error, const char* what);
  [[noreturn]] void throw_broken(const char* what) const;
};

}  // namespace skein::detail
