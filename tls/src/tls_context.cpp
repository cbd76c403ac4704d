#include "tls_impl.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <climits>
#include <string>
#include <system_error>
#include <utility>

namespace skein {

namespace {

class TlsCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "skein.tls"; }
  std::string message(int value) const override {
    switch (static_cast<tls_errc>(value)) {
      case tls_errc::handshake_failed:
        return "TLS handshake failed";
      case tls_errc::verify_failed:
        return "TLS certificate verification failed";
      case tls_errc::protocol_error:
        return "TLS protocol error";
      case tls_errc::truncated:
        return "TLS stream truncated (closed without close_notify)";
      case tls_errc::broken:
        return "TLS stream broken by an earlier interrupted or failed call";
      case tls_errc::bad_config:
        return "TLS configuration refused";
    }
    return "unknown skein.tls error " + std::to_string(value);
  }
};

// Clients keep this many hosts' sessions at most; a new host then replaces an arbitrary one.
constexpr std::size_t max_cached_sessions = 1024;

// A client's new session (a TLS 1.2 handshake's, or a TLS 1.3 ticket arriving after it).
int on_new_session(SSL* ssl, SSL_SESSION* session) noexcept {
  auto* s = static_cast<detail::TlsStreamImpl*>(SSL_get_app_data(ssl));
  if (!s || s->host.empty() || !s->context->cache_sessions) return 0;
  // A copy: OpenSSL marks the connection's own session unresumable when it is freed without
  // close_notify, and most connections end that way (HTTP closes after the body).
  if (SSL_SESSION* copy = SSL_SESSION_dup(session)) s->context->keep_session(s->host, copy);
  return 0;
}

// The server's ALPN choice: the first of its own protocols the client offered.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned inlen, void* arg) noexcept {
  auto* c = static_cast<detail::TlsContextImpl*>(arg);
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, outlen, c->alpn.data(), static_cast<unsigned>(c->alpn.size()), in,
                            inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

// The server's SNI callback: the user's pick, whose certificate serves this connection.
int pick_by_server_name(SSL* ssl, int* alert, void* arg) noexcept {
  auto* c = static_cast<detail::TlsContextImpl*>(arg);
  auto* s = static_cast<detail::TlsStreamImpl*>(SSL_get_app_data(ssl));
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name || !c->pick || !s) return SSL_TLSEXT_ERR_NOACK;
  try {
    std::optional<TlsContext> picked = c->pick(name);
    if (picked && picked->native_handle() != c->ctx) {
      // Its certificate, chain and key on this connection, in place of every certificate of this
      // context (of any key type); this context's other settings (ALPN, verification) stay.
      SSL_CTX* p = picked->native_handle();
      X509* cert = SSL_CTX_get0_certificate(p);
      EVP_PKEY* key = SSL_CTX_get0_privatekey(p);
      STACK_OF(X509)* chain = nullptr;
      SSL_CTX_get0_chain_certs(p, &chain);
      SSL_certs_clear(ssl);
      if (!cert || !key || SSL_use_certificate(ssl, cert) != 1 || SSL_use_PrivateKey(ssl, key) != 1 ||
          SSL_set1_chain(ssl, chain) != 1) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
      }
    }
  } catch (...) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

int version_number(TlsVersion v) noexcept {
  return v == TlsVersion::tls1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

std::shared_ptr<detail::TlsContextImpl> make_context(bool server) {
  auto impl = std::make_shared<detail::TlsContextImpl>();
  impl->server = server;
  impl->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!impl->ctx) detail::throw_config("skein::TlsContext: SSL_CTX_new");
  SSL_CTX* ctx = impl->ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Renegotiation is refused both ways: it is TLS 1.2's source of surprise writes inside reads.
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | (server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
  // RELEASE_BUFFERS: OpenSSL frees its record buffers (about 34 KiB) whenever they are empty, so
  // an idle connection does not hold them; it costs no measurable CPU (docs/tls.md, "Memory").
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  if (server) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, detail::record_verify_failure);
    static const unsigned char id[] = "skein";
    SSL_CTX_set_session_id_context(ctx, id, sizeof id - 1);
    // One ticket per handshake is what a client resumes with; OpenSSL's default sends two.
    SSL_CTX_set_num_tickets(ctx, 1);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, detail::record_verify_failure);
    if (!SSL_CTX_set_default_verify_paths(ctx)) detail::throw_config("skein::TlsContext: the system's CAs");
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
  }
  return impl;
}

// A memory BIO over `pem` (read-only, no copy).
struct PemBio {
  explicit PemBio(std::string_view pem) {
    if (pem.size() > INT_MAX) throw std::system_error(make_error_code(tls_errc::bad_config), "PEM too large");
    bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (!bio) detail::throw_config("skein::TlsContext: BIO_new_mem_buf");
  }
  ~PemBio() { BIO_free(bio); }
  PemBio(const PemBio&) = delete;
  PemBio& operator=(const PemBio&) = delete;
  BIO* bio;
};

}  // namespace

