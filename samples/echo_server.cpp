// echo_server: asyncio's classic echo server, one fiber per connection. The Python it answers:
//
//   async def handle_echo(reader, writer):
//       data = await reader.read(100)
//       message = data.decode()
//       addr = writer.get_extra_info('peername')
//       print("Received %r from %r" % (message, addr))
//       writer.write(data)
//       await writer.drain()
//       writer.close()
//
//   server = await asyncio.start_server(handle_echo, '127.0.0.1', 8888)
//
// Here a connection is echoed until the peer closes it, not for one message only, and the
// "Received" line is printed only with --verbose (it would dominate a benchmark). The handler is
// the plain blocking loop: read into a buffer, write back what was read; each read and write parks
// only this connection's fiber. With --tls-cert and --tls-key the same loop runs over TLS, after the
// handshake in the connection's fiber.

#include <skein/skein.hpp>

#include "cli.hpp"
#include "io_check.hpp"
#include "serve_main.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <system_error>

namespace {

namespace cli = skein_samples::cli;

constexpr const char* kUsage =
    "usage: echo_server [--host H] [--port P] [--threads N] [--tls-cert FILE --tls-key FILE]\n"
    "                   [--verbose] [--debug-dump[=SIG]]\n"
    "\n"
    "Echoes every byte a client sends back to it, until the client closes; one fiber per\n"
    "connection, over TCP or TLS. Prints 'listening on HOST:PORT' once it accepts connections.\n"
    "Ctrl-C or SIGTERM stops it: it stops accepting, gives open connections a second to finish,\n"
    "and exits 0.\n"
    "\n"
    "  --host H            address to listen on, an IP literal or a name; default 127.0.0.1\n"
    "  --port P            TCP port, 0..65535 (0 picks a free one); default 8888\n"
    "  --threads N         worker threads, each serving its own share of the connections;\n"
    "                      default 1\n"
    "  --tls-cert FILE     speak TLS with this certificate chain (PEM, leaf first); needs\n"
    "                      --tls-key. A client has 10 s to complete its handshake; a failed\n"
    "                      handshake drops only that connection (the first few are logged to\n"
    "                      stderr). A client's close_notify is answered with one.\n"
    "  --tls-key FILE      the certificate's private key (PEM)\n"
    "  --verbose           print 'Received ... from PEER' for every read, as the Python\n"
    "                      server does\n"
    "  --debug-dump[=SIG]  print every fiber (what it waits for, since when, where it was\n"
    "                      spawned) to stderr on signal SIG, SIGUSR1 (the default), SIGUSR2\n"
    "                      or SIGQUIT, and go on serving: try kill -USR1 PID\n"
    "  -h, --help          show this help and exit\n";

// Python's %r of bytes, shortened: printable ASCII as is, the rest as \xNN.
std::string repr(std::string_view data) {
  std::string out = "b'";
  const std::size_t shown = std::min<std::size_t>(data.size(), 60);
  for (std::size_t i = 0; i < shown; ++i) {
    const auto c = static_cast<unsigned char>(data[i]);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  out += '\'';
  if (shown < data.size()) out += "...";
  return out;
}

// One connection, plain (skein::Stream) or TLS (skein::TlsStream).
template <class S>
void handle_echo(S& stream, bool verbose) {
  std::array<char, 16 * 1024> buffer;
  const std::string peer =
      verbose ? skein_samples::socket_of(stream).peer_address().to_string() : std::string();
  for (;;) {
    const std::size_t n = stream.read(buffer);
    if (n == 0) return;  // the peer closed
    if (verbose) {
      std::printf("Received %s from %s\n", repr({buffer.data(), n}).c_str(), peer.c_str());
      std::fflush(stdout);
    }
    stream.write_all({buffer.data(), n});
  }
}

}  // namespace

int main(int argc, char** argv) {
  cli::program = "echo_server";
  skein_samples::ServerFlags flags(8888);
  flags.offer_tls();
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    if (cli::is_help(argv[i])) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (flags.parse(i, argc, argv)) {
    } else if (std::string_view(argv[i]) == "--verbose") {
      verbose = true;
    } else {
      cli::unknown_argument(argv[i]);
    }
  }

  flags.finish();

  cli::check_io_backend();
  try {
    skein::run(flags.runtime_options(), [&] {
      skein_samples::listen_and_serve(flags, [verbose](auto& stream) { handle_echo(stream, verbose); });
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
