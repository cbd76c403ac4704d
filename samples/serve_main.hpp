// What the sample servers share: listen on --host/--port, say where, and serve until Ctrl-C or
// SIGTERM.
#pragma once

#include <skein/skein.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>
#include <utility>

namespace skein_samples {

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
