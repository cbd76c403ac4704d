// TlsStream: OpenSSL drives the protocol over a BIO of memory that never blocks; the stream moves
// ciphertext between that memory and the socket with Stream's own calls, which park the fiber
// (docs/tls.md, "Why a memory BIO"). OpenSSL never touches the socket, never waits and never sees
// an exception; every wait is the socket's, with its deadline and cancellation.
#include "tls_impl.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>

namespace skein {

namespace {

// Bytes asked of the socket per receive while the peer sends much: a full record (16 KiB and its
// header) and then some.
constexpr std::size_t receive_chunk = 32 * 1024;
// ... and while it sends little (requests, an idle connection, which parks with this much): a
// receive that fills it asks for receive_chunk next, one that gets less than it asks for this again.
constexpr std::size_t small_receive = 2 * 1024;
// Plaintext sealed per write() at most: the ciphertext waiting to be sent stays bounded.
constexpr std::size_t write_chunk = 64 * 1024;

// ---- The BIO: `in` and `out` of the stream's state -------------------------------------------

int bio_write(BIO* bio, const char* data, int len) noexcept {
  auto* s = static_cast<detail::TlsStreamImpl*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  try {
    s->out.insert(s->out.end(), data, data + len);
  } catch (...) {
    return -1;  // out of memory: OpenSSL reports a failed write
  }
  return len;
}

int bio_read(BIO* bio, char* buf, int len) noexcept {
  auto* s = static_cast<detail::TlsStreamImpl*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  const std::size_t have = s->in_end - s->in_begin;
  if (have == 0) {
    if (s->eof) return 0;
    BIO_set_retry_read(bio);  // WANT_READ: the stream fills `in` and calls again
    return -1;
  }
  const std::size_t n = std::min(have, static_cast<std::size_t>(len));
  std::memcpy(buf, s->in.data() + s->in_begin, n);
  s->in_begin += n;
  return static_cast<int>(n);
}

long bio_ctrl(BIO* bio, int cmd, long, void*) noexcept {
  auto* s = static_cast<detail::TlsStreamImpl*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // the stream flushes when it is about to wait or return
    case BIO_CTRL_EOF:
      return s->eof && s->in_begin == s->in_end;
    case BIO_CTRL_PENDING:
      return static_cast<long>(s->in_end - s->in_begin);
    case BIO_CTRL_WPENDING:
      return 0;
    default:
      return 0;
  }
}

int bio_create(BIO* bio) noexcept {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bio_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "skein TLS stream");
    if (m) {
      BIO_meth_set_write(m, bio_write);
      BIO_meth_set_read(m, bio_read);
      BIO_meth_set_ctrl(m, bio_ctrl);
      BIO_meth_set_create(m, bio_create);
    }
    return m;
  }();
  if (!method) detail::throw_config("skein::TlsStream: BIO_meth_new");
  return method;
}

bool is_ip_literal(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

int clamp_int(std::size_t n) noexcept {
  return static_cast<int>(std::min<std::size_t>(n, INT_MAX));
}

detail::TlsStreamImpl& require(const std::unique_ptr<detail::TlsStreamImpl>& impl, const char* what) {
  if (!impl) throw std::system_error(std::make_error_code(std::errc::bad_file_descriptor), what);
  return *impl;
}

}  // namespace