const std::error_category& tls_category() noexcept {
  static const TlsCategory category;
  return category;
}

namespace detail {

TlsContextImpl::~TlsContextImpl() {
  for (auto& [host, session] : sessions) SSL_SESSION_free(session);
  SSL_CTX_free(ctx);
}

SSL_SESSION* TlsContextImpl::take_session(const std::string& h) {
  std::lock_guard lock(sessions_mutex);
  const auto it = sessions.find(h);
  if (it == sessions.end()) return nullptr;
  SSL_SESSION* s = it->second;
  if (!SSL_SESSION_is_resumable(s)) {
    SSL_SESSION_free(s);
    sessions.erase(it);
    return nullptr;
  }
  // The cached object itself, shared with the connection: if that connection fails, OpenSSL marks
  // it unresumable here too, and the next connection makes a full handshake (RFC 5246, 7.2.2: a
  // failed connection's session must not be resumed). A connection that merely ends without
  // close_notify keeps it resumable (TlsStream's destructor marks such an end orderly).
  SSL_SESSION_up_ref(s);
  return s;
}

void TlsContextImpl::keep_session(const std::string& h, SSL_SESSION* session) {
  std::lock_guard lock(sessions_mutex);
  const auto it = sessions.find(h);
  if (it != sessions.end()) {
    SSL_SESSION_free(it->second);
    it->second = session;
    return;
  }
  if (sessions.size() >= max_cached_sessions) {
    SSL_SESSION_free(sessions.begin()->second);
    sessions.erase(sessions.begin());
  }
  sessions.emplace(h, session);
}

std::string openssl_reason(const char* fallback) {
  const unsigned long e = ERR_peek_error();
  std::string reason;
  if (e != 0) {
    const char* r = ERR_reason_error_string(e);
    if (r) {
      reason = r;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      reason = buf;
    }
  } else {
    reason = fallback;
  }
  ERR_clear_error();
  return reason;
}

void throw_config(const char* what) {
  throw std::system_error(make_error_code(tls_errc::bad_config),
                          std::string(what) + ": " + openssl_reason("refused"));
}

int record_verify_failure(int ok, X509_STORE_CTX* store) noexcept {
  if (ok) return ok;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* s = ssl ? static_cast<TlsStreamImpl*>(SSL_get_app_data(ssl)) : nullptr;
  if (!s || !s->verify_failure.empty()) return ok;
  try {
    std::string what = "subject ";
    if (X509* cert = X509_STORE_CTX_get_current_cert(store)) {
      char name[512];
      X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof name);
      what += name;
    } else {
      what += "unknown";
    }
    what += ", depth " + std::to_string(X509_STORE_CTX_get_error_depth(store));
    s->verify_failure = std::move(what);
  } catch (...) {
    // Out of memory: the message goes without the subject.
  }
  return ok;
}

}  // namespace detail

TlsContext TlsContext::client() {
  return TlsContext(make_context(false));
}

TlsContext TlsContext::server() {
  return TlsContext(make_context(true));
}

TlsContext& TlsContext::use_certificate_chain_file(const std::string& path) {
  if (SSL_CTX_use_certificate_chain_file(impl_->ctx, path.c_str()) != 1)
    detail::throw_config(("skein::TlsContext: certificate chain " + path).c_str());
  return *this;
}

TlsContext& TlsContext::use_certificate_chain(std::string_view pem) {
  PemBio in(pem);
  X509* leaf = PEM_read_bio_X509_AUX(in.bio, nullptr, nullptr, nullptr);
  if (!leaf) detail::throw_config("skein::TlsContext: certificate chain (PEM)");
  const int ok = SSL_CTX_use_certificate(impl_->ctx, leaf);
  X509_free(leaf);
  if (ok != 1) detail::throw_config("skein::TlsContext: certificate");
  SSL_CTX_clear_chain_certs(impl_->ctx);
  while (X509* ca = PEM_read_bio_X509(in.bio, nullptr, nullptr, nullptr)) {
    if (SSL_CTX_add0_chain_cert(impl_->ctx, ca) != 1) {
      X509_free(ca);
      detail::throw_config("skein::TlsContext: chain certificate");
    }
  }
  ERR_clear_error();  // the end of the PEM data
  return *this;
}

TlsContext& TlsContext::use_private_key_file(const std::string& path) {
  if (SSL_CTX_use_PrivateKey_file(impl_->ctx, path.c_str(), SSL_FILETYPE_PEM) != 1)
    detail::throw_config(("skein::TlsContext: private key " + path).c_str());
  return *this;
}

