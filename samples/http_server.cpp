// http_server: a small aiohttp app, one fiber per connection. The Python it answers:
//
//   async def index(request):
//       return web.Response(body=b'<h1>Index Page</h1>', content_type='text/html')
//
//   async def hello(request):
//       text = '<h1>Hello, %s</h1>' % request.match_info['name']
//       return web.Response(body=text.encode('utf-8'), content_type='text/html')
//
//   app = web.Application()
//   app.router.add_route('GET', '/', index)
//   app.router.add_route('GET', '/{name}', hello)
//   web.run_app(app)
//
// Each connection's fiber is a plain loop: read what the peer sent, feed it to an HttpSession (the
// HTTP logic, samples/http/), write the responses, and stop when the session says so or the peer
// goes away. Reads and writes park only that fiber, so thousands of connections share one thread.
// Unlike the Python, {name} is HTML-escaped: "/%3Cscript%3E" must not put a script on the page.
//
// With --tls-cert and --tls-key the same app is served over TLS (ALPN http/1.1): the connection's
// fiber runs the handshake, then the same loop over the TlsStream (the loop is a template, so the
// plain path stays calls on the Stream itself).

#include <skein/skein.hpp>

#include "cli.hpp"
#include "http/http_session.hpp"
#include "io_check.hpp"
#include "serve_main.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