namespace detail {

TlsStreamImpl::TlsStreamImpl(Stream s, std::shared_ptr<TlsContextImpl> c, std::string_view h)
    : stream(std::move(s)), context(std::move(c)), host(h) {
  if (!context->server && context->verify && host.empty())
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "skein::TlsStream: a client verifies the server's name: give its host name "
                            "(or disable_verification())");
  ssl = SSL_new(context->ctx);
  if (!ssl) throw_config("skein::TlsStream: SSL_new");
  SSL_set_app_data(ssl, this);
  BIO* bio = BIO_new(bio_method());
  if (!bio) {
    SSL_free(ssl);
    throw_config("skein::TlsStream: BIO_new");
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl, bio, bio);  // one reference, taken by the SSL
  if (context->server) {
    SSL_set_accept_state(ssl);
    return;
  }
  SSL_set_connect_state(ssl);
  if (host.empty()) return;
  const bool ip = is_ip_literal(host);
  bool ok = true;
  // SNI is for names only (RFC 6066); an address is verified against the certificate's IP SANs.
  if (!ip) ok = SSL_set_tlsext_host_name(ssl, host.c_str()) == 1;
  if (ok && context->verify) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1 : SSL_set1_host(ssl, host.c_str()) == 1;
  }
  if (!ok) {
    SSL_free(ssl);
    ssl = nullptr;
    throw_config(("skein::TlsStream: host name " + host).c_str());
  }
  if (context->cache_sessions)
    if (SSL_SESSION* session = context->take_session(host)) {
      SSL_set_session(ssl, session);
      SSL_SESSION_free(session);
    }
}

TlsStreamImpl::~TlsStreamImpl() {
  // OpenSSL drops the session of a connection freed without close_notify from the server's cache
  // (and marks it unresumable). Ending without it is how most connections end (HTTP closes after
  // the body); only a failure says something about the session, and fail() has dropped it then.
  if (ssl && handshake_done && !failed) SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
  SSL_free(ssl);
}

void TlsStreamImpl::throw_broken(const char* what) const {
  throw std::system_error(make_error_code(tls_errc::broken), what);
}

void TlsStreamImpl::fill(Deadline deadline) {
  const std::size_t want = small_receives ? small_receive : receive_chunk;
  if (in_begin == in_end) {
    in_begin = in_end = 0;
    // Empty: OpenSSL is not reading it. A connection going quiet gives its large buffer back.
    if (small_receives && in.capacity() > small_receive) std::vector<char>().swap(in);
  } else if (in.size() - in_end < want && in_begin > 0) {
    std::memmove(in.data(), in.data() + in_begin, in_end - in_begin);
    in_end -= in_begin;
    in_begin = 0;
  }
  if (in.size() - in_end < want) in.resize(in_end + want);
  const std::size_t room = in.size() - in_end;
  const std::size_t n = stream.read(std::span<char>(in.data() + in_end, room), deadline);
  if (n == 0) {
    eof = true;
    return;
  }
  in_end += n;
  if (n == room)
    small_receives = false;
  else if (n < small_receive)
    small_receives = true;
}

void TlsStreamImpl::flush(Deadline deadline, const char* what) {
  if (flushing) return;  // that fiber sends `out` too before it returns
  if (sent == sending.size() && out.empty()) return;
  if (broken) throw_broken(what);
  flushing = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{flushing};
  for (;;) {
    if (sent == sending.size()) {
      sending.clear();
      sent = 0;
      if (out.empty()) return;
      std::swap(out, sending);
    }
    sent += stream.write(std::string_view(sending.data() + sent, sending.size() - sent), deadline);
  }
}

void TlsStreamImpl::fail(int ssl_error, const char* what) {
  const bool no_certificate = ERR_GET_REASON(ERR_peek_error()) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE;
  std::string reason =
      openssl_reason(ssl_error == SSL_ERROR_SYSCALL ? "the connection ended" : "unknown error");
  tls_errc code;
  if (!handshake_done) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK && (context->verify || context->server)) {
      code = tls_errc::verify_failed;
      reason = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
      if (!verify_failure.empty()) reason += " (" + verify_failure + ")";
    } else if (no_certificate) {
      code = tls_errc::verify_failed;
    } else {
      code = tls_errc::handshake_failed;
      if (eof && in_begin == in_end)
        reason = "the peer closed the connection during the handshake (" + reason + ")";
    }
  } else if (eof && in_begin == in_end) {
    code = tls_errc::truncated;
    reason = "the peer closed the connection without close_notify";
  } else {
    code = tls_errc::protocol_error;
  }
  // The alert OpenSSL wrote tells the peer why, if the socket takes it at once; never wait for it.
  if (!flushing && sent == sending.size() && !out.empty() && stream.is_open())
    (void)::send(stream.fd(), out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  out.clear();
  broken = failed = true;
  throw std::system_error(make_error_code(code), std::string(what) + ": " + reason);
}

