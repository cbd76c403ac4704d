// TLS over skein streams, on OpenSSL 3: contexts (client and server roles) and TlsStream, a
// Stream-shaped encrypted stream whose calls park only the calling fiber (docs/tls.md).
//
//   skein::TlsContext ctx = skein::TlsContext::client();         // system CAs, verification on
//   skein::TlsStream s = skein::tls_connect("example.org", 443, ctx, 10s);
//   s.write_all("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n");
//
// Errors (docs/errors.md, "tls/"): std::system_error. The stream's own failures carry a
// skein::tls_errc in the "skein.tls" category -- handshake_failed, verify_failed (the message has
// OpenSSL's reason and the certificate's subject), protocol_error, truncated (the peer closed
// without close_notify), broken (an earlier write was interrupted mid-record) -- and the message
// OpenSSL's reason. The socket's errors pass through unchanged (errc::connection_reset, timed_out,
// operation_canceled, net_errc::closed...). read() returns 0 after the peer's close_notify.
// Loading certificates, keys or CAs that OpenSSL refuses throws tls_errc::bad_config; misuse
// (no host name with verification on) throws errc::invalid_argument.
//
// Deadlines and cancellation: every call that can wait takes a Deadline and is a cancellation
// point. A read that is interrupted consumed nothing. A write that is interrupted once OpenSSL has
// sealed its bytes into records leaves the stream broken for sending: later writes and shutdown
// throw tls_errc::broken and nothing more is sent, so the peer never sees a corrupt record (a
// record cut short reads as truncation there). An interrupted handshake leaves the stream broken.
//
// Like a Stream, a TlsStream may be used by one reading and one writing fiber at once (after the
// handshake), on one worker at a time; it can move to another worker between calls.
#pragma once

#include <skein/byte_stream.hpp>
#include <skein/socket.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

// OpenSSL's types, for native_handle() (include <openssl/ssl.h> to use them).
struct ssl_ctx_st;
struct ssl_st;

namespace skein {

enum class tls_errc {
  handshake_failed = 1,  // the handshake did not complete: no common version or cipher, a peer's
                         // alert, a peer that is not speaking TLS, or one that hung up meanwhile
  verify_failed,         // the peer's certificate failed verification (untrusted, expired, wrong host)
  protocol_error,        // a malformed or unexpected record after the handshake, or a peer's fatal alert
  truncated,             // the peer closed the connection without close_notify (data may be missing)
  broken,                // an earlier call was interrupted mid-record: nothing more can be sent
  bad_config,            // a certificate, key or CA that OpenSSL could not load
};

// The category of tls_errc values ("skein.tls").
const std::error_category& tls_category() noexcept;

inline std::error_code make_error_code(tls_errc e) noexcept {
  return {static_cast<int>(e), tls_category()};
}

enum class TlsVersion { tls1_2, tls1_3 };

namespace detail {
struct TlsContextImpl;
struct TlsStreamImpl;
}  // namespace detail

// An OpenSSL SSL_CTX with skein's defaults: a client or a server role, shared by every stream made
// with it (copies share it too). Configure it before its first stream; it may then be used from
// every worker at once.
class TlsContext {
 public:
  // A client: the system's trust store, peer certificate and host name verification on, TLS 1.2
  // at least, renegotiation refused, sessions cached per host name for resumption.
  static TlsContext client();
  // A server: no certificate yet (use_certificate_chain*), clients not asked for certificates,
  // TLS 1.2 at least, renegotiation refused, session tickets and a session cache on.
  static TlsContext server();

  // The certificate chain (PEM, leaf first) this side presents, from a file or from memory.
  TlsContext& use_certificate_chain_file(const std::string& path);
  TlsContext& use_certificate_chain(std::string_view pem);
  // Its private key (PEM), from a file or from memory; must match the leaf certificate.
  TlsContext& use_private_key_file(const std::string& path);
  TlsContext& use_private_key(std::string_view pem);

  // Trusts the CAs in a PEM file, in a directory prepared with `openssl rehash`, or in memory,
  // in addition to those trusted already.
  TlsContext& trust_ca_file(const std::string& path);
  TlsContext& trust_ca_directory(const std::string& path);
  TlsContext& trust_ca(std::string_view pem);
  // Trusts the system's CAs (a client's default).
  TlsContext& trust_system_cas();
  // Client: trusts only what trust_ca*() adds from now on (forgets the system's CAs).
  TlsContext& clear_trust();

  // Client: accepts any certificate and any host name. Explicit, and only for tests and tools.
  TlsContext& disable_verification();
  // Server: asks clients for a certificate and refuses those without a valid one.
  TlsContext& require_client_certificate();

