// What the sample servers share: listen on --host/--port, say where, and serve until Ctrl-C or
// SIGTERM; for the servers that offer it, TLS with --tls-cert/--tls-key (built with
// SKEIN_SAMPLES_TLS=1, when skein has TLS).
#pragma once

#include <skein/skein.hpp>

#include "cli.hpp"

#if SKEIN_SAMPLES_TLS
#include <skein/tls.hpp>
#endif

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace skein_samples {

// How long a TLS client has to complete its handshake: a peer that stalls in it (slowloris)
// holds its connection's fiber no longer than this.
inline constexpr std::chrono::seconds tls_handshake_timeout{10};

// The options every sample server takes: --host H, --port P, --threads N, --debug-dump[=SIG];
// and --tls-cert FILE --tls-key FILE for those that call offer_tls().
struct ServerFlags {
  std::string host = "127.0.0.1";
  std::uint16_t port;
  std::size_t threads = 1;
  int dump_signal = 0;   // --debug-dump: RuntimeOptions::dump_signal
  std::string tls_cert;  // --tls-cert: PEM certificate chain, leaf first
  std::string tls_key;   // --tls-key: PEM private key

  explicit ServerFlags(std::uint16_t default_port) : port(default_port) {}

  // Makes parse() take --tls-cert and --tls-key; the server then serves TLS with them, offering
  // `alpn` (e.g. {"http/1.1"}). Call before parsing.
  void offer_tls(std::vector<std::string> alpn = {}) {
    tls_offered_ = true;
    alpn_ = std::move(alpn);
  }

  // Takes argv[i] (and its value) if it is one of them; exits with a usage error for a bad value.
  bool parse(int& i, int argc, char** argv) {
    std::string_view value;
    if (cli::option("--host", i, argc, argv, value)) {
      if (value.empty()) cli::usage_error("--host must not be empty");
      host = value;
    } else if (cli::option("--port", i, argc, argv, value)) {
      port = static_cast<std::uint16_t>(cli::number("--port", value, 0, 65535));
    } else if (cli::option("--threads", i, argc, argv, value)) {
      threads = static_cast<std::size_t>(cli::number("--threads", value, 1, 256));
    } else if (const std::string_view arg = argv[i]; arg == "--debug-dump") {
      dump_signal = SIGUSR1;
    } else if (arg.starts_with("--debug-dump=")) {
      dump_signal = signal_named(arg.substr(arg.find('=') + 1));
    } else if (tls_offered_ && cli::option("--tls-cert", i, argc, argv, value)) {
      tls_cert = file_value("--tls-cert", value);
    } else if (tls_offered_ && cli::option("--tls-key", i, argc, argv, value)) {
      tls_key = file_value("--tls-key", value);
    } else {
      return false;
    }
    return true;
  }

  // After parsing: checks what parse() cannot see one flag at a time, and loads the certificate
  // and key. A usage error (exit 2) for one of --tls-cert/--tls-key without the other; a file
  // OpenSSL cannot load (missing, unreadable, not PEM, a key that does not match) is reported
  // with the file and OpenSSL's reason, exit 1.
  void finish() {
    if (tls_cert.empty() != tls_key.empty())
      cli::usage_error(tls_cert.empty() ? "--tls-key needs --tls-cert too"
                                        : "--tls-cert needs --tls-key too");
    if (tls_cert.empty()) return;
#if SKEIN_SAMPLES_TLS
    try {
      skein::TlsContext context = skein::TlsContext::server();
      context.use_certificate_chain_file(tls_cert).use_private_key_file(tls_key);
      if (!alpn_.empty()) context.set_alpn(alpn_);
      tls_context_ = std::move(context);
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "%s: cannot serve TLS: %s\n", cli::program, e.what());
      std::exit(1);
    }
#else
    cli::usage_error("--tls-cert: this build has no TLS (skein was built without OpenSSL 3)");
#endif
  }

  // The runtime these flags ask for.
  skein::RuntimeOptions runtime_options() const {
    skein::RuntimeOptions options;
    options.workers = threads;
    options.dump_signal = dump_signal;
    return options;
  }

 private:
#if SKEIN_SAMPLES_TLS
  template <class Handle>
  friend void listen_and_serve(const ServerFlags& flags, Handle handle);
  std::optional<skein::TlsContext> tls_context_;
#endif
  bool tls_offered_ = false;
  std::vector<std::string> alpn_;

  static std::string file_value(std::string_view name, std::string_view value) {
    if (value.empty()) cli::usage_error(std::string(name) + " must not be empty");
    return std::string(value);
  }

  static int signal_named(std::string_view given) {
    std::string_view name = given;
    if (name.starts_with("SIG")) name.remove_prefix(3);
    if (name == "USR1") return SIGUSR1;
    if (name == "USR2") return SIGUSR2;
    if (name == "QUIT") return SIGQUIT;
    cli::usage_error("--debug-dump takes SIGUSR1, SIGUSR2 or SIGQUIT, not '" + std::string(given) + "'");
  }
};