TlsContext& TlsContext::use_private_key(std::string_view pem) {
  PemBio in(pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(in.bio, nullptr, nullptr, nullptr);
  if (!key) detail::throw_config("skein::TlsContext: private key (PEM)");
  const int ok = SSL_CTX_use_PrivateKey(impl_->ctx, key);
  EVP_PKEY_free(key);
  if (ok != 1) detail::throw_config("skein::TlsContext: private key");
  return *this;
}

TlsContext& TlsContext::trust_ca_file(const std::string& path) {
  if (SSL_CTX_load_verify_file(impl_->ctx, path.c_str()) != 1)
    detail::throw_config(("skein::TlsContext: CA file " + path).c_str());
  return *this;
}

TlsContext& TlsContext::trust_ca_directory(const std::string& path) {
  if (SSL_CTX_load_verify_dir(impl_->ctx, path.c_str()) != 1)
    detail::throw_config(("skein::TlsContext: CA directory " + path).c_str());
  return *this;
}

TlsContext& TlsContext::trust_ca(std::string_view pem) {
  PemBio in(pem);
  X509_STORE* store = SSL_CTX_get_cert_store(impl_->ctx);
  int added = 0;
  while (X509* ca = PEM_read_bio_X509(in.bio, nullptr, nullptr, nullptr)) {
    const int ok = X509_STORE_add_cert(store, ca);
    X509_free(ca);
    if (ok != 1) detail::throw_config("skein::TlsContext: CA certificate");
    ++added;
  }
  if (added == 0) detail::throw_config("skein::TlsContext: CA certificates (PEM)");
  ERR_clear_error();
  return *this;
}

TlsContext& TlsContext::trust_system_cas() {
  if (!SSL_CTX_set_default_verify_paths(impl_->ctx))
    detail::throw_config("skein::TlsContext: the system's CAs");
  return *this;
}

TlsContext& TlsContext::clear_trust() {
  X509_STORE* store = X509_STORE_new();
  if (!store) detail::throw_config("skein::TlsContext: X509_STORE_new");
  SSL_CTX_set_cert_store(impl_->ctx, store);
  return *this;
}

TlsContext& TlsContext::disable_verification() {
  impl_->verify = false;
  SSL_CTX_set_verify(impl_->ctx, SSL_VERIFY_NONE, detail::record_verify_failure);
  return *this;
}

TlsContext& TlsContext::require_client_certificate() {
  SSL_CTX_set_verify(impl_->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                     detail::record_verify_failure);
  return *this;
}

TlsContext& TlsContext::set_min_version(TlsVersion version) {
  if (!SSL_CTX_set_min_proto_version(impl_->ctx, version_number(version)))
    detail::throw_config("skein::TlsContext::set_min_version");
  return *this;
}

TlsContext& TlsContext::set_max_version(TlsVersion version) {
  if (!SSL_CTX_set_max_proto_version(impl_->ctx, version_number(version)))
    detail::throw_config("skein::TlsContext::set_max_version");
  return *this;
}

TlsContext& TlsContext::set_ciphers(const std::string& tls12, const std::string& tls13) {
  if (!tls12.empty() && SSL_CTX_set_cipher_list(impl_->ctx, tls12.c_str()) != 1)
    detail::throw_config(("skein::TlsContext: TLS 1.2 ciphers " + tls12).c_str());
  if (!tls13.empty() && SSL_CTX_set_ciphersuites(impl_->ctx, tls13.c_str()) != 1)
    detail::throw_config(("skein::TlsContext: TLS 1.3 cipher suites " + tls13).c_str());
  return *this;
}

TlsContext& TlsContext::set_alpn(std::vector<std::string> protocols) {
  std::vector<unsigned char> wire;
  for (const std::string& p : protocols) {
    if (p.empty() || p.size() > 255)
      throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                              "skein::TlsContext::set_alpn: a protocol name is 1 to 255 bytes");
    wire.push_back(static_cast<unsigned char>(p.size()));
    wire.insert(wire.end(), p.begin(), p.end());
  }
  impl_->alpn = std::move(wire);
  if (impl_->server) {
    SSL_CTX_set_alpn_select_cb(impl_->ctx, impl_->alpn.empty() ? nullptr : select_alpn, impl_.get());
  } else if (SSL_CTX_set_alpn_protos(impl_->ctx, impl_->alpn.data(),
                                     static_cast<unsigned>(impl_->alpn.size())) != 0) {
    detail::throw_config("skein::TlsContext::set_alpn");
  }
  return *this;
}

TlsContext& TlsContext::on_server_name(std::function<std::optional<TlsContext>(std::string_view name)> pick) {
  impl_->pick = std::move(pick);
  int (*callback)(SSL*, int*, void*) = nullptr;
  if (impl_->pick) callback = pick_by_server_name;
  SSL_CTX_set_tlsext_servername_callback(impl_->ctx, callback);
  SSL_CTX_set_tlsext_servername_arg(impl_->ctx, impl_.get());
  return *this;
}

TlsContext& TlsContext::set_session_cache(bool on) {
  impl_->cache_sessions = on;
  return *this;
}

bool TlsContext::is_server() const noexcept {
  return impl_->server;
}

ssl_ctx_st* TlsContext::native_handle() const noexcept {
  return impl_->ctx;
}

}  // namespace skein
