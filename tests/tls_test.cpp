// tls/: TlsContext and TlsStream against each other and against OpenSSL's own peers (raw SSL
// objects, the `openssl` command): transfers, verification failures, deadlines and cancellation,
// hostile and broken peers, workers. Certificates are made at test time (tls_pki.hpp).
#include "net_test_util.hpp"
#include "sanitizers.hpp"
#include "tls_pki.hpp"

#include <skein/skein.hpp>
#include <skein/tls.hpp>

#include <doctest/doctest.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;
using namespace skein_test;
using skein::Address;
using skein::tls_errc;
using skein::TlsContext;
using skein::TlsStream;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool under_asan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool under_asan = true;
#else
constexpr bool under_asan = false;
#endif
#else
constexpr bool under_asan = false;
#endif

struct Pki {
  TestCa ca;
  CertKey localhost = ca.issue("localhost", "DNS:localhost,IP:127.0.0.1");
  CertKey example = ca.issue("example.org", "DNS:example.org");
  CertKey expired = ca.issue("localhost", "DNS:localhost", -2 * 86400, -86400);
  TestCa other{"untrusted CA"};
  CertKey untrusted = other.issue("localhost", "DNS:localhost");
};

const Pki& pki() {
  static const Pki p;
  return p;
}

TlsContext server_ctx(const CertKey& ck = pki().localhost) {
  TlsContext c = TlsContext::server();
  c.use_certificate_chain(ck.cert).use_private_key(ck.key);
  return c;
}

// A client trusting the test CA alone.
TlsContext client_ctx() {
  TlsContext c = TlsContext::client();
  c.clear_trust().trust_ca(pki().ca.pem());
  return c;
}

struct TlsPair {
  TlsStream client;
  TlsStream server;
};

// A TLS connection over loopback TCP, handshaken both ways (the server's in a fiber).
TlsPair tls_pair(const TlsContext& sctx, const TlsContext& cctx, std::string_view host = "localhost") {
  StreamPair p = connected_pair(Address::loopback(0));
  TlsPair t{TlsStream(std::move(p.client), cctx, host), TlsStream(std::move(p.server), sctx)};
  auto server = skein::spawn([&] { t.server.handshake(5s); });
  t.client.handshake(5s);
  server.join();
  return t;
}

struct Outcome {
  std::error_code client, server;
  std::string client_what, server_what;
};

// Both sides' handshakes, which are expected to fail: what each threw.
Outcome failed_handshake(const TlsContext& sctx, const TlsContext& cctx,
                         std::string_view host = "localhost") {
  StreamPair p = connected_pair(Address::loopback(0));
  TlsStream client(std::move(p.client), cctx, host);
  TlsStream server(std::move(p.server), sctx);
  Outcome o;
  auto s = skein::spawn([&] {
    try {
      server.handshake(5s);
    } catch (const std::system_error& e) {
      o.server = e.code();
      o.server_what = e.what();
    }
  });
  try {
    client.handshake(5s);
  } catch (const std::system_error& e) {
    o.client = e.code();
    o.client_what = e.what();
    client.close();  // the server's handshake ends too if the client failed first
  }
  s.join();
  return o;
}

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// A loopback port nobody listens on now (for `openssl s_server`, which binds it itself).
std::uint16_t free_port() {
  skein::Listener l = skein::listen(Address::loopback(0));
  return l.local_address().port();
}

bool have_openssl_command() {
  return std::system("openssl version >/dev/null 2>&1") == 0;
}

}  // namespace

