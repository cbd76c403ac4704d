// fuzz_tls_server.cpp: a libFuzzer target for a TlsStream server's record handling (scripts/fuzz
// --target tls). The server reads from one end of a socket pair, on a plain thread (Stream's calls
// then wait in poll), with its certificate made once at start-up; the fuzzer plays the client.
//
// Input: byte 0 picks the mode, byte 1 a length; the rest is what the client sends.
//   mode & 3 == 1 or 2: a real client (OpenSSL, on a thread; TLS 1.3 for 1, TLS 1.2 for 2)
//                  completes a handshake, sends the first 4 * length bytes of the rest as
//                  application data, then close_notify if bit 2 of the mode is set, then the
//                  remaining bytes raw: the record layer after the handshake, garbage, alerts and
//                  truncation.
//   otherwise:     the rest, raw, from the first byte: the server's ClientHello and handshake
//                  parsing (seeds: real ClientHellos, corpus/clienthello-*).
//   bit 3 of the mode: the server reads 1 byte at a time instead of 4 KiB.
// Invariants on every input:
//   - every exception is a std::system_error; in the raw mode it is tls_errc::handshake_failed
//     (raw bytes cannot complete a handshake), after a handshake it is protocol_error or truncated;
//   - after a handshake the server reads a prefix of the client's application data; all of it
//     then the end of the stream (0) if nothing raw followed a close_notify, all of it then
//     truncated if nothing raw followed and no close_notify was sent;
//   - no crash, no leak, no undefined behaviour (ASan, UBSan, LeakSanitizer).
#include "tls_pki.hpp"

#include <skein/socket.hpp>
#include <skein/tls.hpp>

#include <openssl/ssl.h>

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

using namespace std::chrono_literals;

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "invariant broken: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

struct Setup {
  skein::TlsContext server = skein::TlsContext::server();
  SSL_CTX* client13 = nullptr;
  SSL_CTX* client12 = nullptr;

  Setup() {
    // The client's OpenSSL writes with write(2): a server that hung up must not kill the process.
    signal(SIGPIPE, SIG_IGN);
    skein_test::TestCa ca;
    const skein_test::CertKey cert = ca.issue("localhost", "DNS:localhost");
    server.use_certificate_chain(cert.cert).use_private_key(cert.key).set_alpn({"http/1.1"});
    // Every input a full handshake: no session survives from one input to the next.
    SSL_CTX_set_session_cache_mode(server.native_handle(), SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(server.native_handle(), SSL_OP_NO_TICKET);
    client13 = client(TLS1_3_VERSION);
    client12 = client(TLS1_2_VERSION);
  }
  static SSL_CTX* client(int version) {
    SSL_CTX* c = SSL_CTX_new(TLS_client_method());
    if (!c) fail("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(c, version);
    SSL_CTX_set_max_proto_version(c, version);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);  // the client is not what is fuzzed
    return c;
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// The client's side on `fd` (blocking): a handshake, `plain` as application data, close_notify
// if `notify`, then `raw`; then the end of its sending. Returns whether the handshake completed.
bool run_client(int fd, SSL_CTX* ctx, std::string_view plain, bool notify, std::string_view raw) {
  SSL* ssl = SSL_new(ctx);
  bool ok = ssl && SSL_set_fd(ssl, fd) == 1 && SSL_set_tlsext_host_name(ssl, "localhost") == 1 &&
            SSL_connect(ssl) == 1;
  const bool handshaken = ok;
  if (ok && !plain.empty()) ok = SSL_write(ssl, plain.data(), static_cast<int>(plain.size())) > 0;
  if (ok && notify) ok = SSL_shutdown(ssl) >= 0;
  if (ok) write_all(fd, raw);
  ::shutdown(fd, SHUT_WR);
  SSL_free(ssl);
  return handshaken;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  Setup& s = setup();
  const unsigned mode = data[0];
  const unsigned kind = (mode & 3) == 3 ? 0 : mode & 3;
  const bool notify = (mode & 4) != 0;
  const std::size_t read_size = (mode & 8) != 0 ? 1 : 4096;
  const std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
  const std::string_view plain =
      kind == 0 ? std::string_view() : rest.substr(0, std::min<std::size_t>(data[1] * 4u, rest.size()));
  // Raw bytes are written whole before the server reads: at most what the socket pair holds.
  const std::string_view raw = (kind == 0 ? rest : rest.substr(plain.size())).substr(0, 256 * 1024);

  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail("socketpair");
  // The server's flight and alerts land in the client's receive buffer, which nobody reads:
  // large enough that the server never waits for room.
  const int big = 1 << 20;
  setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);  // the raw bytes, written at once

  bool handshaken = false;
  std::thread client;
  if (kind == 0) {
    write_all(fds[0], raw);
    ::shutdown(fds[0], SHUT_WR);
  } else {
    client = std::thread(
        [&] { handshaken = run_client(fds[0], kind == 1 ? s.client13 : s.client12, plain, notify, raw); });
  }

  std::string got;
  bool ended = false;  // read() returned 0
  std::error_code error;
  bool server_handshaken = false;
  {
    skein::TlsStream server(skein::Stream(fds[1]), s.server);
    try {
      server.handshake(skein::Clock::now() + 8s);  // under scripts/fuzz's -timeout=10
      server_handshaken = true;
      std::string buf(read_size, '\0');
      while (std::size_t n = server.read(std::span<char>(buf.data(), buf.size()), skein::Clock::now() + 8s))
        got.append(buf.data(), n);
      ended = true;
    } catch (const std::system_error& e) {
      error = e.code();
    } catch (const std::exception& e) {
      fail("an exception that is not a std::system_error", e.what());
    }
  }  // closes the server's end: a client still waiting sees the end
  if (client.joinable()) client.join();
  ::close(fds[0]);

  const auto& tls = skein::tls_category();
  if (kind == 0) {
    if (server_handshaken) fail("raw bytes completed a handshake");
    if (error != skein::tls_errc::handshake_failed)
      fail("raw bytes failed otherwise than handshake_failed", error.message());
    return 0;
  }
  if (!server_handshaken) {
    // The real client's handshake cannot fail on its own; the server's must not either.
    fail("a real client's handshake failed", error.message());
  }
  if (!handshaken) fail("the server completed a handshake the client did not");
  if (!ended && error.category() != tls)
    fail("a failure after the handshake outside skein.tls",
         error.category().name() + (": " + error.message()));
  if (!ended && error != skein::tls_errc::protocol_error && error != skein::tls_errc::truncated)
    fail("a failure after the handshake other than protocol_error or truncated", error.message());
  if (std::string_view(plain).substr(0, got.size()) != got)
    fail("the server read other bytes than were sent");
  if (raw.empty()) {
    if (got.size() != plain.size()) fail("the server did not read all the application data");
    if (notify && !ended) fail("close_notify did not end the stream", error.message());
    if (!notify && error != skein::tls_errc::truncated) fail("a bare end of stream is not truncation");
  }
  return 0;
}
