// A throwaway PKI for the TLS tests, made with OpenSSL's API at test time (no key is ever
// committed): a CA, and certificates it (or another CA) issues, valid or not, as PEM strings.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace skein_test {

struct CertKey {
  std::string cert;  // PEM
  std::string key;   // PEM (PKCS#8)
};

class TestCa {
 public:
  // A self-signed CA named `name` (an EC P-256 key: fast to make and to sign with).
  explicit TestCa(const std::string& name = "skein test CA") : key_(new_key()), cert_(X509_new(), X509_free) {
    X509* x = cert_.get();
    fill(x, name, -3600, 86400 * 30);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, key_.get());
    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(x, x, NID_subject_key_identifier, "hash");
    if (X509_sign(x, key_.get(), EVP_sha256()) == 0) throw std::runtime_error("X509_sign (CA)");
  }

  // The CA's certificate, PEM.
  std::string pem() const { return to_pem(cert_.get()); }

  // A server/client certificate for `cn` with subjectAltName `san` ("DNS:localhost,IP:127.0.0.1"),
  // valid from now + `from` seconds to now + `to` seconds.
  CertKey issue(const std::string& cn, const std::string& san, long from = -3600,
                long to = 86400 * 30) const {
    Key key = new_key();
    std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
    X509* x = cert.get();
    fill(x, cn, from, to);
    X509_set_issuer_name(x, X509_get_subject_name(cert_.get()));
    X509_set_pubkey(x, key.get());
    add_ext(cert_.get(), x, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert_.get(), x, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(cert_.get(), x, NID_authority_key_identifier, "keyid");
    if (!san.empty()) add_ext(cert_.get(), x, NID_subject_alt_name, san.c_str());
    if (X509_sign(x, key_.get(), EVP_sha256()) == 0) throw std::runtime_error("X509_sign");
    return {to_pem(x), key_pem(key.get())};
  }

 private:
  using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
  static Key new_key() {
    Key k(EVP_EC_gen("P-256"), EVP_PKEY_free);
    if (!k) throw std::runtime_error("EVP_EC_gen");
    return k;
  }
  static void fill(X509* x, const std::string& cn, long from, long to) {
    static long serial = 1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), from);
    X509_gmtime_adj(X509_getm_notAfter(x), to);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  }
  static void add_ext(X509* issuer, X509* x, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (!ext) throw std::runtime_error(std::string("X509V3_EXT_conf_nid ") + value);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  template <class Write>
  static std::string bio_string(Write write) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    if (!write(bio.get())) throw std::runtime_error("PEM_write");
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
  }
  static std::string to_pem(X509* x) {
    return bio_string([x](BIO* b) { return PEM_write_bio_X509(b, x) == 1; });
  }
  static std::string key_pem(EVP_PKEY* k) {
    return bio_string(
        [k](BIO* b) { return PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr) == 1; });
  }

  Key key_;
  std::unique_ptr<X509, decltype(&X509_free)> cert_;
};

}  // namespace skein_test