TEST_SUITE("tls") {
  TEST_CASE("a client and a server exchange 8 MiB both ways at once, every byte checked") {
    FdCheck fds;
    skein::run([] {
      TlsPair t = tls_pair(server_ctx(), client_ctx());
      CHECK(t.client.version() == "TLSv1.3");
      CHECK(t.client.peer_subject() == "/CN=localhost");
      // TSan makes every byte of the checks cost: a smaller transfer there.
      const std::size_t size = under_tsan ? 1 << 20 : 8 << 20;
      const std::string up = pattern(1, size), down = pattern(2, size);
      auto send = [](TlsStream& s, const std::string& data) {
        return skein::spawn([&s, &data] {
          // Uneven pieces, so records and writes never line up.
          std::size_t off = 0, piece = 1;
          while (off < data.size()) {
            const std::size_t n = std::min(piece, data.size() - off);
            s.write_all(std::string_view(data).substr(off, n), 20s);
            off += n;
            piece = piece * 7 % 100003 + 1;
          }
          s.shutdown(5s);
        });
      };
      auto receive = [](TlsStream& s, std::string& into) {
        return skein::spawn([&s, &into] {
          char buf[10000];
          while (std::size_t n = s.read(std::span<char>(buf, sizeof buf), 20s)) into.append(buf, n);
        });
      };
      std::string got_up, got_down;
      auto a = send(t.client, up), b = send(t.server, down);
      auto c = receive(t.server, got_up), d = receive(t.client, got_down);
      a.join();
      b.join();
      c.join();
      d.join();
      CHECK(got_up.size() == size);
      CHECK(got_up == up);
      CHECK(got_down.size() == size);
      CHECK(got_down == down);
    });
  }

  TEST_CASE("many concurrent TLS connections each get their own bytes back") {
    FdCheck fds;
    const std::size_t count = under_tsan ? 40 : under_asan ? 200 : 1000;
    REQUIRE(raise_fd_limit() > 2 * count + 64);
    skein::run([count] {
      TlsContext sctx = server_ctx();
      TlsContext cctx = client_ctx();
      skein::Listener l = skein::listen(Address::loopback(0));
      const Address at = l.local_address();
      std::atomic<std::size_t> served{0}, checked{0};
      auto server = skein::spawn([&] {
        skein::TaskGroup conns;
        for (std::size_t i = 0; i < count; ++i) {
          conns.spawn([&, s = l.accept(10s)]() mutable {
            TlsStream t(std::move(s), sctx);
            char buf[4096];
            while (std::size_t n = t.read(std::span<char>(buf, sizeof buf), 30s))
              t.write_all(std::string_view(buf, n), 30s);
            t.shutdown(5s);
            ++served;
          });
        }
        conns.join();
      });
      skein::TaskGroup clients;
      for (std::size_t i = 0; i < count; ++i) {
        clients.spawn([&, i] {
          TlsStream t = skein::tls_connect("localhost", at.port(), cctx, 30s);
          const std::string mine = pattern(i + 10, 3000 + i);
          t.write_all(mine, 30s);
          std::string back(mine.size(), '\0');
          t.read_exact(back, 30s);
          t.shutdown(5s);
          char end[1];
          if (back == mine && t.read(std::span<char>(end, 1), 30s) == 0) ++checked;
        });
      }
      clients.join();
      server.join();
      CHECK(checked == count);
      CHECK(served == count);
    });
  }

  TEST_CASE("a second connection to the same host resumes the session") {
    FdCheck fds;
    skein::run([] {
      TlsContext sctx = server_ctx();
      TlsContext cctx = client_ctx();
      for (int round = 0; round < 2; ++round) {
        TlsPair t = tls_pair(sctx, cctx);
        // TLS 1.3 tickets come after the handshake: a read takes them in.
        t.server.write_all("x", 5s);
        char b[1];
        CHECK(t.client.read(std::span<char>(b, 1), 5s) == 1);
        CHECK(t.client.session_reused() == (round == 1));
        CHECK(t.server.session_reused() == (round == 1));
      }
    });
  }

  TEST_CASE("a TLS 1.2 server resumes by session ticket and by session id from its cache") {
    FdCheck fds;
    skein::run([] {
      TlsContext sctx = server_ctx();
      for (const bool tickets : {true, false}) {
        CAPTURE(tickets);
        TlsContext cctx = client_ctx();
        cctx.set_max_version(skein::TlsVersion::tls1_2);
        // Without tickets the client offers the session id, which the server finds in its cache.
        if (!tickets) SSL_CTX_set_options(cctx.native_handle(), SSL_OP_NO_TICKET);
        for (int round = 0; round < 3; ++round) {
          CAPTURE(round);
          TlsPair t = tls_pair(sctx, cctx);
          CHECK(t.client.version() == "TLSv1.2");
          CHECK(t.client.session_reused() == (round > 0));
          CHECK(t.server.session_reused() == (round > 0));
          const bool ticket = SSL_SESSION_has_ticket(SSL_get_session(t.client.native_handle())) == 1;
          CHECK(ticket == tickets);
          // Half of the connections end without close_notify: the session stays resumable.
          if (round % 2 == 0) {
            t.client.shutdown(5s);
            t.server.shutdown(5s);
          }
        }
      }
    });
  }

  TEST_CASE("ALPN picks the server's first protocol the client offers; SNI picks the server's certificate") {
    FdCheck fds;
    skein::run([] {
      TlsContext example = server_ctx(pki().example);
      TlsContext sctx = server_ctx();
      sctx.set_alpn({"h2", "http/1.1"});
      sctx.on_server_name([&](std::string_view name) -> std::optional<TlsContext> {
        if (name == "example.org") return example;
        return std::nullopt;
      });
      TlsContext cctx = client_ctx();
      cctx.set_alpn({"http/1.1", "h2"});
      {
        TlsPair t = tls_pair(sctx, cctx, "example.org");
        CHECK(t.client.alpn_protocol() == "h2");
        CHECK(t.server.alpn_protocol() == "h2");
        CHECK(t.server.server_name() == "example.org");
        CHECK(t.client.peer_subject() == "/CN=example.org");
      }
      {
        TlsPair t = tls_pair(sctx, cctx, "localhost");
        CHECK(t.client.peer_subject() == "/CN=localhost");
      }
      {
        // An IP address is verified against the certificate's IP entries and not sent as SNI.
        TlsPair t = tls_pair(sctx, cctx, "127.0.0.1");
        CHECK(t.server.server_name().empty());
        CHECK(t.client.peer_subject() == "/CN=localhost");
      }
      TlsContext other = client_ctx();
      other.set_alpn({"spdy/1"});
      TlsPair t = tls_pair(sctx, other);
      CHECK(t.client.alpn_protocol().empty());
    });
  }

  TEST_CASE("a BufferedReader reads lines from a TlsStream") {
    FdCheck fds;
    skein::run([] {
      TlsPair t = tls_pair(server_ctx(), client_ctx());
      auto w = skein::spawn([&] {
        t.client.write_all("first line\nsecond ", 5s);
        skein::sleep_for(5ms);
        t.client.write_all("line\nno newline", 5s);
        t.client.shutdown(5s);
      });
      skein::BufferedReader r(t.server, 8);
      CHECK(r.read_line(1024, 5s) == "first line\n");
      CHECK(r.read_line(1024, 5s) == "second line\n");
      CHECK(r.read_line(1024, 5s) == "no newline");
      CHECK(r.read_line(1024, 5s).empty());
      w.join();
      // And through a StreamRef, as protocol code written once for both kinds of stream sees it.
      TlsPair u = tls_pair(server_ctx(), client_ctx());
      skein::StreamRef ref(u.client);
      ref.write_all("ping", 5s);
      char b[4];
      skein::StreamRef(u.server).read_exact(b, 5s);
      CHECK(std::string_view(b, 4) == "ping");
    });
  }

  TEST_CASE("a wrong host name fails verification, naming the reason and the certificate") {
    FdCheck fds;
    skein::run([] {
      const Outcome o = failed_handshake(server_ctx(), client_ctx(), "example.org");
      CHECK_MESSAGE(o.client == tls_errc::verify_failed, describe(o.client));
      CHECK_MESSAGE(contains(o.client_what, "hostname mismatch"), o.client_what);
      CHECK_MESSAGE(contains(o.client_what, "CN=localhost"), o.client_what);
      // The client's alert tells the server why.
      CHECK_MESSAGE(o.server == tls_errc::handshake_failed, describe(o.server));
    });
  }

  TEST_CASE("an expired certificate fails verification") {
    FdCheck fds;
    skein::run([] {
      const Outcome o = failed_handshake(server_ctx(pki().expired), client_ctx());
      CHECK_MESSAGE(o.client == tls_errc::verify_failed, describe(o.client));
      CHECK_MESSAGE(contains(o.client_what, "certificate has expired"), o.client_what);
      CHECK_MESSAGE(contains(o.client_what, "CN=localhost"), o.client_what);
      CHECK_MESSAGE(contains(o.server_what, "certificate expired"), o.server_what);
    });
  }

  TEST_CASE(
      "a certificate from an untrusted CA fails verification, and the system's CAs do not know the test CA") {
    FdCheck fds;
    skein::run([] {
      Outcome o = failed_handshake(server_ctx(pki().untrusted), client_ctx());
      CHECK_MESSAGE(o.client == tls_errc::verify_failed, describe(o.client));
      CHECK_MESSAGE(contains(o.client_what, "unable to get local issuer certificate"), o.client_what);
      CHECK_MESSAGE(contains(o.server_what, "unknown ca"), o.server_what);
      o = failed_handshake(server_ctx(), TlsContext::client());
      CHECK_MESSAGE(o.client == tls_errc::verify_failed, describe(o.client));
      // Verification is off only when asked, and then anything goes.
      TlsContext insecure = TlsContext::client();
      insecure.disable_verification();
      TlsPair t = tls_pair(server_ctx(pki().untrusted), insecure, "example.org");
      CHECK(t.client.peer_subject() == "/CN=localhost");
    });
  }

  TEST_CASE("a client without a host name is refused unless verification is off") {
    skein::run([] {
      StreamPair p = connected_pair(Address::loopback(0));
      const std::error_code e = code_of([&] { TlsStream t(std::move(p.client), client_ctx()); });
      CHECK_MESSAGE(e == std::errc::invalid_argument, describe(e));
      CHECK(code_of([] { TlsContext::server().use_private_key("not a key"); }) == tls_errc::bad_config);
      CHECK(code_of([] { client_ctx().trust_ca_file("/nonexistent/ca.pem"); }) == tls_errc::bad_config);
      // A key that does not match the certificate.
      CHECK(code_of([] {
              TlsContext::server()
                  .use_certificate_chain(pki().localhost.cert)
                  .use_private_key(pki().example.key);
            }) == tls_errc::bad_config);
    });
  }

  TEST_CASE("a server requiring client certificates refuses a client without one and accepts one with one") {
    FdCheck fds;
    skein::run([] {
      TlsContext sctx = server_ctx();
      sctx.require_client_certificate().trust_ca(pki().ca.pem());
      const Outcome o = failed_handshake(sctx, client_ctx());
      CHECK_MESSAGE(o.server == tls_errc::verify_failed, describe(o.server));
      TlsContext with_cert = client_ctx();
      with_cert.use_certificate_chain(pki().example.cert).use_private_key(pki().example.key);
      TlsPair t = tls_pair(sctx, with_cert);
      CHECK(t.server.peer_subject() == "/CN=example.org");
    });
  }

  TEST_CASE("a handshake with a silent peer times out, and the stream is broken afterwards") {
    FdCheck fds;
    skein::run([] {
      StreamPair p = connected_pair(Address::loopback(0));
      TlsStream server(std::move(p.server), server_ctx());
      const auto start = skein::Clock::now();
      std::error_code e = code_of([&] { server.handshake(100ms); });
      CHECK_MESSAGE(e == std::errc::timed_out, describe(e));
      CHECK(ms_since(start) >= 90);
      e = code_of([&] { server.handshake(100ms); });
      CHECK_MESSAGE(e == tls_errc::broken, describe(e));
    });
  }

  TEST_CASE("a peer that stalls mid-handshake is cut off by the deadline") {
    FdCheck fds;
    skein::run([] {
      StreamPair p = connected_pair(Address::loopback(0));
      // A handshake record's header and the start of a ClientHello, then nothing (slowloris).
      p.client.write_all(std::string_view("\x16\x03\x01\x01\x00\x01\x00\x00", 8), 1s);
      TlsStream server(std::move(p.server), server_ctx());
      const std::error_code e = code_of([&] { server.handshake(150ms); });
      CHECK_MESSAGE(e == std::errc::timed_out, describe(e));
    });
  }

  TEST_CASE("cancellation during a handshake, a read and a write") {
    FdCheck fds;
    skein::run([] {
      {
        // Handshake: the server never answers.
        StreamPair p = connected_pair(Address::loopback(0));
        TlsStream client(std::move(p.client), client_ctx(), "localhost");
        std::error_code e;
        auto t = skein::spawn([&] { e = code_of([&] { client.handshake(10s); }); });
        skein::sleep_for(20ms);
        t.cancel();
        t.join();
        CHECK_MESSAGE(e == std::errc::operation_canceled, describe(e));
      }
      TlsPair t = tls_pair(server_ctx(), client_ctx());
      {
        // Read: consumed nothing, and the stream goes on.
        std::error_code e;
        auto r = skein::spawn([&] {
          char b[16];
          e = code_of([&] { t.server.read(std::span<char>(b, sizeof b), 10s); });
        });
        skein::sleep_for(20ms);
        r.cancel();
        r.join();
        CHECK_MESSAGE(e == std::errc::operation_canceled, describe(e));
        t.client.write_all("after", 5s);
        char b[5];
        t.server.read_exact(b, 5s);
        CHECK(std::string_view(b, 5) == "after");
      }
      {
        // Write: the peer reads nothing, so the socket fills mid-record; the cancel leaves the
        // stream broken for sending, and what the peer did get is an intact prefix of the data.
        // 32 MiB, more than both socket buffers hold: 1 MiB of pattern, each copy stamped with its
        // index so that no two are alike.
        std::string data;
        const std::string block = pattern(7, 1 << 20);
        for (std::uint32_t i = 0; i < 32; ++i) {
          data += block;
          std::memcpy(data.data() + data.size() - block.size(), &i, sizeof i);
        }
        std::error_code e;
        auto w = skein::spawn([&] { e = code_of([&] { t.client.write_all(data, 30s); }); });
        skein::sleep_for(50ms);
        w.cancel();
        w.join();
        CHECK_MESSAGE(e == std::errc::operation_canceled, describe(e));
        e = code_of([&] { t.client.write_all("more", 1s); });
        CHECK_MESSAGE(e == tls_errc::broken, describe(e));
        // The end of the connection without close_notify (a FIN: a close with the server's
        // unread tickets queued would be a reset).
        t.client.stream().shutdown();
        std::size_t got = 0;
        bool intact = true;
        std::vector<char> buf(65536);
        e = code_of([&] {
          for (;;) {
            const std::size_t n = t.server.read(std::span<char>(buf), 5s);
            if (n == 0) break;
            intact = intact && std::string_view(buf.data(), n) == std::string_view(data).substr(got, n);
            got += n;
          }
        });
        CHECK(intact);
        CHECK(got > 0);
        CHECK(got < data.size());
        CHECK_MESSAGE(e == tls_errc::truncated, describe(e));
      }
    });
  }

  TEST_CASE("end of stream: close_notify reads as 0, a bare close as truncation") {
    FdCheck fds;
    skein::run([] {
      TlsPair t = tls_pair(server_ctx(), client_ctx());
      t.client.write_all("bye", 5s);
      t.client.shutdown(5s);
      CHECK(code_of([&] { t.client.write_all("x", 1s); }) == std::errc::broken_pipe);
      char b[8];
      CHECK(t.server.read(std::span<char>(b, sizeof b), 5s) == 3);
      CHECK(t.server.read(std::span<char>(b, sizeof b), 5s) == 0);
      // The other direction is still open after one side's close_notify.
      t.server.write_all("late", 5s);
      CHECK(t.client.read(std::span<char>(b, sizeof b), 5s) == 4);
      CHECK(code_of([&] { t.server.read_exact(std::span<char>(b, 1), 5s); }) ==
            skein::net_errc::end_of_stream);

      TlsPair u = tls_pair(server_ctx(), client_ctx());
      u.client.stream().shutdown();  // FIN, no close_notify
      const std::error_code e = code_of([&] { u.server.read(std::span<char>(b, sizeof b), 5s); });
      CHECK_MESSAGE(e == tls_errc::truncated, describe(e));
    });
  }

  TEST_CASE("plain HTTP sent to a TLS port fails the server's handshake") {
    FdCheck fds;
    skein::run([] {
      StreamPair p = connected_pair(Address::loopback(0));
      p.client.write_all("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 1s);
      TlsStream server(std::move(p.server), server_ctx());
      std::string what;
      const std::error_code e = code_of([&] {
        try {
          server.handshake(5s);
        } catch (const std::system_error& x) {
          what = x.what();
          throw;
        }
      });
      CHECK_MESSAGE(e == tls_errc::handshake_failed, describe(e));
      CHECK_MESSAGE(contains(what, "http request"), what);
    });
  }

  TEST_CASE("garbage and truncated records after the handshake are protocol errors and truncation") {
    FdCheck fds;
    skein::run([] {
      char b[64];
      {
        TlsPair t = tls_pair(server_ctx(), client_ctx());
        t.client.stream().write_all(
            std::string_view("\x17\x03\x03\x00\x20garbage garbage garbage garbage!", 37), 1s);
        const std::error_code e = code_of([&] { t.server.read(std::span<char>(b, sizeof b), 5s); });
        CHECK_MESSAGE(e == tls_errc::protocol_error, describe(e));
        CHECK(code_of([&] { t.server.read(std::span<char>(b, sizeof b), 5s); }) == tls_errc::broken);
        CHECK(code_of([&] { t.server.write_all("x", 5s); }) == tls_errc::broken);
        // The server's alert reaches the client.
        const std::error_code c = code_of([&] { t.client.read(std::span<char>(b, sizeof b), 5s); });
        CHECK_MESSAGE(c == tls_errc::protocol_error, describe(c));
      }
      {
        TlsPair t = tls_pair(server_ctx(), client_ctx());
        // A record header promising 256 bytes, 10 of them, then the end of the connection.
        t.client.stream().write_all(std::string_view("\x17\x03\x03\x01\x00"
                                                     "0123456789",
                                                     15),
                                    1s);
        t.client.stream().shutdown();
        const std::error_code e = code_of([&] { t.server.read(std::span<char>(b, sizeof b), 5s); });
        CHECK_MESSAGE(e == tls_errc::truncated, describe(e));
      }
      {
        TlsPair t = tls_pair(server_ctx(), client_ctx());
        // Something that is not a TLS record at all.
        t.client.stream().write_all(std::string_view("\xff\xff\xff\xff\xff\xff\xff\xff", 8), 1s);
        const std::error_code e = code_of([&] { t.server.read(std::span<char>(b, sizeof b), 5s); });
        CHECK_MESSAGE(e == tls_errc::protocol_error, describe(e));
      }
    });
  }

  TEST_CASE("renegotiation is refused") {
    FdCheck fds;
    skein::run([] {
      TlsContext cctx = client_ctx();
      cctx.set_max_version(skein::TlsVersion::tls1_2);
      TlsPair t = tls_pair(server_ctx(), cctx);
      CHECK(t.client.version() == "TLSv1.2");
      // The client is made to ask (skein never does): the server says no.
      SSL* ssl = t.client.native_handle();
      SSL_clear_options(ssl, SSL_OP_NO_RENEGOTIATION);
      REQUIRE(SSL_renegotiate(ssl) == 1);
      std::string what;
      auto server = skein::spawn([&] {
        char b[8];
        (void)code_of([&] { t.server.read(std::span<char>(b, sizeof b), 5s); });
      });
      const std::error_code e = code_of([&] {
        try {
          // A write sends the renegotiating ClientHello; the read meets the refusal.
          t.client.write_all("x", 5s);
          char b[8];
          t.client.read(std::span<char>(b, sizeof b), 5s);
        } catch (const std::system_error& x) {
          what = x.what();
          throw;
        }
      });
      server.join();
      CHECK_MESSAGE(e == tls_errc::protocol_error, describe(e));
      CHECK_MESSAGE(contains(what, "renegotiation"), what);
    });
  }

  TEST_CASE("a connection accepted on one worker is served on another") {
    FdCheck fds;
    skein::RuntimeOptions options;
    options.workers = 2;
    skein::Runtime rt(options);
    rt.spawn_on(0, [&rt] {
        TlsContext sctx = server_ctx();
        skein::Listener l = skein::listen(Address::loopback(0));
        const Address at = l.local_address();
        auto client = rt.spawn_on(1, [&] {
          TlsStream c = skein::tls_connect("127.0.0.1", at.port(), client_ctx(), 5s);
          c.write_all("hello from worker 1", 5s);
          char b[32];
          const std::size_t n = c.read(std::span<char>(b, sizeof b), 5s);
          return std::string(b, n);
        });
        TlsStream s(l.accept(5s), sctx);
        s.handshake(5s);
        // Worker 1 reads and answers on the stream worker 0 accepted and handshook.
        rt.spawn_on(1, [&s] {
            char b[32];
            const std::size_t n = s.read(std::span<char>(b, sizeof b), 5s);
            s.write_all("echo: " + std::string(b, n), 5s);
          }).join();
        CHECK(client.join() == "echo: hello from worker 1");
        s.shutdown(5s);
      }).join();
  }

  TEST_CASE("interop: a skein client talks to `openssl s_server`") {
    if (!have_openssl_command()) {
      MESSAGE("the openssl command is not installed: skipped");
      return;
    }
    FdCheck fds;
    TempDir dir;
    std::ofstream(dir.file("cert.pem")) << pki().localhost.cert;
    std::ofstream(dir.file("key.pem")) << pki().localhost.key;
    std::ofstream(dir.file("ca.pem")) << pki().ca.pem();
    const std::uint16_t port = free_port();
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      const std::string accept = "127.0.0.1:" + std::to_string(port);
      // -rev: each line comes back reversed.
      execlp("openssl", "openssl", "s_server", "-accept", accept.c_str(), "-cert",
             dir.file("cert.pem").c_str(), "-key", dir.file("key.pem").c_str(), "-rev", "-quiet",
             static_cast<char*>(nullptr));
      _exit(127);
    }
    skein::run([&] {
      TlsContext cctx = TlsContext::client();
      cctx.clear_trust().trust_ca_file(dir.file("ca.pem"));
      // The server needs a moment to bind: retry the connection for up to 10 s.
      TlsStream t;
      for (int i = 0; i < 200 && !t; ++i) {
        try {
          t = skein::tls_connect("localhost", port, cctx, 5s);
        } catch (const std::system_error& e) {
          if (e.code() != std::errc::connection_refused) throw;
          skein::sleep_for(50ms);
        }
      }
      REQUIRE(t);
      t.write_all("hello openssl\n", 5s);
      skein::BufferedReader r(t);
      std::string line = r.read_line(1024, 5s);
      CHECK(line == "lssnepo olleh\n");
      CHECK(t.peer_subject() == "/CN=localhost");
    });
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
  }

  TEST_CASE("interop: `openssl s_client` talks to a skein server") {
    if (!have_openssl_command()) {
      MESSAGE("the openssl command is not installed: skipped");
      return;
    }
    FdCheck fds;
    TempDir dir;
    std::ofstream(dir.file("ca.pem")) << pki().ca.pem();
    std::ofstream(dir.file("in.txt")) << "hello skein\n";
    skein::run([&] {
      TlsContext sctx = server_ctx();
      sctx.set_alpn({"http/1.1"});
      skein::Listener l = skein::listen(Address::loopback(0));
      const std::string connect = "127.0.0.1:" + std::to_string(l.local_address().port());
      const std::string out = dir.file("out.txt");
      // -ign_eof: stdin's end does not end the session; the server's close_notify does.
      const std::string cmd = "openssl s_client -connect " + connect + " -servername localhost -CAfile " +
                              dir.file("ca.pem") + " -verify_return_error -alpn http/1.1 -quiet -ign_eof < " +
                              dir.file("in.txt") + " > " + out + " 2>&1";
      auto client =
          skein::spawn([&] { return skein::run_blocking([&] { return std::system(cmd.c_str()); }); });
      TlsStream s(l.accept(10s), sctx);
      s.handshake(10s);
      CHECK(s.server_name() == "localhost");
      CHECK(s.alpn_protocol() == "http/1.1");
      skein::BufferedReader r(s);
      std::string line = r.read_line(1024, 10s);
      CHECK(line == "hello skein\n");
      s.write_all("HELLO CLIENT\n", 5s);
      s.shutdown(5s);
      const int status = client.join();
      CHECK(WIFEXITED(status));
      std::ifstream in(out);
      const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      CHECK_MESSAGE(contains(got, "HELLO CLIENT"), got);
    });
  }

  TEST_CASE("interop: `openssl s_client` resumes its sessions with a skein server") {
    if (!have_openssl_command()) {
      MESSAGE("the openssl command is not installed: skipped");
      return;
    }
    FdCheck fds;
    TempDir dir;
    std::ofstream(dir.file("ca.pem")) << pki().ca.pem();
    for (const bool tls13 : {true, false}) {
      CAPTURE(tls13);
      skein::run([&] {
        TlsContext sctx = server_ctx();
        skein::Listener l = skein::listen(Address::loopback(0));
        const std::string out = dir.file("out.txt");
        const std::string base =
            "openssl s_client -connect 127.0.0.1:" + std::to_string(l.local_address().port()) +
            " -servername localhost -CAfile " + dir.file("ca.pem") + " -verify_return_error ";
        // TLS 1.3: s_client's -reconnect drops the connection before the ticket arrives, so a
        // second run resumes with the session the first one saved. TLS 1.2: one connection, then
        // five more resuming its session.
        const std::string cmd = tls13 ? base + "-tls1_3 -ign_eof -sess_out " + dir.file("session.pem") +
                                            " < /dev/null > " + out + " 2>&1 && " + base +
                                            "-tls1_3 -ign_eof -sess_in " + dir.file("session.pem") +
                                            " < /dev/null >> " + out + " 2>&1"
                                      : base + "-tls1_2 -reconnect < /dev/null > " + out + " 2>&1";
        const int connections = tls13 ? 2 : 6;
        auto client =
            skein::spawn([&] { return skein::run_blocking([&] { return std::system(cmd.c_str()); }); });
        int resumed = 0;
        for (int i = 0; i < connections; ++i) {
          TlsStream s(l.accept(10s), sctx);
          s.handshake(10s);
          if (s.session_reused()) ++resumed;
          try {  // a reconnecting client may be gone already
            s.write_all("x\n", 5s);
            s.shutdown(5s);
            char b[64];
            while (s.read(std::span<char>(b, sizeof b), 10s) > 0) {
            }
          } catch (const std::system_error&) {
          }
        }
        const int status = client.join();
        std::ifstream in(out);
        const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), got);
        CHECK_MESSAGE(resumed == connections - 1, got);
      });
    }
  }

  TEST_CASE("a session whose connection failed is not resumed: truncation or a fatal alert") {
    skein::run([] {
      TlsContext sctx = server_ctx();
      for (const bool alert : {false, true}) {
        for (const bool tickets : {true, false}) {
          CAPTURE(alert);
          CAPTURE(tickets);
          TlsContext cctx = client_ctx();
          cctx.set_max_version(skein::TlsVersion::tls1_2);
          if (!tickets) SSL_CTX_set_options(cctx.native_handle(), SSL_OP_NO_TICKET);
          {
            TlsPair t = tls_pair(sctx, cctx);
            t.client.shutdown(5s);
            t.server.shutdown(5s);
          }
          {
            StreamPair p = connected_pair(Address::loopback(0));
            const int sfd = p.server.fd();
            TlsPair t{TlsStream(std::move(p.client), cctx, "localhost"),
                      TlsStream(std::move(p.server), sctx)};
            auto server = skein::spawn([&] { t.server.handshake(5s); });
            t.client.handshake(5s);
            server.join();
            REQUIRE(t.client.session_reused());
            char b[16];
            if (alert) {
              // A garbage application-data record: the client fails with a fatal alert (bad MAC).
              const char junk[] =
                  "\x17\x03\x03\x00\x20"
                  "0123456789abcdef0123456789abcdef";
              REQUIRE(::write(sfd, junk, sizeof junk - 1) == static_cast<ssize_t>(sizeof junk - 1));
              CHECK(code_of([&] { (void)t.client.read(std::span<char>(b, sizeof b), 5s); }) ==
                    tls_errc::protocol_error);
            } else {
              // The server's socket goes without close_notify: the client reads a truncation.
              t.server.close();
              CHECK(code_of([&] { (void)t.client.read(std::span<char>(b, sizeof b), 5s); }) ==
                    tls_errc::truncated);
            }
          }
          TlsPair t = tls_pair(sctx, cctx);
          CHECK_FALSE(t.client.session_reused());
          CHECK_FALSE(t.server.session_reused());
        }
      }
    });
  }
}