  // The oldest and newest protocol versions allowed (default: TLS 1.2 to TLS 1.3).
  TlsContext& set_min_version(TlsVersion version);
  TlsContext& set_max_version(TlsVersion version);
  // OpenSSL cipher strings: TLS 1.2 suites (SSL_CTX_set_cipher_list) and TLS 1.3 suites
  // (SSL_CTX_set_ciphersuites); empty leaves that one alone. Throws bad_config if none matches.
  TlsContext& set_ciphers(const std::string& tls12, const std::string& tls13 = {});

  // ALPN protocols ("h2", "http/1.1"): a client offers them in this order; a server picks the
  // first of them the client offered, and completes without ALPN if there is none in common.
  TlsContext& set_alpn(std::vector<std::string> protocols);

  // Server: called with the client's SNI name (when it sent one) during each handshake; the
  // context it returns serves that connection's certificate instead of this one's (its certificate
  // and key only: everything else stays this context's). nullopt keeps this one. Called on the
  // handshaking fiber's worker: it must be safe to call from every worker at once.
  TlsContext& on_server_name(std::function<std::optional<TlsContext>(std::string_view name)> pick);

  // Client: whether sessions are kept, per host name, to resume later handshakes with (default on).
  TlsContext& set_session_cache(bool on);

  bool is_server() const noexcept;
  // The SSL_CTX, for what this class does not offer (configure it before its first stream).
  ssl_ctx_st* native_handle() const noexcept;

 private:
  friend class TlsStream;
  explicit TlsContext(std::shared_ptr<detail::TlsContextImpl> impl) noexcept : impl_(std::move(impl)) {}
  std::shared_ptr<detail::TlsContextImpl> impl_;
};

// TLS over a connected Stream, in the context's role. Move-only; the destructor closes the socket
// without close_notify (call shutdown() first for an orderly end).
class TlsStream : public ByteReadsWrites<TlsStream> {
 public:
  TlsStream() noexcept;
  // Takes over `stream`. A client stream sends `host` as SNI (unless it is an IP address) and
  // verifies the certificate's name against it; a server stream ignores `host`. No I/O yet.
  TlsStream(Stream stream, const TlsContext& context, std::string_view host = {});
  TlsStream(TlsStream&& other) noexcept;
  TlsStream& operator=(TlsStream&& other) noexcept;
  ~TlsStream();

  explicit operator bool() const noexcept { return impl_ != nullptr; }

  // Runs the handshake (client or server by the context); the first read or write runs it too if
  // this was not called. Throws handshake_failed, verify_failed, or the socket's error.
  void handshake(Deadline deadline = {});

  // Reads at least one and up to buf.size() bytes of plaintext; 0 after the peer's close_notify or
  // for an empty buf. Throws truncated if the connection ends without one.
  std::size_t read(std::span<char> buf, Deadline deadline = {});
  // Reads exactly buf.size() bytes; throws net_errc::end_of_stream after a close_notify first.
  void read_exact(std::span<char> buf, Deadline deadline = {});
  // Writes at least one and up to data.size() bytes (at most 64 KiB at a time); returns how many.
  std::size_t write(std::string_view data, Deadline deadline = {});
  // Writes all of `data`.
  void write_all(std::string_view data, Deadline deadline = {});
  // Writes all of each buffer in turn.
  void write_all(std::span<const std::string_view> parts, Deadline deadline = {});
  // Sends close_notify: the peer's reads see the end of the stream. Reading goes on; a write
  // after it throws errc::broken_pipe, as on a Stream.
  void shutdown(Deadline deadline = {});
  // Closes the socket without close_notify. Idempotent.
  void close() noexcept;

  // The same calls on byte buffers (<skein/byte_stream.hpp>).
  using ByteReads<TlsStream>::read;
  using ByteReads<TlsStream>::read_exact;
  using ByteWrites<TlsStream>::write;
  using ByteWrites<TlsStream>::write_all;

  // After the handshake: the protocol ALPN chose ("" if none), the negotiated version ("TLSv1.3"),
  // the cipher suite, whether a cached session was resumed, the SNI name a server was asked for
  // ("" if none), and the peer certificate's subject ("" if it sent none).
  std::string alpn_protocol() const;
  std::string version() const;
  std::string cipher() const;
  bool session_reused() const noexcept;
  std::string server_name() const;
  std::string peer_subject() const;

  // The socket underneath, of a stream that is not empty (for its addresses and options; reading
  // or writing it directly breaks the TLS stream).
  Stream& stream() noexcept;
  // The SSL object, for what this class does not offer.
  ssl_st* native_handle() const noexcept;

 private:
  std::unique_ptr<detail::TlsStreamImpl> impl_;
};

// Connects to `host`:`port` (skein::connect) and runs a client handshake for `host`; the deadline
// covers both. Go's tls.Dial, asyncio's open_connection(ssl=...).
TlsStream tls_connect(std::string_view host, std::uint16_t port, const TlsContext& context,
                      Deadline deadline = {});

}  // namespace skein

template <>
struct std::is_error_code_enum<skein::tls_errc> : std::true_type {};