namespace {

namespace cli = skein_samples::cli;
using skein_samples::http::HttpSession;

constexpr const char* kUsage =
    "usage: http_server [--host H] [--port P] [--threads N] [--idle-timeout S] [--delay-ms N]\n"
    "                   [--tls-cert FILE --tls-key FILE] [--debug-dump[=SIG]] [--debug-routes]\n"
    "\n"
    "Serves a small aiohttp app's routes over HTTP/1.1 (or HTTPS), one fiber per connection:\n"
    "  GET /        -> <h1>Index Page</h1>\n"
    "  GET /{name}  -> <h1>Hello, {name}</h1>\n"
    "Prints 'listening on HOST:PORT' once it accepts connections. Ctrl-C or SIGTERM stops it: it\n"
    "stops accepting, gives open connections a second to finish, and exits 0.\n"
    "\n"
    "  --host H           address to listen on, an IP literal or a name; default 127.0.0.1\n"
    "  --port P           TCP port, 0..65535 (0 picks a free one); default 8080\n"
    "  --threads N        worker threads, each serving its own share of the connections;\n"
    "                     default 1\n"
    "  --idle-timeout S   close a connection after S seconds without a request (a write that\n"
    "                     stalls that long fails too); 0 waits forever; default 60\n"
    "  --delay-ms N       wait N ms (parking only that connection's fiber) before each\n"
    "                     response, 0..60000; default 0\n"
    "  --tls-cert FILE    serve HTTPS (ALPN http/1.1) with this certificate chain (PEM, leaf\n"
    "                     first); needs --tls-key. A client has 10 s to complete its handshake;\n"
    "                     a failed handshake drops only that connection (the first few are\n"
    "                     logged to stderr, the rest counted in /debug/stats)\n"
    "  --tls-key FILE     the certificate's private key (PEM)\n"
    "  --debug-dump[=SIG] print every fiber (what it waits for, since when, where it was\n"
    "                     spawned) to stderr on signal SIG, SIGUSR1 (the default), SIGUSR2\n"
    "                     or SIGQUIT, and go on serving: try kill -USR1 PID\n"
    "  --debug-routes     also serve GET /debug/fibers (the same listing, as text) and\n"
    "                     GET /debug/stats (every worker's counters); without it they are 404.\n"
    "                     They show the server's insides: not for a public address\n"
    "  -h, --help         show this help and exit\n";

struct Config {
  std::chrono::duration<double> idle_timeout{60.0};
  std::chrono::milliseconds delay{0};
  bool debug_routes = false;
};

void append_counters(std::string& out, const skein::debug::WorkerStats& w) {
  out += std::to_string(w.fibers) + " fibers, " + std::to_string(w.switches) + " switches, " +
         std::to_string(w.spawns) + " spawns (" + std::to_string(w.remote_spawns) + " from other threads), " +
         std::to_string(w.yields) + " yields, " + std::to_string(w.parks) + " parks, " +
         std::to_string(w.remote_wakeups) + " wake-ups from other threads, " + std::to_string(w.idle_sleeps) +
         " idle sleeps (" + std::to_string(std::chrono::duration<double>(w.slept).count()) + " s), " +
         std::to_string(w.timers_fired) + " timers fired, run queue high-water " +
         std::to_string(w.run_queue_high_water) + "\n";
  out += "  parks by reason:";
  const char* sep = " ";
  for (std::size_t r = 0; r < skein::debug::wait_reason_count; ++r) {
    if (w.parks_by_reason[r] == 0) continue;
    out += sep;
    out += skein::debug::to_string(static_cast<skein::debug::WaitReason>(r));
    out += ' ' + std::to_string(w.parks_by_reason[r]);
    sep = ", ";
  }
  out += "\n";
}

// --debug-routes: GET /debug/fibers is skein::debug::dump, GET /debug/stats the counters.
bool debug_route(std::string_view path, std::string& body) {
  if (path == "/debug/fibers") {
    std::ostringstream out;
    skein::debug::dump(out);
    body = std::move(out).str();
    return true;
  }
  if (path == "/debug/stats") {
    const skein::debug::Stats stats = skein::debug::stats();
    for (const auto& w : stats.workers) {
      body += "runtime " + std::to_string(w.runtime) + " worker " + std::to_string(w.worker) + ": ";
      append_counters(body, w);
    }
    body += "total: ";
    append_counters(body, stats.total);
    const auto& tls = skein_samples::tls_counters;
    body += "tls: " + std::to_string(tls.handshakes.load(std::memory_order_relaxed)) + " handshakes (" +
            std::to_string(tls.resumed.load(std::memory_order_relaxed)) + " resumed), " +
            std::to_string(tls.failed.load(std::memory_order_relaxed)) + " failed\n";
    return true;
  }
  return false;
}

// The deadline of the next read or write on a connection.
skein::Deadline idle_deadline(const Config& config) {
  if (config.idle_timeout.count() <= 0) return {};
  return skein::Deadline(config.idle_timeout);
}

// Ends the sending direction: a FIN, or close_notify and then a FIN.
void end_writes(skein::Stream& stream) {
  stream.shutdown(skein::Shutdown::write);
}
#if SKEIN_SAMPLES_TLS
void end_writes(skein::TlsStream& stream) {
  stream.shutdown(std::chrono::seconds(2));
  stream.stream().shutdown(skein::Shutdown::write);
}
#endif

// Closes gracefully after an error response: stop writing, then read and drop what the peer still
// sends for a moment. Closing with unread bytes in the socket makes the kernel send a reset, which
// can destroy our response in the peer's receive queue before it has read it.
template <class S>
void linger_close(S& stream, std::span<char> buffer) {
  try {
    end_writes(stream);
    const skein::Deadline until(std::chrono::seconds(2));
    std::size_t drained = 0;
    while (drained < 1024 * 1024) {
      const std::size_t n = stream.read(buffer, until);
      if (n == 0) break;
      drained += n;
    }
  } catch (const std::system_error&) {
    // A timeout, a reset or a cancel: the connection ends here either way.
  }
}

// One connection, plain (skein::Stream) or TLS (skein::TlsStream).
template <class S>
void handle_connection(S& stream, const Config& config) {
  HttpSession session;
  if (config.debug_routes) session.set_extra_routes(debug_route);
  std::array<char, 16 * 1024> buffer;
  for (;;) {
    const std::size_t n = stream.read(buffer, idle_deadline(config));
    if (n == 0) return;  // the peer closed
    const std::uint64_t before = session.responses();
    session.feed(buffer.data(), n);
    if (config.delay.count() > 0 && session.responses() > before)
      skein::sleep_for(config.delay * static_cast<int>(session.responses() - before));
    if (!session.output().empty()) {
      stream.write_all(session.output(), idle_deadline(config));
      session.clear_output();
    }
    if (session.should_close()) {
      linger_close(stream, buffer);
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "http_server";
  Config config;
  skein_samples::ServerFlags flags(8080);
  flags.offer_tls({"http/1.1"});
  for (int i = 1; i < argc; ++i) {
    std::string_view value;
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (flags.parse(i, argc, argv)) {
    } else if (cli::option("--idle-timeout", i, argc, argv, value)) {
      config.idle_timeout = std::chrono::duration<double>(cli::number("--idle-timeout", value, 0.0, 86400.0));
    } else if (cli::option("--delay-ms", i, argc, argv, value)) {
      config.delay = std::chrono::milliseconds(cli::number("--delay-ms", value, 0, 60000));
    } else if (std::string_view(argv[i]) == "--debug-routes") {
      config.debug_routes = true;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  flags.finish();

  cli::check_io_backend();
  try {
    skein::run(flags.runtime_options(), [&config, &flags] {
      skein_samples::listen_and_serve(flags, [&config](auto& stream) { handle_connection(stream, config); });
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "http_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