template <class Call>
int TlsStreamImpl::drive(Call call, Deadline deadline, const char* what) {
  for (;;) {
    ERR_clear_error();
    const int r = call();
    if (r > 0) return r;
    const int e = SSL_get_error(ssl, r);
    switch (e) {
      case SSL_ERROR_WANT_READ:
        if (eof && in_begin == in_end) fail(SSL_ERROR_SYSCALL, what);  // nothing more will come
        // What OpenSSL wrote first (a handshake flight) may be what the peer waits for.
        flush(deadline, what);
        fill(deadline);
        continue;
      case SSL_ERROR_WANT_WRITE:  // the BIO takes everything; kept for completeness
        flush(deadline, what);
        continue;
      case SSL_ERROR_ZERO_RETURN:
        return 0;
      default:
        fail(e, what);
    }
  }
}

void TlsStreamImpl::handshake(Deadline deadline) {
  if (handshake_done) return;
  constexpr const char* what = "skein::TlsStream::handshake";
  if (broken) throw_broken(what);
  try {
    // 0: the peer's close_notify came before the handshake ended, which is no session at all.
    if (drive([this] { return SSL_do_handshake(ssl); }, deadline, what) == 0)
      throw std::system_error(make_error_code(tls_errc::handshake_failed),
                              std::string(what) + ": the peer closed the session during the handshake");
    flush(deadline, what);  // the last flight (a client's Finished, a server's tickets)
  } catch (...) {
    broken = failed = true;
    throw;
  }
  handshake_done = true;
}

std::size_t TlsStreamImpl::read(std::span<char> buf, Deadline deadline) {
  if (buf.empty()) return 0;
  handshake(deadline);
  if (failed) throw_broken("skein::TlsStream::read");
  // Bytes OpenSSL consumed are returned even if something to send is pending: that waits for the
  // next call that sends or waits (drive() flushes before it parks).
  const int n = drive([&] { return SSL_read(ssl, buf.data(), clamp_int(buf.size())); }, deadline,
                      "skein::TlsStream::read");
  return static_cast<std::size_t>(n);
}

std::size_t TlsStreamImpl::write(std::string_view data, Deadline deadline) {
  constexpr const char* what = "skein::TlsStream::write";
  if (data.empty()) return 0;
  handshake(deadline);
  if (broken) throw_broken(what);
  if (shutdown_sent)
    throw std::system_error(std::make_error_code(std::errc::broken_pipe),
                            "skein::TlsStream::write after shutdown");
  flush(deadline, what);  // records of earlier calls first; nothing of `data` is sealed yet
  const std::size_t len = std::min(data.size(), write_chunk);
  const int n = drive([&] { return SSL_write(ssl, data.data(), static_cast<int>(len)); }, deadline, what);
  if (n == 0) {  // the peer's close_notify ended a handshake SSL_write had to finish: nothing sent
    broken = true;
    throw std::system_error(std::make_error_code(std::errc::broken_pipe),
                            std::string(what) + ": the peer closed the TLS session");
  }
  try {
    flush(deadline, what);
  } catch (...) {
    // Sealed records were cut short or not sent: what follows would not decrypt at the peer.
    broken = true;
    throw;
  }
  return static_cast<std::size_t>(n);
}

void TlsStreamImpl::shutdown(Deadline deadline) {
  constexpr const char* what = "skein::TlsStream::shutdown";
  if (broken) throw_broken(what);
  if (!handshake_done) handshake(deadline);
  if (!shutdown_sent) {
    ERR_clear_error();
    if (SSL_shutdown(ssl) < 0) fail(SSL_get_error(ssl, -1), what);
    shutdown_sent = true;
  }
  try {
    flush(deadline, what);
  } catch (...) {
    broken = true;
    throw;
  }
}

}  // namespace detail