// An IP literal as it is; anything else is looked up (on the blocking pool, so it must run on a
// fiber) and the first address wins.
inline skein::Address listen_address(const std::string& host, std::uint16_t port) {
  try {
    return skein::Address::ip(host, port);
  } catch (const std::system_error&) {
    return skein::resolve(host, port).front();
  }
}

// Listens on host:port, prints "listening on HOST:PORT" (the bound port, so port 0 works) and
// serves `handler` one fiber per connection, on every worker of the runtime, until SIGINT/SIGTERM.
// Must run on a fiber.
inline void listen_and_serve(const std::string& host, std::uint16_t port, skein::Server::Handler handler) {
  skein::ServeOptions options;
  options.stop_on_signals = true;
  // Idle (keep-alive) connections would otherwise hold the exit for the whole grace period.
  options.grace_period = std::chrono::seconds(1);
  options.on_listening = [](const skein::Address& bound) {
    std::printf("listening on %s\n", bound.to_string().c_str());
    std::fflush(stdout);
  };
  skein::serve(listen_address(host, port), std::move(handler), options);
}

// The socket under a connection's stream, plain or TLS (for its addresses).
inline skein::Stream& socket_of(skein::Stream& stream) noexcept {
  return stream;
}
#if SKEIN_SAMPLES_TLS
inline skein::Stream& socket_of(skein::TlsStream& stream) noexcept {
  return stream.stream();
}
#endif

// What the TLS handshakes of this process came to, over every worker.
struct TlsCounters {
  std::atomic<std::uint64_t> handshakes{0};  // completed
  std::atomic<std::uint64_t> resumed{0};     // of those, with a resumed session (ticket or id)
  std::atomic<std::uint64_t> failed{0};      // failed or timed out: the connection was dropped
};
inline TlsCounters tls_counters;

#if SKEIN_SAMPLES_TLS
namespace detail {

// One line for each of the first few handshake failures, then only the count: a scanner or a
// plain-HTTP client must not flood stderr.
inline void log_handshake_failure(const std::optional<skein::Address>& peer, const std::system_error& e) {
  constexpr std::uint64_t logged = 10;
  const std::uint64_t n = tls_counters.failed.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n > logged) return;
  std::fprintf(stderr, "%s: TLS handshake with %s failed: %s%s\n", cli::program,
               peer ? peer->to_string().c_str() : "a peer that left", e.what(),
               n == logged ? " (further failures are counted, not shown)" : "");
}

// Runs the server handshake of `plain` under tls_handshake_timeout, then `handle` on the TLS
// stream, and sends close_notify when it returns. A failed handshake ends only this connection.
template <class Handle>
void serve_tls(skein::Stream plain, const skein::TlsContext& context, const Handle& handle) {
  // Taken now: a peer whose handshake fails has often hung up by the time it is logged.
  std::optional<skein::Address> peer;
  try {
    peer = plain.peer_address();
  } catch (const std::system_error&) {
  }
  skein::TlsStream stream(std::move(plain), context);
  try {
    stream.handshake(tls_handshake_timeout);
  } catch (const std::system_error& e) {
    // The server stopping (a cancel) is not the client's failure.
    if (e.code() == std::errc::operation_canceled) throw;
    log_handshake_failure(peer, e);
    return;
  }
  tls_counters.handshakes.fetch_add(1, std::memory_order_relaxed);
  if (stream.session_reused()) tls_counters.resumed.fetch_add(1, std::memory_order_relaxed);
  try {
    handle(stream);
  } catch (const std::system_error& e) {
    // A client that hangs up without close_notify (many do once they have their response) is
    // the TLS form of an ordinary close.
    if (e.code() != skein::tls_errc::truncated) throw;
    return;
  }
  try {
    stream.shutdown(std::chrono::seconds(1));
  } catch (const std::system_error&) {
    // Sent already, or the peer is gone: the connection ends here either way.
  }
}

}  // namespace detail
#endif

// listen_and_serve with `flags`' address, over TLS if --tls-cert was given: `handle(stream)` serves one
// connection, called with a skein::Stream& as accepted or, with TLS, a skein::TlsStream& whose
// handshake is done (so `handle` is generic: [](auto& stream) {...}). The plain path calls it on
// the Stream itself: no indirection is added to its reads and writes. Call flags.finish() first.
template <class Handle>
void listen_and_serve(const ServerFlags& flags, Handle handle) {
#if SKEIN_SAMPLES_TLS
  if (flags.tls_context_) {
    listen_and_serve(flags.host, flags.port, [context = *flags.tls_context_, handle](skein::Stream plain) {
      detail::serve_tls(std::move(plain), context, handle);
    });
    return;
  }
#endif
  // A server that took --tls-cert but never called finish() would otherwise serve plain text.
  if (!flags.tls_cert.empty())
    throw std::logic_error("listen_and_serve: --tls-cert given, finish() not called");
  listen_and_serve(flags.host, flags.port, [handle](skein::Stream stream) { handle(stream); });
}

}  // namespace skein_samples
