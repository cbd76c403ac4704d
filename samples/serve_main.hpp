// What the sample servers share: listen on --host/--port, say where, and serve until Ctrl-C or
// SIGTERM.
#pragma once

#include <skein/skein.hpp>

#include "cli.hpp"

#include <signal.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace skein_samples {

// The options every sample server takes: --host H, --port P, --threads N, --debug-dump[=SIG].
struct ServerFlags {
  std::string host = "127.0.0.1";
  std::uint16_t port;
  std::size_t threads = 1;
  int dump_signal = 0;  // --debug-dump: RuntimeOptions::dump_signal

  explicit ServerFlags(std::uint16_t default_port) : port(default_port) {}

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
    } else {
      return false;
    }
    return true;
  }

  // The runtime these flags ask for.
  skein::RuntimeOptions runtime_options() const {
    skein::RuntimeOptions options;
    options.workers = threads;
    options.dump_signal = dump_signal;
    return options;
  }

 private:
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

}  // namespace skein_samples