// ---- TlsStream ------------------------------------------------------------------------------

TlsStream::TlsStream() noexcept = default;
TlsStream::TlsStream(TlsStream&&) noexcept = default;
TlsStream& TlsStream::operator=(TlsStream&&) noexcept = default;
TlsStream::~TlsStream() = default;

TlsStream::TlsStream(Stream stream, const TlsContext& context, std::string_view host)
    : impl_(std::make_unique<detail::TlsStreamImpl>(std::move(stream), context.impl_, host)) {}

void TlsStream::handshake(Deadline deadline) {
  require(impl_, "skein::TlsStream::handshake").handshake(deadline);
}

std::size_t TlsStream::read(std::span<char> buf, Deadline deadline) {
  return require(impl_, "skein::TlsStream::read").read(buf, deadline);
}

void TlsStream::read_exact(std::span<char> buf, Deadline deadline) {
  while (!buf.empty()) {
    const std::size_t n = read(buf, deadline);
    if (n == 0)
      throw std::system_error(make_error_code(net_errc::end_of_stream), "skein::TlsStream::read_exact");
    buf = buf.subspan(n);
  }
}

std::size_t TlsStream::write(std::string_view data, Deadline deadline) {
  return require(impl_, "skein::TlsStream::write").write(data, deadline);
}

void TlsStream::write_all(std::string_view data, Deadline deadline) {
  detail::TlsStreamImpl& s = require(impl_, "skein::TlsStream::write_all");
  while (!data.empty()) data.remove_prefix(s.write(data, deadline));
}

void TlsStream::write_all(std::span<const std::string_view> parts, Deadline deadline) {
  // Small parts (a header and its body) go out in one record rather than one each.
  std::size_t total = 0;
  for (std::string_view p : parts) total += p.size();
  if (parts.size() > 1 && total <= 16 * 1024) {
    std::string joined;
    joined.reserve(total);
    for (std::string_view p : parts) joined.append(p);
    write_all(std::string_view(joined), deadline);
    return;
  }
  for (std::string_view p : parts) write_all(p, deadline);
}

void TlsStream::shutdown(Deadline deadline) {
  require(impl_, "skein::TlsStream::shutdown").shutdown(deadline);
}

void TlsStream::close() noexcept {
  if (impl_) impl_->stream.close();
}

std::string TlsStream::alpn_protocol() const {
  if (!impl_) return {};
  const unsigned char* p = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(impl_->ssl, &p, &len);
  return p ? std::string(reinterpret_cast<const char*>(p), len) : std::string();
}

std::string TlsStream::version() const {
  return impl_ ? SSL_get_version(impl_->ssl) : "";
}

std::string TlsStream::cipher() const {
  if (!impl_) return {};
  const char* name = SSL_get_cipher_name(impl_->ssl);
  return name ? name : "";
}

bool TlsStream::session_reused() const noexcept {
  return impl_ && SSL_session_reused(impl_->ssl) == 1;
}

std::string TlsStream::server_name() const {
  if (!impl_) return {};
  const char* name = SSL_get_servername(impl_->ssl, TLSEXT_NAMETYPE_host_name);
  return name ? name : "";
}

std::string TlsStream::peer_subject() const {
  if (!impl_) return {};
  X509* cert = SSL_get1_peer_certificate(impl_->ssl);
  if (!cert) return {};
  char name[512];
  X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof name);
  X509_free(cert);
  return name;
}

Stream& TlsStream::stream() noexcept {
  return impl_->stream;
}

ssl_st* TlsStream::native_handle() const noexcept {
  return impl_ ? impl_->ssl : nullptr;
}

TlsStream tls_connect(std::string_view host, std::uint16_t port, const TlsContext& context,
                      Deadline deadline) {
  TlsStream s(connect(host, port, deadline), context, host);
  s.handshake(deadline);
  return s;
}

}  // namespace skein
